"""Reports a person reads: JSON, summary.md with the verdicts, and PNG plots."""

import json

from ryot_ray.config import Phase1Targets
from ryot_ray.report.validation import write_reports
from ryot_ray.validate.validator import InferenceValidator


def test_reports_and_plots_are_written(tmp_path, trained_nested_sparse, trained_reference):
    targets = Phase1Targets(ttft_ms=0.001, decode_tokens_per_s=1e9, memory_mb=500, accuracy_retention=0.0)
    report = InferenceValidator(str(trained_nested_sparse), str(trained_reference), targets,
                                inference={"rlvr_paths": 2}, repeats=1, max_problems=3, memory=False,
                                deploy_preset="tiny").validate()
    training = tmp_path / "training.json"
    training.write_text(json.dumps({"epochs": [{"epoch": 1, "train_loss": 2.0, "val_loss": 2.1},
                                               {"epoch": 2, "train_loss": 1.5, "val_loss": 1.7}]}))
    written = write_reports(report, tmp_path / "out", training)
    names = {path.name for path in written}
    assert names == {"inference_validation_report.json", "optimization_analysis.json", "summary.md",
                     "accuracy_vs_speedup.png", "paths_by_difficulty.png", "loss_curves.png", "speedup_by_size.png"}
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "out" / "inference_validation_report.json").read_text())
    assert saved["integrated_speedup"] == report["integrated_speedup"]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| ttft_ms | at most 0.001 |" in summary and "**not met**" in summary
    assert "## At the deployment shape: `tiny` (measured on random weights)" in summary
    assert "x per token (reference step time / optimized)" in summary
    assert "![loss_curves.png](loss_curves.png)" in summary
    assert f"CPU {report['machine']['cpu']['model']}." in summary

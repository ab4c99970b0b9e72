"""The validation reports a person reads: JSON for tools, `summary.md` and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ryot_ray.atomic import write_json_atomic  # noqa: E402

VALIDATION_FILE = "inference_validation_report.json"
ANALYSIS_FILE = "optimization_analysis.json"
SUMMARY_FILE = "summary.md"
TRAINING_FILE = "training_metrics_report.json"


def write_reports(report: dict, directory: Path, training_report: Path | None = None) -> list[Path]:
    """Write every report of a validation into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    analysis = {"optimized": report["optimized"], "reference_checkpoint": report["reference_checkpoint"],
                "steps": report["ablation"], "machine": report["machine"]}
    written = [directory / VALIDATION_FILE, directory / ANALYSIS_FILE]
    write_json_atomic(written[0], report)
    write_json_atomic(written[1], analysis)
    plots = [_accuracy_vs_speedup(report, directory / "accuracy_vs_speedup.png"),
             _paths_by_difficulty(report, directory / "paths_by_difficulty.png"),
             _speedup_by_size(report, directory / "speedup_by_size.png")]
    if training_report is not None and training_report.is_file():
        plots.append(_loss_curves(json.loads(training_report.read_text()), directory / "loss_curves.png"))
    plots = [plot for plot in plots if plot is not None]
    (directory / SUMMARY_FILE).write_text(summary(report, [p.name for p in plots]))
    return written + plots + [directory / SUMMARY_FILE]


def save_figure(path: Path, draw) -> Path:
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    draw(axes)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _accuracy_vs_speedup(report: dict, path: Path) -> Path | None:
    rows = [row for row in report["ablation"] if "speedup_vs_reference" in row]
    if not rows:
        return None

    def draw(axes):
        for row in rows:
            axes.scatter(row["speedup_vs_reference"], 100 * row["accuracy"])
            axes.annotate(row["step"], (row["speedup_vs_reference"], 100 * row["accuracy"]),
                          textcoords="offset points", xytext=(4, 4), fontsize=8)
        reference = report["variants"]["reference"]
        axes.scatter(1.0, 100 * reference["accuracy"], marker="s", color="black")
        axes.annotate("reference", (1.0, 100 * reference["accuracy"]), textcoords="offset points",
                      xytext=(4, -10), fontsize=8)
        axes.set_xlabel("speedup: reference time / time to answer the test problems")
        axes.set_ylabel("exact match (%)")
        axes.set_title("Accuracy vs speedup, each optimization added in turn")
        axes.grid(alpha=0.3)

    return save_figure(path, draw)


def size_speedups(report: dict) -> dict[str, dict[str, float | None]]:
    """Decode, TTFT and integrated speedups over the reference at the trained model's size
    and at the deployment shape (None where not measured)."""
    variants = report["variants"]
    optimized, reference = variants[report["optimized"]], variants.get("reference", {})

    def median(figures: dict, key: str) -> float | None:
        return figures.get(key, {}).get("median")

    def faster(optimized_value: float | None, reference_value: float | None) -> float | None:
        """Reference over optimized, for times (lower is better)."""
        if optimized_value is None or reference_value is None or not optimized_value:
            return None
        return reference_value / optimized_value

    optimized_rate, reference_rate = median(optimized, "decode_tokens_per_s"), median(reference, "decode_tokens_per_s")
    own = {"decode per token": optimized_rate / reference_rate if optimized_rate and reference_rate else None,
           "TTFT": faster(median(optimized, "ttft_ms"), median(reference, "ttft_ms")),
           "integrated": report["integrated_speedup"]}
    result = {"trained model": own}
    deployment = report.get("deployment")
    if deployment and "not_measured" not in deployment:
        shape = deployment["variants"]
        result[f"{deployment['shape']} (random weights)"] = {
            "decode per token": deployment["per_token_speedup"]["median"],
            "TTFT": faster(median(shape["optimized"], "ttft_ms"), median(shape["reference"], "ttft_ms")),
            "integrated": deployment["integrated_speedup"]}
    return result


def _speedup_by_size(report: dict, path: Path) -> Path | None:
    sizes = size_speedups(report)

    def draw(axes):
        kinds = list(next(iter(sizes.values())))
        width = 0.8 / len(sizes)
        for offset, (size, figures) in enumerate(sizes.items()):
            values = [figures[kind] or 0.0 for kind in kinds]
            bars = axes.bar([i + offset * width for i in range(len(kinds))], values, width=width, label=size)
            for bar, kind in zip(bars, kinds):
                label = "n/m" if figures[kind] is None else f"{figures[kind]:.2f}x"
                axes.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                              textcoords="offset points", xytext=(0, 2), fontsize=8)
        axes.axhline(1.0, color="black", linewidth=0.8)
        axes.set_xticks([i + width * (len(sizes) - 1) / 2 for i in range(len(kinds))], kinds)
        axes.set_ylabel("speedup over the fp32 reference")
        axes.set_title("Speedup at the trained model's size and at the deployment shape")
        axes.legend()

    return save_figure(path, draw)


def _paths_by_difficulty(report: dict, path: Path) -> Path | None:
    series = {row["step"]: report["variants"][row["step"]]["paths_per_problem_by_difficulty"]
              for row in report["ablation"] if row["rlvr_paths"] > 1}
    if not series:
        return None

    def draw(axes):
        width = 0.8 / len(series)
        for offset, (name, by_difficulty) in enumerate(series.items()):
            levels = sorted(by_difficulty, key=int)
            axes.bar([int(d) + offset * width for d in levels], [by_difficulty[d] for d in levels],
                     width=width, label=name)
        axes.set_xlabel("task difficulty")
        axes.set_ylabel("mean sampled paths per problem")
        axes.set_title("Reasoning paths used, by difficulty")
        axes.legend()

    return save_figure(path, draw)


def _loss_curves(training: dict, path: Path) -> Path | None:
    epochs = training.get("epochs") or []
    if not epochs:
        return None

    def draw(axes):
        numbers = [e["epoch"] for e in epochs]
        axes.plot(numbers, [e["train_loss"] for e in epochs], marker="o", label="train loss")
        if all("val_loss" in e for e in epochs):
            axes.plot(numbers, [e["val_loss"] for e in epochs], marker="o", label="validation loss")
        axes.set_xlabel("epoch")
        axes.set_ylabel("cross-entropy")
        axes.set_title("Training of the validated checkpoint")
        axes.legend()
        axes.grid(alpha=0.3)

    return save_figure(path, draw)


def shown(value: float | None, digits: int = 2) -> str:
    return "not measured" if value is None else f"{value:.{digits}f}"


def _deployment_lines(deployment: dict) -> list[str]:
    shape, variants = deployment["architecture"], deployment["variants"]
    optimized, reference = variants["optimized"], variants["reference"]
    ratio = deployment["token_ratio"]
    lines = [
        "", f"## At the deployment shape: `{deployment['shape']}` (measured on random weights)", "",
        f"Hidden {shape['hidden_size']}, FFN {shape['intermediate_size']}, {shape['num_hidden_layers']} layers, "
        f"{shape['num_attention_heads']} heads ({shape['num_key_value_heads']} KV), vocabulary {shape['vocab_size']}; "
        f"{deployment['weights']}. TTFT at a {deployment['prompt_tokens']}-token prompt, decode over "
        f"{deployment['new_tokens']} tokens, {deployment['rounds']} interleaved rounds.", "",
        f"- **Integrated speedup at this shape**: {shown(deployment['per_token_speedup']['median'])}x per token "
        f"(reference step time / optimized) x {shown(ratio)} token ratio (the trained reference's generated "
        f"tokens / the optimized configuration's, paths included, on the test problems) = "
        f"{shown(deployment['integrated_speedup'])}",
        "", "| target | required | measured | met |", "|---|---|---|---|"]
    for name, verdict in deployment["phase1"].items():
        lines.append(f"| {name} | {verdict['direction']} {verdict['target']} | {shown(verdict['measured'])} "
                     f"| {'met' if verdict['met'] else '**not met**'} |")
    lines += ["", "| model | TTFT ms | decode tokens/s | peak RSS MB | threads | file MB |", "|---|---|---|---|---|---|"]
    for name, figures in (("fp32 reference", reference), ("optimized", optimized)):
        lines.append(f"| {name} | {shown(figures['ttft_ms']['median'], 1)} "
                     f"| {shown(figures['decode_tokens_per_s']['median'], 1)} | {shown(figures.get('peak_rss_mb'), 0)} "
                     f"| {figures['threads']} | {figures['model_file_mb']:.0f} |")
    paths = optimized.get(f"{deployment['paths']}_paths")
    if paths:
        lines.append(f"\n{deployment['paths']} paths as one batch: {shown(paths['tokens_per_s']['median'], 1)} "
                     f"tokens/s, a step {shown(paths['step_vs_one_path']['median'])}x the one-path step.")
    return lines


def summary(report: dict, plots: list[str]) -> str:
    variants = report["variants"]
    optimized = variants[report["optimized"]]
    lines = [
        "# Inference validation",
        "",
        f"Checkpoint `{report['checkpoint']}`, reference `{report['reference_checkpoint'] or 'none'}`; "
        f"{report['problems']} test problems; node `{report['node']}`, {report['threads']} threads, "
        f"kernel path {report['kernel_path']['name']} {report['kernel_path']['isa']}; "
        f"CPU {report['machine']['cpu']['model']}.",
        "",
        f"- **Integrated speedup** (reference time to answer the test problems / optimized time): "
        f"{shown(report['integrated_speedup'])}",
        f"- **Accuracy retention** (optimized / reference exact match): {shown(report['accuracy_retention'], 3)}",
    ]
    if report.get("not_measured"):
        lines.append(f"- Not measured: {report['not_measured']}")
    lines += ["", "## Phase 1 targets at the trained model's size", "", "| target | required | measured | met |", "|---|---|---|---|"]
    for name, verdict in report["phase1"].items():
        lines.append(f"| {name} | {verdict['direction']} {verdict['target']} | {shown(verdict['measured'])} "
                     f"| {'met' if verdict['met'] else '**not met**'} |")
    deployment = report.get("deployment")
    if not deployment:
        lines += ["", "No deployment-shape section (validate.deploy_preset is null)."]
    elif "not_measured" in deployment:
        lines += ["", f"Deployment shape `{deployment['shape']}`: not measured: {deployment['not_measured']}."]
    else:
        lines += _deployment_lines(deployment)
    lines += ["", "## Variants", "",
              "| variant | exact match | time to answer (s) | paths | TTFT ms (median) | decode tokens/s (median) "
              "| peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for name, v in variants.items():
        ttft = v.get("ttft_ms", {}).get("median")
        rate = v.get("decode_tokens_per_s", {}).get("median")
        lines.append(f"| {name} | {shown(v.get('accuracy'), 3)} | {shown(v.get('answer_time_s'))} "
                     f"| {v.get('paths_total', '-')} | {shown(ttft, 1)} | {shown(rate, 1)} "
                     f"| {shown(v.get('peak_rss_mb'), 0)} |")
    lines += ["", "## Each optimization in turn", "",
              "| step | exact match | speedup vs reference | vs previous step | paths |", "|---|---|---|---|---|"]
    for row in report["ablation"]:
        lines.append(f"| {row['step']} | {row['accuracy']:.3f} | {shown(row.get('speedup_vs_reference'))} "
                     f"| {shown(row.get('speedup_vs_previous_step'))} | {row['paths_total']} |")
    lines += ["", f"The optimized configuration is the last step, `{report['optimized']}`: "
              f"{optimized.get('paths_total', '-')} paths in all."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"

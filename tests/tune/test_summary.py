"""How a trial's reports turn into its status, its time split and the Pareto front."""

import pandas as pd
import pytest
from ray.tune import Result

from ryot_ray.tune.space import load_space
from ryot_ray.tune.summary import interrupted, overhead, pareto_front, trial_record

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def reports(epochs: int) -> pd.DataFrame:
    """Per-epoch reports as Tune keeps them: 10 s of set-up before the first epoch."""
    rows, total = [], 2.0  # Ray starts the run: 2 s before the worker's clock starts
    for epoch in range(1, epochs + 1):
        setup = 10.0 if epoch == 1 else 0.0
        this = setup + 20.0 + 3.0 + 1.0 + 0.5 + (2.0 if epoch == 1 else 0.0)  # + checkpoint and report
        total += this - (2.0 if epoch == 1 else 0.0)
        rows.append({"epoch": epoch, "time_total_s": total, "time_this_iter_s": this, "setup_time_s": setup,
                     "epoch_time_s": 20.0, "eval_time_s": 3.0, "measure_time_s": 1.0, "objective": 0.5 * epoch,
                     "speedup": 1.0, "inference_accuracy": 0.4})
    return pd.DataFrame(rows)


def result(epochs: int, error=None) -> Result:
    frame = reports(epochs)
    metrics = frame.iloc[-1].to_dict() | {"trial_id": f"t{epochs}", "checkpoint_path": f"/c/{epochs}",
                                          "config": {"train.lr": 1e-3 * epochs}}
    return Result(metrics=metrics, checkpoint=None, error=error, path=f"/tune/run_trial_t{epochs}",
                  metrics_dataframe=frame)


def test_a_restart_adds_its_time_and_a_replayed_report_no_work():
    first, again = reports(2), reports(1)  # killed after epoch 2's report; restarted, it replays epoch 2
    again["epoch"], again["replayed"] = 2, True
    split = overhead(pd.concat([first, again], ignore_index=True))
    assert split["trial_s"] == pytest.approx((36.5 + 24.5) + 36.5)  # both runs of the trial
    assert split["training_s"] == 40 and split["worker_setup_s"] == 10
    assert split["ray_s"] == pytest.approx(split["trial_s"] - 10 - 40 - 6 - 2)


def test_time_is_split_into_set_up_work_and_ray():
    split = overhead(reports(2))
    assert split["trial_s"] == pytest.approx(2 + 10 + 2 * 24.5)
    assert split["first_report_s"] == pytest.approx(36.5) and split["ray_start_up_s"] == pytest.approx(2.5)
    assert (split["worker_setup_s"], split["training_s"], split["evaluation_s"]) == (10, 40, 6)
    assert split["ray_s"] == pytest.approx(2 + 2 * 0.5)


def test_status_follows_epochs_and_errors():
    space = load_space(REPO / "search_spaces/smoke.yaml")  # max_t 2
    completed = trial_record(result(2), space)
    assert completed["status"] == "completed" and completed["params"]["train.lr"] == 2e-3
    stopped = trial_record(result(1), space)
    assert stopped["status"] == "stopped early" and stopped["objective_by_epoch"] == [0.5]
    failed = trial_record(result(1, error=RuntimeError("worker died\nOOM")), space)
    assert failed["status"] == "errored" and failed["error"] == "OOM"
    diverged = result(2)
    diverged.metrics |= {"status": "diverged", "worker_group_starts": 2}
    assert trial_record(diverged, space)["status"] == "diverged" and trial_record(diverged, space)["restarts"] == 1


def test_pareto_front_keeps_trials_nothing_beats_on_both():
    trials = [{"trial_id": "fast", "speedup": 3.0, "inference_accuracy": 0.5},
              {"trial_id": "accurate", "speedup": 1.0, "inference_accuracy": 0.9},
              {"trial_id": "beaten", "speedup": 0.9, "inference_accuracy": 0.8},
              {"trial_id": "twin", "speedup": 3.0, "inference_accuracy": 0.5},
              {"trial_id": "unmeasured"}]
    assert pareto_front(trials) == ["fast", "accurate", "twin"]


def test_summary_ranks_by_objective_ties_to_the_faster_and_totals_the_time():
    from ryot_ray.tune.summary import summarize
    from ryot_ray.tune.tuner import Reference

    space = load_space(REPO / "search_spaces/smoke.yaml")
    slow, fast, failed = result(2), result(1), result(2, error=RuntimeError("boom"))
    fast.metrics |= {"speedup": 2.0, "trial_id": "fast"}  # the same objective as `slow`, faster
    slow.metrics |= {"objective": 0.5}
    fast.metrics |= {"objective": 0.5}
    failed.metrics |= {"objective": 9.0, "trial_id": "failed"}
    summary = summarize([slow, fast, failed], space, Reference(REPO, 0.5, "abc", False), wall_time_s=100.0)
    assert summary["best_trial"] == "fast" and summary["errored"] == 1 and summary["stopped_early"] == 1
    assert summary["reference"]["trials_start_from_it"] is True  # the smoke space converts the reference
    assert summary["overhead"]["trial_time_s"] == pytest.approx(2 * 61.0 + 36.5)
    assert summary["overhead"]["ray_fraction"] == pytest.approx(summary["overhead"]["ray_s"] / (2 * 61.0 + 36.5))


def test_trials_that_measured_the_torch_fallback_are_named_in_the_summary_and_its_table():
    from ryot_ray.report.tune import trials_markdown
    from ryot_ray.tune.summary import fallback_warning, summarize
    from ryot_ray.tune.tuner import Reference

    space = load_space(REPO / "search_spaces/smoke.yaml")
    native, fallback = result(2), result(1)
    native.metrics |= {"kernel_path": "native avx512_vnni", "threads": 1}
    fallback.metrics |= {"kernel_path": "torch-int8", "trial_id": "fallback", "threads": 1}
    summary = summarize([native, fallback], space, Reference(REPO, 0.5, "abc", False), wall_time_s=100.0)
    assert summary["kernel_paths"] == ["native avx512_vnni", "torch-int8"] and summary["threads"] == [1]
    assert fallback_warning(["native avx512_vnni"]) is None
    warning = fallback_warning(summary["kernel_paths"])
    assert "torch-int8" in warning and "avx512" not in warning
    validation = {"integrated_speedup": None, "accuracy_retention": None, "threads": 2}
    table = trials_markdown(summary | {"validation": validation}, None)
    assert "native avx512_vnni, torch-int8, on 1 thread(s); the validation above on 2." in table
    assert "**Warning: some trials measured their speed with the torch-int8 kernel path" in table


def test_a_search_was_interrupted_only_if_a_trial_neither_ended_nor_failed():
    assert not interrupted([result(2)], max_t=2)  # all its epochs: a restored search's finished trial has no `done`
    assert interrupted([result(2), result(1)], max_t=2)  # stopped mid-trial by Ctrl-C
    stopped, diverged, failed = result(1), result(1), result(1, error=RuntimeError("worker died"))
    stopped.metrics["done"], diverged.metrics["status"] = True, "diverged"  # ASHA stopped it; its loss diverged
    assert not interrupted([stopped, diverged, failed], max_t=2)

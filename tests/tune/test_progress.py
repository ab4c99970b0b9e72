"""The one-line progress a search prints per trial epoch and per trial end."""

from types import SimpleNamespace

from ryot_ray.tune.progress import TrialProgress


def test_epochs_and_ends_are_one_line_each():
    lines = []
    progress = TrialProgress(max_t=4, lines=lines)
    result = {"epoch": 2, "objective": -0.25, "speedup": 1.5, "inference_accuracy": 0.6,
              "accuracy_retention": 0.75, "train_loss": 0.812}
    progress.on_trial_result(0, [], SimpleNamespace(trial_id="t1"), result)
    progress.on_trial_result(0, [], SimpleNamespace(trial_id="t1"), {"epoch": 2, "status": "diverged"})
    progress.on_trial_complete(0, [], SimpleNamespace(trial_id="t1", last_result=result))
    progress.on_trial_complete(0, [], SimpleNamespace(trial_id="t2", last_result={"epoch": 4}))
    progress.on_trial_complete(0, [], SimpleNamespace(trial_id="t4", last_result={"epoch": 1, "status": "diverged"}))
    progress.on_trial_error(0, [], SimpleNamespace(trial_id="t3", error_file="/x/error.txt"))
    assert lines == [
        "trial t1 epoch 2/4: objective -0.250, speedup 1.50x, accuracy 0.600 (retention 0.750), train loss 0.812",
        "trial t1 stopped early after 2 epoch(s)",
        "trial t2 completed after 4 epoch(s)",
        "trial t4 diverged (the loss is not finite) after 1 epoch(s)",
        "trial t3 errored: /x/error.txt",
    ]

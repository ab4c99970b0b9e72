"""One line per trial epoch and per trial end, instead of Tune's tables of every metric."""

from __future__ import annotations

from ray.tune import Callback

from ryot_ray.train.loop import DIVERGED


class TrialProgress(Callback):
    def __init__(self, max_t: int, lines: list[str] | None = None):
        self.max_t = max_t
        self.lines = lines  # collect here instead of printing (the callback is pickled: no bound print)

    def print(self, line: str) -> None:
        if self.lines is None:
            print(line, flush=True)
        else:
            self.lines.append(line)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "objective" not in result:
            return
        self.print(f"trial {trial.trial_id} epoch {result['epoch']}/{self.max_t}: objective "
                   f"{result['objective']:.3f}, speedup {result['speedup']:.2f}x, accuracy "
                   f"{result['inference_accuracy']:.3f} (retention {result['accuracy_retention']:.3f}), "
                   f"train loss {result['train_loss']:.3f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        epochs = last.get("epoch", 0)
        if last.get("status") == DIVERGED:
            how = "diverged (the loss is not finite)"
        else:
            how = "completed" if epochs >= self.max_t else "stopped early"
        self.print(f"trial {trial.trial_id} {how} after {epochs} epoch(s)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.print(f"trial {trial.trial_id} errored: {trial.error_file or 'see its folder'}")

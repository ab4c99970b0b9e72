"""The one number ASHA ranks trials by: higher is better, monotone in speedup and in
accuracy, with the accuracy floor dominant.

    retention = trial accuracy / reference accuracy
    objective = speedup * retention              if retention >= floor   (always > 0)
              = -1 / (1 + speedup * retention)   otherwise             (always < 0)

So every trial that keeps the floor ranks above every trial that does not, and on
either side of it a trial gains as much from 10 % more speed as from 10 % more accuracy.
Below the floor the same product ranks, so a rung reached while every trial is still
below it (early in converting a trained model) already sees speed, which is what
separates the trials once they are fine-tuned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

FORMULA = ("objective = speedup * retention if retention >= accuracy_floor "
           "else -1 / (1 + speedup * retention), "
           "where retention = accuracy / reference accuracy")


def objective(speedup: float, accuracy: float, reference_accuracy: float, floor: float) -> float:
    if speedup <= 0 or reference_accuracy <= 0:
        raise ValueError(f"speedup ({speedup}) and the reference accuracy ({reference_accuracy}) must be positive")
    retention = accuracy / reference_accuracy
    return speedup * retention if retention >= floor else -1.0 / (1.0 + speedup * retention)


@dataclass(frozen=True)
class EpochObjective:
    """A trial's epoch metrics: what `measure` returns (it must give `inference_accuracy`
    and `speedup`), with the accuracy retention and the objective added."""

    measure: Callable[..., dict]
    reference_accuracy: float
    floor: float

    def __call__(self, model, tokenizer, config, problems) -> dict:
        metrics = self.measure(model, tokenizer, config, problems)
        accuracy, speedup = metrics["inference_accuracy"], metrics["speedup"]
        return metrics | {
            "accuracy_retention": accuracy / self.reference_accuracy,
            "objective": objective(speedup, accuracy, self.reference_accuracy, self.floor),
        }

"""The one number ASHA ranks trials by: higher is better, monotone in speedup and in
accuracy, with the accuracy floor dominant.

    retention = trial accuracy / reference accuracy
    objective = speedup * retention   if retention >= floor   (always > 0)
              = retention - 1         otherwise               (always < 0)

So every trial that keeps the floor ranks above every trial that does not; above the
floor a trial gains as much from 10 % more speed as from 10 % more accuracy; below it
only accuracy counts, so the search climbs back towards the floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

FORMULA = ("objective = speedup * retention if retention >= accuracy_floor else retention - 1, "
           "where retention = accuracy / reference accuracy")


def objective(speedup: float, accuracy: float, reference_accuracy: float, floor: float) -> float:
    if speedup <= 0 or reference_accuracy <= 0:
        raise ValueError(f"speedup ({speedup}) and the reference accuracy ({reference_accuracy}) must be positive")
    retention = accuracy / reference_accuracy
    return speedup * retention if retention >= floor else retention - 1.0


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

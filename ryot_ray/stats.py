"""How every repeated figure is shown: min / median / max, with every sample kept."""

from __future__ import annotations

import statistics


def spread(samples: list[float]) -> dict:
    return {
        "min": min(samples),
        "median": statistics.median(samples),
        "max": max(samples),
        "samples": samples,
    }

"""How every repeated figure is shown: min / median / max, with every sample kept."""

from __future__ import annotations

import math
import statistics


def spread(samples: list[float]) -> dict:
    return {
        "min": min(samples),
        "median": statistics.median(samples),
        "max": max(samples),
        "samples": samples,
    }


def median_uncertainty(samples: list[float]) -> float:
    """How far the median of `samples` could move: the width of its ~95 % confidence
    interval (distribution-free, from order statistics) over the median. With few samples
    the interval is their whole range; with more, a stray sample no longer widens it."""
    ordered, count = sorted(samples), len(samples)
    half = 0.98 * math.sqrt(count)  # 1.96 standard deviations of the rank, halved
    low = min(max(round(count / 2 - half), 1), count)  # 1-based ranks
    high = min(max(round(1 + count / 2 + half), 1), count)
    return (ordered[high - 1] - ordered[low - 1]) / statistics.median(ordered)

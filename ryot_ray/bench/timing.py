"""Summaries for interleaved measurements: every sample kept, min / median / max shown."""

from __future__ import annotations

import statistics


def spread(samples: list[float]) -> dict:
    return {
        "min": min(samples),
        "median": statistics.median(samples),
        "max": max(samples),
        "samples": samples,
    }

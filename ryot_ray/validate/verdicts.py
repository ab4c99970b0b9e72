"""The Phase 1 targets against measured figures: met, not met, or not measured (which is
not met). The trained model's own section and the deployment-shape section use the same
rule."""

from __future__ import annotations

from ryot_ray.config import Phase1Targets


def phase1_verdicts(targets: Phase1Targets, optimized: dict, retention: float | None) -> dict:
    """Each target with the measured value and whether it is met; a target that could not
    be measured is not met."""
    def verdict(target: float, measured: float | None, at_most: bool) -> dict:
        met = measured is not None and (measured <= target if at_most else measured >= target)
        return {"target": target, "measured": measured, "met": met, "direction": "at most" if at_most else "at least"}

    return {
        "ttft_ms": verdict(targets.ttft_ms, optimized["ttft_ms"]["median"], at_most=True),
        "decode_tokens_per_s": verdict(targets.decode_tokens_per_s, optimized["decode_tokens_per_s"]["median"],
                                       at_most=False),
        "memory_mb": verdict(targets.memory_mb, optimized.get("peak_rss_mb"), at_most=True),
        "accuracy_retention": verdict(targets.accuracy_retention, retention, at_most=False),
    }

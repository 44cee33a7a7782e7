"""The KPI gate: may this candidate replace what is live?"""
from __future__ import annotations

from typing import Literal

GateVerdict = Literal["pass", "fail", "inconclusive"]

# Thresholds like 0.9 - 0.05 are not exact in binary floating point; 0.85 must still clear 0.85.
_TOLERANCE = 1e-9


def gate_verdict(
    accuracy: float,
    ci95: tuple[float, float],
    live_accuracy: float | None,
    min_accuracy: float,
    max_regression: float,
) -> GateVerdict:
    """`pass` when accuracy clears the threshold; `fail` when even the interval's top misses it.

    The threshold is the stricter of the floor (`min_accuracy`) and the allowed regression from
    what is live now; anything between is `inconclusive` (the Wilson interval straddles it).
    """
    threshold = min_accuracy
    if live_accuracy is not None:
        threshold = max(threshold, live_accuracy - max_regression)
    _, ci_high = ci95
    if ci_high < threshold - _TOLERANCE:
        return "fail"
    if accuracy >= threshold - _TOLERANCE:
        return "pass"
    return "inconclusive"

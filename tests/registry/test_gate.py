from __future__ import annotations

import pytest

from registry.gate import gate_verdict

# (accuracy, ci95, live_accuracy, min_accuracy, max_regression) -> verdict
CASES = [
    # no live rollout: the floor alone decides
    (0.80, (0.70, 0.88), None, 0.60, 0.05, "pass"),
    (0.60, (0.50, 0.70), None, 0.60, 0.05, "pass"),  # exactly at the floor
    (0.55, (0.45, 0.65), None, 0.60, 0.05, "inconclusive"),  # interval straddles the floor
    (0.40, (0.30, 0.59), None, 0.60, 0.05, "fail"),  # even the top of the interval misses
    (0.40, (0.30, 0.60), None, 0.60, 0.05, "inconclusive"),  # top exactly at the floor
    # a live rollout raises the bar to live - max_regression
    (0.86, (0.80, 0.91), 0.90, 0.60, 0.05, "pass"),
    (0.85, (0.78, 0.90), 0.90, 0.60, 0.05, "pass"),  # 0.90 - 0.05 is not exact in binary
    (0.80, (0.72, 0.87), 0.90, 0.60, 0.05, "inconclusive"),
    (0.70, (0.62, 0.78), 0.90, 0.60, 0.05, "fail"),
    # a weak live rollout never lowers the floor
    (0.55, (0.50, 0.58), 0.40, 0.60, 0.05, "fail"),
    (0.65, (0.55, 0.74), 0.40, 0.60, 0.05, "pass"),
    # zero tolerance for regression
    (0.90, (0.85, 0.94), 0.90, 0.50, 0.0, "pass"),
    (0.89, (0.84, 0.93), 0.90, 0.50, 0.0, "inconclusive"),
]


@pytest.mark.parametrize("accuracy,ci95,live,min_accuracy,max_regression,expected", CASES)
def test_gate_verdict(accuracy, ci95, live, min_accuracy, max_regression, expected):
    assert gate_verdict(accuracy, ci95, live, min_accuracy, max_regression) == expected

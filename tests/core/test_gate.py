from __future__ import annotations

import pytest

from portllm_core.gate import gate_verdict

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


# ------------------------------------------------------------------ paired gate

import itertools
import math

from portllm_core.gate import (
    GateDecision,
    _tail_at,
    _thresholds,
    clopper_pearson,
    interval_gate,
    paired_gate,
    paired_p_value,
    statistic,
    wilson_interval,
)


def paired(wins: int, losses: int, both: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Per-item correctness (candidate, live) with the given counts of each agreement pattern."""
    candidate = [True] * wins + [False] * losses + [True] * both + [False] * neither
    live = [False] * wins + [True] * losses + [True] * both + [False] * neither
    return candidate, live


# (wins, losses, both right, both wrong, min_accuracy, max_regression) -> verdict
PAIRED_CASES = [
    (0, 0, 36, 4, 0.60, 0.05, "pass"),  # identical on every item
    (3, 4, 30, 3, 0.60, 0.05, "pass"),  # 2.5 points down, within 5
    (0, 2, 34, 4, 0.60, 0.05, "pass"),  # exactly 5 points down
    (0, 4, 34, 2, 0.60, 0.05, "inconclusive"),  # 10 points down on 4 items: could be luck
    (0, 12, 26, 2, 0.60, 0.05, "fail"),  # 30 points down on 12 of 40: not luck
    (1, 30, 120, 49, 0.50, 0.05, "fail"),  # 14.5 points down on 200 items
    (0, 8, 32, 0, 0.60, 0.0, "fail"),  # zero tolerance: 8 losses and no wins is no accident
    (0, 3, 34, 3, 0.60, 0.0, "inconclusive"),
    (5, 0, 20, 15, 0.60, 0.05, "pass"),  # better than live and 62.5 % clears the floor
    (2, 0, 8, 30, 0.60, 0.05, "fail"),  # better than live, yet 25 % is clearly under the floor
    (1, 0, 22, 17, 0.60, 0.05, "inconclusive"),  # 57.5 %: under the floor, within reach of it
]


@pytest.mark.parametrize("wins,losses,both,neither,min_accuracy,max_regression,expected", PAIRED_CASES)
def test_paired_gate(wins, losses, both, neither, min_accuracy, max_regression, expected):
    decision = paired_gate(*paired(wins, losses, both, neither), min_accuracy, max_regression)
    assert isinstance(decision, GateDecision)
    assert (decision.verdict, decision.test) == (expected, "paired")
    n = wins + losses + both + neither
    assert decision.explanation.startswith(
        f"On the same {n} questions the candidate got {wins} right that live missed and {losses} wrong that live got right:"
    )


def test_explanations_say_why_in_words():
    said = paired_gate(*paired(3, 4, 30, 3), 0.6, 0.05).explanation
    assert said.endswith("2.5 points below live, within the allowed 5 points.")
    said = paired_gate(*paired(0, 12, 26, 2), 0.6, 0.05).explanation
    assert "worse than live by more than the allowed 5 points (95 % confidence)" in said
    said = paired_gate(*paired(0, 4, 34, 2), 0.6, 0.05).explanation
    assert "too few questions disagree to be 95 % sure" in said
    said = paired_gate(*paired(2, 0, 8, 30), 0.6, 0.05).explanation
    assert "25% is clearly below the 60% floor" in said
    fallback = interval_gate(0.55, (0.45, 0.65), None, 0.60, 0.05)
    assert (fallback.verdict, fallback.test) == ("inconclusive", "interval")
    assert "bar of 60%" in fallback.explanation


def test_paired_gate_refuses_results_on_different_items():
    with pytest.raises(ValueError, match="interval_gate"):
        paired_gate([True, False], [True], 0.5, 0.05)


def trinomial_tail(n: int, observed: float, margin: float, p10: float, p01: float) -> float:
    """P(statistic ≤ observed) by summing every (b, c): the slow definition."""
    total = 0.0
    for b in range(n + 1):
        for c in range(n + 1 - b):
            if statistic(b, c, n, margin) <= observed + 1e-12:
                ways = math.comb(n, b) * math.comb(n - b, c)
                total += ways * p10**b * p01**c * (1 - p10 - p01) ** (n - b - c)
    return total


@pytest.mark.parametrize("n", [1, 7, 30])
def test_the_linear_tail_equals_the_trinomial_sum(n):
    outcomes = [(b, c) for b in range(0, n + 1, max(1, n // 5)) for c in range(0, n + 1 - b, max(1, n // 4))]
    for (b, c), rate, margin in itertools.product(outcomes, (0.05, 0.3, 0.9, 1.0), (0.0, 0.05)):
        observed = statistic(b, c, n, margin)
        expected = trinomial_tail(n, observed, margin, (rate - margin) / 2, (rate + margin) / 2)
        assert _tail_at(n, _thresholds(n, observed, margin), rate, margin) == pytest.approx(expected, abs=1e-12)


def test_clopper_pearson_matches_published_values():
    assert clopper_pearson(3, 10, 0.05) == pytest.approx((0.066739, 0.652453), abs=1e-5)
    assert clopper_pearson(0, 10, 0.05) == pytest.approx((0.0, 0.308497), abs=1e-5)


@pytest.mark.parametrize("margin", [0.0, 0.1])
def test_the_paired_test_is_exact(margin):
    """Whatever the true rates on the null's edge (regressed by exactly the margin), the chance of
    calling `fail` is at most 5 %: enumerate every outcome on 16 items."""
    n = 16
    rejects = {
        (b, c)
        for b in range(n + 1)
        for c in range(n + 1 - b)
        if c - b > n * margin and paired_p_value(b, c, n, margin) < 0.05
    }
    assert rejects, "the test should be able to reject at all"
    for rate in (margin, 0.2, 0.5, 0.8, 1.0):
        p10, p01 = (rate - margin) / 2, (rate + margin) / 2
        size = sum(
            math.comb(n, b) * math.comb(n - b, c) * p10**b * p01**c * (1 - p10 - p01) ** (n - b - c) for b, c in rejects
        )
        assert size <= 0.05


def test_near_identical_candidates_pass_on_40_items():
    """Differing from live on a handful of the 40 items, at most one net loss (2.5 points), passes
    whatever the split of wins and losses."""
    for wins, extra in itertools.product(range(0, 6), (0, 1)):
        losses = wins + extra
        decision = paired_gate(*paired(wins, losses, 30 - wins - losses + 5, 5), 0.6, 0.05)
        assert decision.verdict == "pass", decision.explanation


@pytest.mark.parametrize("n,live,wins,losses", [(200, 180, 0, 19), (200, 180, 1, 20), (300, 270, 2, 29)])
def test_paired_test_decides_where_the_interval_straddles_the_bar(n, live, wins, losses):
    """Live right on `live` of n items, the candidate losing `losses` of them: the candidate's own
    interval still reaches live − 5 points, but item by item the regression is clear."""
    k = live + wins - losses
    assert gate_verdict(k / n, wilson_interval(k, n), live / n, 0.5, 0.05) == "inconclusive"
    both = live - losses
    decision = paired_gate(*paired(wins, losses, both, n - wins - losses - both), 0.5, 0.05)
    assert decision.verdict == "fail", decision.explanation


def test_each_group_of_questions_must_clear_the_floor():
    from portllm_core.gate import GateDecision, with_group_floors

    passed = GateDecision("pass", "interval", "The candidate scored 88 %.")
    # The domain soars while general knowledge breaks: the average alone would pass.
    failed = with_group_floors(passed, {"support": (58, 60), "general": (4, 20)}, 0.7)
    assert failed.verdict == "fail" and failed.test == "interval"
    assert "The general questions: 4 of 20 right (20%), clearly below the 70% floor." in failed.explanation
    # A group within reach of the floor keeps a pass from passing, and never rescues a fail.
    assert with_group_floors(passed, {"support": (58, 60), "general": (12, 20)}, 0.7).verdict == "inconclusive"
    assert with_group_floors(GateDecision("fail", "paired", "x"), {"general": (20, 20)}, 0.7).verdict == "fail"
    assert with_group_floors(passed, {"support": (58, 60), "general": (19, 20)}, 0.7) == passed

"""The KPI gate: may this candidate replace what is live?

Two ways to decide, both with the verdicts `pass | fail | inconclusive`:

- **interval** (`gate_verdict`, `interval_gate`): the candidate's accuracy and Wilson 95 %
  interval against a fixed bar; used when there is no live score on the same items.
- **paired** (`paired_gate`): the candidate and the live rollout were scored on the very same
  items. Only the items where they disagree carry information about the difference, so the
  regression check is an exact test on those discordant items, far sharper than two intervals.

The rule is the same in both: `pass` when the observed accuracy clears the bar (the floor, and
live minus the allowed regression); `fail` when the evidence is clearly (95 %, one-sided) below
it; `inconclusive` in between. So both pass exactly the same candidates (on the same items, the
observed drop is the same number); where the candidate's interval straddles the bar, the paired
test is what turns a clear item-by-item regression into `fail`. A 95 % proof of "no worse than
the margin" is not asked for to pass: on 40 items even a candidate identical to live could not
give one for a 5-point margin.

The paired test, and why this one. With b items the candidate got right and live missed, c the
reverse, out of n, the paired difference is d = (b − c)/n. "Regressed by more than the margin
Δ" is d < −Δ. For Δ = 0 the classic exact McNemar test conditions on b + c; for Δ > 0 it cannot,
because the bar on b/(b+c) depends on the unknown discordance rate (a Clopper–Pearson interval on
b/(b+c) scaled by the observed (b+c)/n treats that rate as known and so is not exact: b = 0,
c = 2 would look like a certain drop of exactly 2/n). We therefore use the exact unconditional
test: (b, c) is trinomial with probabilities (p10, p01), and outcomes are ordered by
T = (b − c + nΔ)/√(b + c + nΔ) (the McNemar z at Δ = 0). T rises with b and falls with c, so
the worst case of the null d ≥ −Δ lies on its edge p10 − p01 = −Δ; there the p-value
P(T ≤ observed) is maximised over the nuisance discordance rate p10 + p01, restricted as Berger
and Boos (1994) propose to its 99.9 % Clopper–Pearson interval from b + c, with that 0.1 % added
to the p-value (implausibly high discordance rates would otherwise swamp the test). The test is
exact, up to the precision of that maximisation: it never rejects more often than 5 % when the
candidate is within the margin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

from portllm_engine.kpi import wilson_interval

GateVerdict = Literal["pass", "fail", "inconclusive"]
GateTest = Literal["paired", "interval"]

# Thresholds like 0.9 - 0.05 are not exact in binary floating point; 0.85 must still clear 0.85.
_TOLERANCE = 1e-9
ALPHA = 0.05  # one-sided: "clearly below" means 95 % confident
# Discordance rates tried when maximising the p-value; between grid points the p-value is
# smooth, and a golden-section polish around the best point closes the remaining gap.
_GRID = 200
# Berger–Boos: the nuisance discordance rate is maximised over its 99.9 % interval only, and the
# 0.1 % it may miss is added to the p-value, which keeps the test exact.
_NUISANCE_MISS = 0.001
_TIE = 1e-12  # outcomes whose statistic equals the observed one count as at least as extreme


@dataclass(frozen=True)
class GateDecision:
    verdict: GateVerdict
    test: GateTest  # which comparison decided: item by item, or the candidate's interval
    explanation: str  # one sentence for the card and `run show`, for a non-engineer


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


def _points(x: float) -> str:
    return f"{100 * x:.1f}".removesuffix(".0") + " points"


def interval_gate(
    accuracy: float,
    ci95: tuple[float, float],
    live_accuracy: float | None,
    min_accuracy: float,
    max_regression: float,
) -> GateDecision:
    """`gate_verdict` with the words that say why (no comparable live score on the same items)."""
    verdict = gate_verdict(accuracy, ci95, live_accuracy, min_accuracy, max_regression)
    bar = min_accuracy if live_accuracy is None else max(min_accuracy, live_accuracy - max_regression)
    low, high = ci95
    said = f"The candidate scored {accuracy:.0%} (95 % range {low:.0%}–{high:.0%}) against a bar of {bar:.0%}"
    reason = {
        "pass": "it clears the bar",
        "fail": "even the top of its range is below the bar",
        "inconclusive": "below the bar, but its range reaches it, so more questions are needed to be sure",
    }[verdict]
    return GateDecision(verdict, "interval", f"{said}: {reason}.")


def _log_binom_pmf(k: int, m: int, p: float) -> float:
    """log P(Binomial(m, p) = k); -inf where impossible (including p at 0 or 1)."""
    if k < 0 or k > m:
        return -math.inf
    if p <= 0.0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if k == m else -math.inf
    return math.lgamma(m + 1) - math.lgamma(k + 1) - math.lgamma(m - k + 1) + k * math.log(p) + (m - k) * math.log1p(-p)


def _binom_pmf(k: int, m: int, p: float) -> float:
    return math.exp(_log_binom_pmf(k, m, p))


def statistic(b: int, c: int, n: int, margin: float) -> float:
    """(b − c + nΔ)/√(b + c + nΔ): the observed difference, shifted to the null's edge and scaled
    by its spread. It rises with wins and falls with losses, which keeps the test exact."""
    spread = b + c + n * margin
    return 0.0 if spread <= 0 else (b - c + n * margin) / math.sqrt(spread)


def _thresholds(n: int, observed: float, margin: float) -> list[int]:
    """For each m = b + c, the largest b with statistic(b, m − b) ≤ observed (−1 when none): the
    statistic rises with b at fixed m, so "at least as extreme" is b ≤ that bound."""
    bounds = []
    for m in range(n + 1):
        spread = m + n * margin
        guess = math.floor((observed * math.sqrt(spread) + m - n * margin) / 2) if spread > 0 else 0
        k = max(-1, min(m, guess))
        # The closed form may be off by one in floating point; settle on the exact comparison.
        while k < m and statistic(k + 1, m - k - 1, n, margin) <= observed + _TIE:
            k += 1
        while k >= 0 and statistic(k, m - k, n, margin) > observed + _TIE:
            k -= 1
        bounds.append(k)
    return bounds


def _tail_at(n: int, bounds: list[int], rate: float, margin: float) -> float:
    """P(b ≤ bounds[b + c]) when (b, c) is trinomial over n items with p10 − p01 = −margin and
    p10 + p01 = rate. Given m = b + c, b is binomial (m, θ) with θ = p10/rate; its CDF at the
    bound is carried from m to m + 1 by F(m+1, k) = F(m, k) − θ·P(m, k) and walked to the next
    bound one probability at a time, so the whole sum costs O(n)."""
    if rate <= 0.0:
        return 1.0 if bounds[0] >= 0 else 0.0
    theta = max(0.0, (rate - margin) / 2) / rate
    k = bounds[0]
    cdf = 1.0 if k >= 0 else 0.0  # P(Binomial(0, θ) ≤ k)
    total = math.exp(_log_binom_pmf(0, n, rate)) * cdf
    for m in range(1, n + 1):
        cdf -= theta * _binom_pmf(k, m - 1, theta)
        while k < bounds[m]:
            k += 1
            cdf += _binom_pmf(k, m, theta)
        while k > bounds[m]:
            cdf -= _binom_pmf(k, m, theta)
            k -= 1
        total += math.exp(_log_binom_pmf(m, n, rate)) * min(1.0, max(0.0, cdf))
    return min(1.0, total)


def _binom_cdf(k: int, n: int, p: float) -> float:
    return min(1.0, sum(_binom_pmf(j, n, p) for j in range(0, k + 1)))


def _solve_decreasing(f, target: float) -> float:
    """x in [0, 1] where the decreasing f crosses target (bisection, to float precision)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, miss: float) -> tuple[float, float]:
    """Exact two-sided interval for a binomial rate that misses with probability at most `miss`."""
    lo = 0.0 if k == 0 else 1.0 - _solve_decreasing(lambda q: 1.0 - _binom_cdf(k - 1, n, 1.0 - q), miss / 2)
    hi = 1.0 if k == n else _solve_decreasing(lambda p: _binom_cdf(k, n, p), miss / 2)
    return lo, hi


def paired_p_value(b: int, c: int, n: int, margin: float) -> float:
    """One-sided exact p-value for "the candidate regressed by more than `margin`" (d < −margin)
    from b wins and c losses on n paired items; see the module docstring."""
    t = _thresholds(n, statistic(b, c, n, margin), margin)
    low, high = clopper_pearson(b + c, n, _NUISANCE_MISS)
    low, high = max(low, margin), min(high, 1.0, 2.0 - margin)  # the null needs p01 = p10 + margin
    if low > high:  # every plausible rate is below the margin: the worst null has no wins at all
        return min(1.0, _tail_at(n, t, high, high) + _NUISANCE_MISS)
    rates = [low + (high - low) * i / _GRID for i in range(_GRID + 1)]
    values = [_tail_at(n, t, rate, margin) for rate in rates]
    best = max(range(len(rates)), key=values.__getitem__)
    lo, hi = rates[max(0, best - 1)], rates[min(_GRID, best + 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(30):  # golden-section search for the maximum between the neighbours
        x1, x2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if _tail_at(n, t, x1, margin) >= _tail_at(n, t, x2, margin):
            hi = x2
        else:
            lo = x1
    return min(1.0, max(values[best], _tail_at(n, t, (lo + hi) / 2, margin)) + _NUISANCE_MISS)


def _floor_verdict(k: int, n: int, min_accuracy: float) -> GateVerdict:
    return gate_verdict(k / n, wilson_interval(k, n), None, min_accuracy, 0.0)


def paired_gate(
    candidate_correct: Sequence[bool],
    live_correct: Sequence[bool],
    min_accuracy: float,
    max_regression: float,
) -> GateDecision:
    """Gate a candidate against the live rollout scored on the same items, item by item.

    `pass` when the candidate's accuracy is at least `min_accuracy` and at least live's minus
    `max_regression`; `fail` when the exact paired test shows it regressed by more than
    `max_regression` (or its Wilson interval is below the floor); else `inconclusive`.
    """
    n = len(candidate_correct)
    if n == 0 or n != len(live_correct):
        raise ValueError(
            f"paired gate needs both results on the same non-empty item list, got {n} and {len(live_correct)} items; "
            "use interval_gate when the live rollout was scored on another suite"
        )
    wins = sum(1 for cand, live in zip(candidate_correct, live_correct) if cand and not live)
    losses = sum(1 for cand, live in zip(candidate_correct, live_correct) if live and not cand)
    k = sum(1 for cand in candidate_correct if cand)
    drop = (losses - wins) / n
    if drop <= max_regression + _TOLERANCE:
        regression: GateVerdict = "pass"
    elif paired_p_value(wins, losses, n, max_regression) < ALPHA:
        regression = "fail"
    else:
        regression = "inconclusive"
    floor = _floor_verdict(k, n, min_accuracy)
    verdict: GateVerdict = "fail" if "fail" in (regression, floor) else "pass" if regression == floor == "pass" else "inconclusive"

    counts = f"On the same {n} questions the candidate got {wins} right that live missed and {losses} wrong that live got right"
    allowed = _points(max_regression)
    change = "no worse than live" if drop <= 0 else f"{_points(drop)} below live"
    reason = {
        "pass": f"{change}, within the allowed {allowed}",
        "fail": f"worse than live by more than the allowed {allowed} (95 % confidence)",
        "inconclusive": f"{change}, more than the allowed {allowed}, but too few questions disagree to be 95 % sure",
    }[regression]
    if floor != "pass":
        verdict_words = "clearly below" if floor == "fail" else "below, but within reach of,"
        reason += f"; its {k / n:.0%} is {verdict_words} the {min_accuracy:.0%} floor"
    return GateDecision(verdict, "paired", f"{counts}: {reason}.")


_SEVERITY = {"pass": 0, "inconclusive": 1, "fail": 2}


def with_group_floors(decision: GateDecision, groups: dict[str, tuple[int, int]], min_accuracy: float) -> GateDecision:
    """The floor holds for each group of a suite's questions too (its domain, general knowledge…):
    a patch that lifts the domain while breaking what the base answered must not pass on the
    average. `groups` is (correct, n) per group; a group clearly below the floor fails the gate,
    one within reach of it keeps a pass inconclusive."""
    worst = None
    for name, (k, n) in sorted(groups.items()):
        verdict = _floor_verdict(k, n, min_accuracy)
        if _SEVERITY[verdict] > _SEVERITY[decision.verdict] and (worst is None or _SEVERITY[verdict] > _SEVERITY[worst[1]]):
            worst = (name, verdict, k, n)
    if worst is None:
        return decision
    name, verdict, k, n = worst
    words = "clearly below" if verdict == "fail" else "below, but within reach of,"
    return GateDecision(verdict, decision.test, f"{decision.explanation} The {name} questions: {k} of {n} right "
                        f"({k / n:.0%}), {words} the {min_accuracy:.0%} floor.")

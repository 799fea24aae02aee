"""Paired 95% intervals between two models evaluated on the same problems, and intervals over seeds.

Pure functions of per-problem outcomes, so each interval can be checked by hand:

* :func:`paired_interval`: ``multi@k(b) - multi@k(a)`` over the same problems. Per problem ``d_i = s_b(i) - s_a(i)``
  (each ``s`` is 1 when the episode was solved within k turns, else 0; ``d_i`` is -1, 0 or 1); the interval is the
  paired t interval ``mean(d) +- t(0.975, n - 1) * sd(d) / sqrt(n)`` (``sd`` with ``n - 1``).
* :func:`pooled_paired_interval`: the same over several seeds' evaluations of the same problems: per problem the
  mean over seeds of ``d_{s,i}``, then the t interval over problems (a problem's seeds stay together: they are not
  independent draws).
* :func:`seed_interval`: mean and t interval of one number measured once per seed (undefined for one seed).
* :func:`random_elimination`: multi@k of a policy that answers a multiple-choice question by drawing, each turn, a
  letter it has not tried: solved within k turns with probability ``min(1, k / options)``.

An analytic interval rather than the paired bootstrap of ``drift run`` (:func:`~drift_algos.evaluation.evaluator.
paired_difference`): the two agree for the sizes used here, and only this one can be pooled over seeds by problem and
checked by hand. Where every ``d_i`` is equal (e.g. two models solve exactly the same problems) its width is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from drift_algos.evaluation.metrics import Outcome, first_success

Interval = tuple[float, float]
NAN_INTERVAL: Interval = (float("nan"), float("nan"))


def _t_cdf(x: float, df: int) -> float:
    """Student t CDF at ``x >= 0`` (Simpson's rule on the density; error far below 1e-9 for the sizes used)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    steps = 2000

    def density(u: float) -> float:
        return math.exp(log_c - (df + 1) / 2 * math.log1p(u * u / df))

    h = x / steps
    total = density(0.0) + density(x) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    return 0.5 + total * h / 3


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``p`` in [0.5, 1)) of Student's t with ``df >= 1`` degrees of freedom.

    Closed forms for df 1 and 2 (``tan(pi (p - 1/2))``, ``(2p - 1) / sqrt(2 p (1 - p))``); bisection otherwise.
    """
    if df < 1 or not 0.5 <= p < 1:
        raise ValueError(f"need df >= 1 and 0.5 <= p < 1, got df={df}, p={p}")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    low, high = 0.0, 20.0
    for _ in range(60):
        mid = (low + high) / 2
        if _t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def mean_interval(values: Sequence[float], *, confidence: float = 0.95) -> tuple[float, Interval]:
    """Mean of ``values`` and its t interval (NaN interval for fewer than two values)."""
    n = len(values)
    if n == 0:
        return float("nan"), NAN_INTERVAL
    mean = sum(values) / n
    if n < 2:
        return mean, NAN_INTERVAL
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(1 - (1 - confidence) / 2, n - 1) * sd / math.sqrt(n)
    return mean, (mean - half, mean + half)


def solved_within(outcome: Outcome, k: int) -> int:
    """1 when the episode's first success is at turn k or earlier, else 0."""
    turn = first_success(outcome)
    return int(turn is not None and turn <= k)


def paired_interval(first: Sequence[Outcome], second: Sequence[Outcome], k: int, *,
                    confidence: float = 0.95) -> tuple[float, Interval]:
    """``multi@k(second) - multi@k(first)``, outcomes paired by position (the same problems), with its paired t
    interval."""
    if len(first) != len(second):
        raise ValueError(f"paired outcomes differ in number: {len(first)} and {len(second)}")
    return mean_interval([solved_within(b, k) - solved_within(a, k) for a, b in zip(first, second, strict=True)],
                         confidence=confidence)


def pooled_paired_interval(firsts: Sequence[Sequence[Outcome]], seconds: Sequence[Sequence[Outcome]], k: int, *,
                           confidence: float = 0.95) -> tuple[float, Interval]:
    """The paired difference pooled over seeds: ``firsts[s]`` and ``seconds[s]`` are seed ``s``'s evaluations of the
    same problems in the same order; per problem the mean over seeds of its difference, then the t interval over
    problems."""
    if len(firsts) != len(seconds) or not firsts:
        raise ValueError(f"need the same positive number of seeds on both sides, got {len(firsts)} and {len(seconds)}")
    per_seed = [[solved_within(b, k) - solved_within(a, k) for a, b in zip(f, s, strict=True)]
                for f, s in zip(firsts, seconds, strict=True)]
    if len({len(d) for d in per_seed}) != 1:
        raise ValueError("every seed must be evaluated on the same problems")
    per_problem = [sum(column) / len(per_seed) for column in zip(*per_seed, strict=True)]
    return mean_interval(per_problem, confidence=confidence)


def seed_interval(values: Sequence[float], *, confidence: float = 0.95) -> tuple[float, Interval]:
    """Mean over seeds of one number (a final multi@k, a time) and its t interval over seeds."""
    return mean_interval(list(values), confidence=confidence)


def random_elimination(options: Sequence[int], max_turns: int) -> list[float]:
    """multi@k, k = 1..``max_turns``, of random elimination on problems with these numbers of options (the mean over
    problems of ``min(1, k / options)``): the chance level multi@k of a multiple-choice environment."""
    if not options or any(o < 1 for o in options):
        raise ValueError("need at least one problem with at least one option")
    return [sum(min(1.0, k / o) for o in options) / len(options) for k in range(1, max_turns + 1)]

"""Multi-turn metrics (method.md, "Evaluation"), as pure functions of per-turn outcomes.

An episode is the tuple of its per-turn successes, one entry per turn taken
(``(False, False, True)``: solved at turn 3). With ``N`` episodes:

* accuracy at turn t: correct at turn t / episodes still running at turn t;
* multi@k: episodes solved within k turns / N (overall = multi@T);
* correction rate at turn t >= 2: solved at turn t / episodes not solved within t - 1 turns
  (all of them, also those that stopped early; the release divides by the episodes still
  running at t, which equals accuracy at turn t);
* flips between turns t-1 and t, over episodes that took both turns: wrong-to-right (share of
  those wrong at t-1 that are right at t) and right-to-wrong (share of those right at t-1 that
  are wrong at t). They are reported only when some episode took a turn after a success
  (:func:`continues_after_success`): where the environment ends an episode on success, as every
  built-in one does, right-to-wrong is always undefined and wrong-to-right is accuracy at turn t.

:func:`bootstrap` gives percentile intervals by resampling episodes (undefined when a resample
is); :func:`rate_interval` gives the Wilson score interval of a count-based rate, used for
accuracy at turn t, whose denominator (the episodes still running) can be empty in a resample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

Outcome = Sequence[bool]
"""Per-turn successes of one episode, one entry per turn taken."""


def _nan_div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def first_success(outcome: Outcome) -> int | None:
    """1-based turn of the first success, or ``None``."""
    for turn, ok in enumerate(outcome, start=1):
        if ok:
            return turn
    return None


def accuracy_at_turn(outcomes: Sequence[Outcome], turn: int) -> float:
    running = [o for o in outcomes if len(o) >= turn]
    return _nan_div(sum(bool(o[turn - 1]) for o in running), len(running))


def multi_at(outcomes: Sequence[Outcome], k: int) -> float:
    solved = sum(1 for o in outcomes if (t := first_success(o)) is not None and t <= k)
    return _nan_div(solved, len(outcomes))


def correction_rate(outcomes: Sequence[Outcome], turn: int) -> float:
    if turn < 2:
        raise ValueError("correction rate is defined for turn >= 2")
    unsolved = [o for o in outcomes if (t := first_success(o)) is None or t >= turn]
    return _nan_div(sum(1 for o in unsolved if first_success(o) == turn), len(unsolved))


def continues_after_success(outcomes: Sequence[Outcome]) -> bool:
    """Whether some episode took a turn after a success (the flip rates carry information)."""
    return any(any(o[:-1]) for o in outcomes)


def flip_rates(outcomes: Sequence[Outcome], turn: int) -> tuple[float, float]:
    """(wrong-to-right, right-to-wrong) between turns ``turn - 1`` and ``turn``."""
    both = [o for o in outcomes if len(o) >= turn]
    wrong = [o for o in both if not o[turn - 2]]
    right = [o for o in both if o[turn - 2]]
    return (_nan_div(sum(bool(o[turn - 1]) for o in wrong), len(wrong)),
            _nan_div(sum(not o[turn - 1] for o in right), len(right)))


@dataclass
class MultiTurnMetrics:
    """The evaluation metrics of a set of episodes, each list indexed by turn - 1."""

    episodes: int
    """Number of episodes."""
    max_turns: int
    """Turn limit T the lists run to."""
    accuracy: list[float]
    """Accuracy at turn t (NaN where no episode ran that turn)."""
    running: list[int]
    """Episodes still running at turn t."""
    multi: list[float]
    """multi@k for k = 1..T."""
    correction: list[float]
    """Correction rate at turn t (NaN at t = 1)."""
    wrong_to_right: list[float] | None
    """Wrong-to-right flip rate into turn t (NaN at t = 1); ``None`` when no episode continued after a success."""
    right_to_wrong: list[float] | None
    """Right-to-wrong flip rate into turn t (NaN at t = 1); ``None`` when no episode continued after a success."""

    @property
    def overall(self) -> float:
        return self.multi[-1] if self.multi else float("nan")


def compute_metrics(outcomes: Sequence[Outcome], max_turns: int | None = None) -> MultiTurnMetrics:
    outcomes = [tuple(bool(x) for x in o) for o in outcomes]
    turns = max_turns or max((len(o) for o in outcomes), default=1)
    nan = float("nan")
    flips = continues_after_success(outcomes)
    return MultiTurnMetrics(
        episodes=len(outcomes),
        max_turns=turns,
        accuracy=[accuracy_at_turn(outcomes, t) for t in range(1, turns + 1)],
        running=[sum(1 for o in outcomes if len(o) >= t) for t in range(1, turns + 1)],
        multi=[multi_at(outcomes, k) for k in range(1, turns + 1)],
        correction=[nan] + [correction_rate(outcomes, t) for t in range(2, turns + 1)],
        wrong_to_right=[nan] + [flip_rates(outcomes, t)[0] for t in range(2, turns + 1)] if flips else None,
        right_to_wrong=[nan] + [flip_rates(outcomes, t)[1] for t in range(2, turns + 1)] if flips else None,
    )


def bootstrap(
    outcomes: Sequence[Outcome],
    statistic: Callable[[Sequence[Outcome]], float],
    *,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over episodes.

    Undefined (NaN, NaN) when any resample's statistic is: dropping those resamples would
    condition the interval on the statistic being defined and make it too narrow (a ratio whose
    denominator is rare). Use :func:`rate_interval` for such ratios.
    """
    if not outcomes:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    n = len(outcomes)
    values = np.array([statistic([outcomes[i] for i in rng.integers(0, n, n)]) for _ in range(samples)])
    if np.isnan(values).any():
        return (float("nan"), float("nan"))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def rate_interval(successes: int, trials: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the rate ``successes / trials`` (NaN, NaN when ``trials`` is 0).

    Unlike a percentile bootstrap it does not collapse to a point on few trials (1 of 1 gives
    [0.207, 1] at 95%, the bootstrap [1, 1]).
    """
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return (float("nan"), float("nan"))
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # At p = 0 (p = 1) the lower (upper) end is exactly 0 (1); rounding would leave a hair either side.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return float(low), float(high)


def accuracy_interval(outcomes: Sequence[Outcome], turn: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson interval of accuracy at ``turn``: correct at that turn out of the episodes still running."""
    running = [o for o in outcomes if len(o) >= turn]
    return rate_interval(sum(bool(o[turn - 1]) for o in running), len(running), confidence=confidence)

"""Multi-turn metrics against hand computations, and bootstrap intervals."""

from __future__ import annotations

import math

import pytest

from drift_algos.metrics import (
    accuracy_at_turn,
    bootstrap,
    compute_metrics,
    correction_rate,
    first_success,
    flip_rates,
    multi_at,
)

# Six episodes, one entry per turn taken:
#   a: solved at 1          b: solved at 2          c: solved at 3
#   d: never (3 turns)      e: never (stopped at 2) f: right, then wrong (an env that does not stop on success)
OUTCOMES = [(True,), (False, True), (False, False, True), (False, False, False), (False, False), (True, False)]


def test_accuracy_per_turn_by_hand() -> None:
    assert accuracy_at_turn(OUTCOMES, 1) == pytest.approx(2 / 6)  # a, f of all 6
    assert accuracy_at_turn(OUTCOMES, 2) == pytest.approx(1 / 5)  # b of b, c, d, e, f
    assert accuracy_at_turn(OUTCOMES, 3) == pytest.approx(1 / 2)  # c of c, d
    assert math.isnan(accuracy_at_turn(OUTCOMES, 4))  # nobody ran turn 4


def test_multi_at_k_by_hand() -> None:
    assert multi_at(OUTCOMES, 1) == pytest.approx(2 / 6)  # a, f
    assert multi_at(OUTCOMES, 2) == pytest.approx(3 / 6)  # + b
    assert multi_at(OUTCOMES, 3) == pytest.approx(4 / 6)  # + c
    assert multi_at(OUTCOMES, 4) == pytest.approx(4 / 6)


def test_correction_rate_by_hand() -> None:
    # Not solved within t-1 turns (whether or not still running), solved exactly at t.
    assert correction_rate(OUTCOMES, 2) == pytest.approx(1 / 4)  # b of b, c, d, e
    assert correction_rate(OUTCOMES, 3) == pytest.approx(1 / 3)  # c of c, d, e
    with pytest.raises(ValueError, match="turn >= 2"):
        correction_rate(OUTCOMES, 1)


def test_flips_by_hand() -> None:
    # Into turn 2, among b, c, d, e, f: wrong at 1 are b, c, d, e (b turns right); right at 1 is f (turns wrong).
    assert flip_rates(OUTCOMES, 2) == pytest.approx((1 / 4, 1.0))
    # Into turn 3, among c, d: both wrong at 2, c turns right; none right at 2.
    w2r, r2w = flip_rates(OUTCOMES, 3)
    assert w2r == pytest.approx(1 / 2) and math.isnan(r2w)


def test_first_success() -> None:
    assert [first_success(o) for o in OUTCOMES] == [1, 2, 3, None, None, 1]
    assert first_success(()) is None


def test_compute_metrics_collects_everything() -> None:
    m = compute_metrics(OUTCOMES)
    assert (m.episodes, m.max_turns) == (6, 3)
    assert m.running == [6, 5, 2]
    assert m.accuracy == pytest.approx([2 / 6, 1 / 5, 1 / 2])
    assert m.multi == pytest.approx([2 / 6, 3 / 6, 4 / 6])
    assert m.overall == pytest.approx(4 / 6)
    assert math.isnan(m.correction[0]) and m.correction[1:] == pytest.approx([1 / 4, 1 / 3])
    assert math.isnan(m.wrong_to_right[0]) and m.wrong_to_right[1:] == pytest.approx([1 / 4, 1 / 2])
    assert math.isnan(m.right_to_wrong[0]) and m.right_to_wrong[1] == 1.0 and math.isnan(m.right_to_wrong[2])


def test_compute_metrics_runs_to_the_turn_limit() -> None:
    m = compute_metrics([[1], [0, 1]], max_turns=4)  # any truthy values
    assert m.max_turns == 4 and len(m.accuracy) == len(m.multi) == len(m.correction) == 4
    assert m.running == [2, 1, 0, 0]
    assert m.multi == pytest.approx([0.5, 1.0, 1.0, 1.0])
    assert math.isnan(m.accuracy[2]) and math.isnan(m.accuracy[3])


def test_empty_input_gives_nan_not_an_error() -> None:
    assert math.isnan(accuracy_at_turn([], 1))
    assert math.isnan(multi_at([], 1))
    assert math.isnan(correction_rate([], 2))
    assert all(math.isnan(x) for x in flip_rates([], 2))
    m = compute_metrics([])
    assert (m.episodes, m.max_turns, m.running) == (0, 1, [0])
    assert math.isnan(m.accuracy[0]) and math.isnan(m.multi[0]) and math.isnan(m.overall)
    assert all(math.isnan(x) for x in bootstrap([], lambda o: multi_at(o, 1)))


def test_bootstrap_interval_contains_the_estimate_and_is_seeded() -> None:
    outcomes = OUTCOMES * 5
    for k in (1, 2, 3):
        point = multi_at(outcomes, k)
        low, high = bootstrap(outcomes, lambda o, k=k: multi_at(o, k), samples=300, seed=1)
        assert 0.0 <= low <= point <= high <= 1.0
        assert low < high
    statistic = lambda o: multi_at(o, 2)  # noqa: E731
    assert bootstrap(outcomes, statistic, samples=300, seed=4) == bootstrap(outcomes, statistic, samples=300, seed=4)
    # Few resamples: the percentiles interpolate between resampled values, so another seed shows.
    assert bootstrap(outcomes, statistic, samples=37, seed=4) != bootstrap(outcomes, statistic, samples=37, seed=5)


def test_bootstrap_narrows_with_more_data_and_confidence_matters() -> None:
    statistic = lambda o: multi_at(o, 3)  # noqa: E731
    small = bootstrap(OUTCOMES * 2, statistic, samples=400)
    large = bootstrap(OUTCOMES * 40, statistic, samples=400)
    assert large[1] - large[0] < small[1] - small[0]
    wide = bootstrap(OUTCOMES * 10, statistic, samples=400, confidence=0.99)
    narrow = bootstrap(OUTCOMES * 10, statistic, samples=400, confidence=0.5)
    assert wide[0] <= narrow[0] and narrow[1] <= wide[1]


def test_bootstrap_of_a_constant_and_of_an_undefined_statistic() -> None:
    assert bootstrap([(True,)] * 10, lambda o: multi_at(o, 1), samples=50) == (1.0, 1.0)
    # Accuracy at a turn nobody reached is NaN in every resample: the interval is NaN too.
    assert all(math.isnan(x) for x in bootstrap(OUTCOMES, lambda o: accuracy_at_turn(o, 9), samples=50))

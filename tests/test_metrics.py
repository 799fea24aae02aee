"""Multi-turn metrics against hand computations, and bootstrap intervals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drift_algos.evaluation.metrics import (
    accuracy_at_turn,
    accuracy_interval,
    bootstrap,
    compute_metrics,
    continues_after_success,
    correction_rate,
    first_success,
    flip_rates,
    multi_at,
    rate_interval,
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


# -- intervals that stay honest where a ratio's denominator is rare ------------------------------------------

# Exhaustively: two episodes, one solved at turn 1 (it stops), one wrong twice.
STOPS = [(True,), (False, False)]
# Accuracy at turn 2 is 0 of 1. Its bootstrap resamples (each with probability): {wrong, wrong} 1/4 and
# {solved, wrong} 1/2 give 0 of 1 or 0 of 2 = 0; {solved, solved} 1/4 has nobody running at turn 2. Dropping
# that quarter (the old bootstrap) gave [0, 0]: certainty from one episode.


def test_bootstrap_refuses_a_statistic_undefined_in_some_resamples() -> None:
    assert math.isnan(accuracy_at_turn([(True,), (True,)], 2))  # the resample that was dropped
    low, high = bootstrap(STOPS, lambda o: accuracy_at_turn(o, 2), samples=400, seed=0)
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_matches_the_exhaustive_resample_distribution() -> None:
    # multi@1 of {solved, wrong}: resamples give 0 (1/4), 1/2 (1/2), 1 (1/4). The 2.5 and 97.5 percentiles
    # are 0 and 1; the 30th and 70th (confidence 0.4) both fall on 1/2.
    statistic = lambda o: multi_at(o, 1)  # noqa: E731
    assert bootstrap(STOPS, statistic, samples=4000, seed=3) == (0.0, 1.0)
    assert bootstrap(STOPS, statistic, samples=4000, seed=3, confidence=0.4) == (0.5, 0.5)


def test_wilson_interval_by_hand() -> None:
    # z = 1.959964 (95%), z^2 = 3.841459: 0 of 1 -> centre = half = (z^2 / 2) / (1 + z^2) = 0.396725.
    assert rate_interval(0, 1) == pytest.approx((0.0, 0.793451), abs=1e-6)
    # 1 of 1 -> centre (1 + z^2 / 2) / (1 + z^2) = 0.603275, half 0.396725.
    assert rate_interval(1, 1) == pytest.approx((0.206549, 1.0), abs=1e-6)
    # 2 of 4 -> centre 1/2, half = z * sqrt(1/16 + z^2/64) / (1 + z^2/4) = 0.349961.
    assert rate_interval(2, 4) == pytest.approx((0.150039, 0.849961), abs=1e-6)
    assert all(math.isnan(x) for x in rate_interval(0, 0))
    with pytest.raises(ValueError, match="successes <= trials"):
        rate_interval(3, 2)


def test_accuracy_interval_counts_only_the_episodes_still_running() -> None:
    assert accuracy_interval(STOPS, 2) == rate_interval(0, 1)  # not [0, 0]
    assert accuracy_interval(OUTCOMES, 3) == rate_interval(1, 2)  # c of c, d
    assert all(math.isnan(x) for x in accuracy_interval(STOPS, 3))


@given(st.integers(0, 60), st.integers(0, 60), st.floats(0.5, 0.99))
def test_wilson_interval_properties(successes: int, failures: int, confidence: float) -> None:
    trials = successes + failures
    if trials == 0:
        return
    low, high = rate_interval(successes, trials, confidence=confidence)
    assert 0.0 <= low <= successes / trials <= high <= 1.0
    assert low < high  # never a point, however few the trials
    wider = rate_interval(successes, trials, confidence=(1 + confidence) / 2)
    assert wider[0] <= low and high <= wider[1]


# -- flips only where an episode can continue after a success ------------------------------------------------


def test_flips_are_left_out_when_every_episode_ends_on_success() -> None:
    ends_on_success = [o for o in OUTCOMES if o != (True, False)]
    assert not continues_after_success(ends_on_success) and continues_after_success(OUTCOMES)
    m = compute_metrics(ends_on_success)
    assert m.wrong_to_right is None and m.right_to_wrong is None
    assert m.accuracy == pytest.approx([1 / 5, 1 / 4, 1 / 2])  # unchanged by leaving the flips out


@given(st.lists(st.lists(st.booleans(), min_size=1, max_size=4), max_size=12))
def test_flips_carry_information_only_after_a_success(raw: list[list[bool]]) -> None:
    # Cut each episode at its first success, as an environment that ends on success does: the flips would
    # then be nothing but accuracy (wrong-to-right) and undefined (right-to-wrong), so they are not reported.
    stopped = [o[: o.index(True) + 1] if True in o else o for o in raw]
    for turn in range(2, 5):
        w2r, r2w = flip_rates(stopped, turn)
        assert math.isnan(r2w)
        accuracy = accuracy_at_turn(stopped, turn)
        assert w2r == accuracy or (math.isnan(w2r) and math.isnan(accuracy))
    m = compute_metrics(stopped)
    assert m.wrong_to_right is None and m.right_to_wrong is None


def test_turn_table_shows_flip_columns_only_where_they_carry_information() -> None:
    from drift_cli.tables import turn_table

    continuing = turn_table(compute_metrics(OUTCOMES), "f continues after its success")
    assert [c.header for c in continuing.columns][-2:] == ["wrong→right", "right→wrong"]
    assert list(continuing.columns[-1].cells) == ["-", "100.0%", "-"]  # f: right at 1, wrong at 2
    stopping = turn_table(compute_metrics(STOPS), "every episode ends on success")
    assert [c.header for c in stopping.columns] == ["turn", "running", "accuracy", "multi@k", "correction"]

"""Properties of returns and DRIFT weights over generated inputs (hypothesis).

For returns up to 1e4 in size and beta down to 1e-3 (exponents up to 2e7, far beyond float64's exp), every
weight is finite and >= 0, each group's mean weight is 1, adding a constant to every return of a group leaves
its weights unchanged, and permuting a group permutes its weights.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drift_algos.records import Trajectory
from drift_algos.returns import discounted_return, group_log_weights, group_weights
from drift_algos.weighting import WeighConfig, weigh

returns_ = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
groups = st.lists(returns_, min_size=1, max_size=16)
betas = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


@given(groups, betas)
def test_weights_are_finite_nonnegative_with_group_mean_one(group: list[float], beta: float) -> None:
    weights = group_weights(group, beta)
    assert len(weights) == len(group)
    assert all(math.isfinite(w) and w >= 0 for w in weights)
    assert math.fsum(weights) / len(weights) == pytest.approx(1.0, rel=1e-9)
    # The best return always has the largest weight, and it is at least 1 (it is at least the mean).
    best = max(range(len(group)), key=group.__getitem__)
    assert weights[best] == max(weights) and weights[best] >= 1 - 1e-9


@given(groups, betas, st.floats(min_value=-1e3, max_value=1e3, allow_nan=False))
def test_adding_a_constant_to_a_group_leaves_its_weights(group: list[float], beta: float, shift: float) -> None:
    shifted = [r + shift for r in group]
    before, after = group_weights(group, beta), group_weights(shifted, beta)
    # Rounding of r + shift moves the exponent (r + shift - best)/beta by up to ~ulp(1e4)/beta; compare in log
    # space with that slack, so tiny weights are compared meaningfully too.
    slack = 4 * (math.ulp(2e4) / beta) + 1e-9
    for a, b in zip(before, after, strict=True):
        if min(a, b) < 1e-300:  # at the edge of float64's range one side may round to 0
            assert max(a, b) < 1e-290, (a, b)
            continue
        assert abs(math.log(a) - math.log(b)) <= slack


@given(st.data(), groups, betas)
def test_permuting_a_group_permutes_its_weights(data: st.DataObject, group: list[float], beta: float) -> None:
    order = data.draw(st.permutations(range(len(group))))
    weights = group_weights(group, beta)
    permuted = group_weights([group[i] for i in order], beta)
    for position, i in enumerate(order):
        assert permuted[position] == pytest.approx(weights[i], rel=1e-12, abs=1e-300)


@given(groups, betas)
def test_log_weights_are_the_logs_of_the_weights(group: list[float], beta: float) -> None:
    for w, log_w in zip(group_weights(group, beta), group_log_weights(group, beta), strict=True):
        if w > 1e-300:
            assert math.isclose(math.log(w), log_w, rel_tol=1e-9, abs_tol=1e-9)
        else:
            assert log_w < -690


@settings(max_examples=50)
@given(st.lists(st.lists(st.floats(min_value=-1e4, max_value=1e4, allow_nan=False), min_size=1, max_size=6),
                min_size=1, max_size=5), st.floats(min_value=0.0, max_value=1.0), betas)
def test_weighing_records_is_finite_with_group_means_one(rewards: list[list[float]], gamma: float,
                                                         beta: float) -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    records = [Trajectory.from_dict({"prompt_id": f"p{i % 3}", "messages": messages,
                                     "turn_rewards": {f"t{t + 1}": r for t, r in enumerate(turns)}})
               for i, turns in enumerate(rewards)]
    returns, weights, stats = weigh(records, WeighConfig(gamma=gamma, beta=beta))
    assert all(math.isfinite(x) for x in (*returns, *weights))
    for record, value in zip(records, returns, strict=True):
        assert value == discounted_return(record.turn_rewards, gamma)  # no answers: no repetition penalty
    for group in {r.prompt_id for r in records}:
        members = [w for r, w in zip(records, weights, strict=True) if r.prompt_id == group]
        assert math.fsum(members) / len(members) == pytest.approx(1.0, rel=1e-9)
    assert math.isfinite(stats.ess_overall) and stats.ess_overall >= 1 - 1e-9

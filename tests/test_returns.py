"""Returns and DRIFT weights, checked against hand computations on a small file in the release's schema."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from drift_algos.records import Trajectory, read_trajectories
from drift_algos.returns import (
    WeightStats,
    discounted_return,
    effective_sample_size,
    group_log_weights,
    group_weights,
    repetition_penalty,
    trajectory_return,
)
from drift_algos.weighting import WeighConfig, weigh

SAMPLE = Path(__file__).parent / "data" / "release_sample.jsonl"

# Returns of the sample's rows at gamma = 0.9, lambda = 0.5, worked out by hand:
EXPECTED_RETURNS = [
    1.0,  # correct at turn 1
    0.9,  # correct at turn 2
    -0.1 - 0.5 * (1 - 3 / 4),  # never correct, one unparsable turn, answers 5, 5, 6, 7
    0.81 - 0.5 * (1 - 2 / 3),  # correct at turn 3; answers "", 3, 4 (the empty one is not unique)
    0.0,  # the next three: never correct, all answers different
    0.0,
    0.0,
    0.9 - 0.1,  # trajectory_penalty column (older schema): one unparsable turn, correct at turn 2
    -0.2 - 0.5 * (1 - 2 / 3),  # trajectory_penalty -0.2, answers 10, 11, 10
    5.0,  # a reward of 5 at turn 1
    0.0,
]
GROUPS = {"metamath_17": [0, 1, 2, 3], "metamath_42": [4, 5, 6], "metamath_99": [7, 8], "metamath_7": [9, 10]}


def naive_weights(returns: list[float], beta: float) -> list[float]:
    """The textbook formula, evaluated directly (fine in float64 for the sample's moderate returns)."""
    exps = [math.exp(r / beta) for r in returns]
    mean = sum(exps) / len(exps)
    return [e / mean for e in exps]


@pytest.fixture(scope="module")
def records() -> list[Trajectory]:
    return read_trajectories(SAMPLE)


def test_discounted_return_takes_turns_in_numeric_order() -> None:
    rewards = {"t10": 1.0, "t2": 1.0, "t1": 2.0}
    assert discounted_return(rewards, 0.5) == pytest.approx(2.0 + 0.5 + 0.5**9)
    assert discounted_return(rewards, 1.0) == 4.0
    assert discounted_return(rewards, 0.0) == 2.0  # 0**0 == 1: only the first turn counts
    assert discounted_return({}, 0.9) == 0.0
    with pytest.raises(ValueError, match="turn_rewards key 'x1'"):
        discounted_return({"x1": 1.0}, 0.9)


def test_repetition_penalty_from_answer_norms() -> None:
    assert repetition_penalty(["5", "5", "6", "7"]) == pytest.approx(0.125)
    # An empty answer counts in the denominator but never as a unique answer.
    assert repetition_penalty(["", "3", "4"]) == pytest.approx(0.5 / 3)
    assert repetition_penalty(["", ""]) == pytest.approx(0.5)
    assert repetition_penalty(["1", "2"]) == 0.0
    assert repetition_penalty([]) == 0.0
    assert repetition_penalty(["a", "a"], lam=0.0) == 0.0
    assert repetition_penalty(["a", "a"], lam=1.0) == pytest.approx(0.5)


def test_environment_and_weighing_charge_one_repetition_penalty() -> None:
    """An episode whose answers normalise to nothing: the environment's recorded penalty and the
    one weighing recomputes from ``answer_norms`` are the same number (they once disagreed)."""
    import gymnasium as gym

    import drift_envs  # noqa: F401 - registers the environments
    from drift_envs import Problem

    env = gym.make("drift/MathCorrection-v0", problems=[Problem("p", "What is 1 + 1?", "2", "test")],
                   max_turns=2, max_actions=2)
    env.reset(options={"problem_id": "p"})
    for _ in range(2):  # "." has an answer tag but normalises to the empty string
        *_, terminated, truncated, info = env.step("<answer>.</answer>")
    assert truncated and not terminated
    stats = info["episode"]
    assert list(stats.answer_norms) == ["", ""]
    assert stats.repetition_penalty == pytest.approx(0.5) == repetition_penalty(stats.answer_norms)


def test_returns_of_release_rows_match_hand_computation(records: list[Trajectory]) -> None:
    assert [round(trajectory_return(r, 0.9, 0.5), 12) for r in records] == [round(x, 12) for x in EXPECTED_RETURNS]


def test_format_penalty_and_trajectory_penalty_fallback() -> None:
    base = {
        "prompt_id": "p",
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "turn_rewards": {"t1": 0.0, "t2": 1.0},
    }
    assert trajectory_return(Trajectory.from_dict(base), 0.9) == pytest.approx(0.9)
    assert trajectory_return(Trajectory.from_dict({**base, "format_penalty": -0.2}), 0.9) == pytest.approx(0.7)
    assert trajectory_return(Trajectory.from_dict({**base, "trajectory_penalty": -0.3}), 0.9) == pytest.approx(0.6)
    # As in the release, format_penalty wins when both columns are present.
    both = {**base, "format_penalty": -0.2, "trajectory_penalty": -0.3}
    assert trajectory_return(Trajectory.from_dict(both), 0.9) == pytest.approx(0.7)


def test_recorded_repetition_penalty_is_opt_in() -> None:
    row = {
        "prompt_id": "p",
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "turn_rewards": {"t1": 1.0},
        "answer_norms": ["1", "1"],
        "repetition_penalty": 0.3,
    }
    record = Trajectory.from_dict(row)
    assert trajectory_return(record, 0.9, 0.5) == pytest.approx(1.0 - 0.25)  # recomputed from answer_norms
    assert trajectory_return(record, 0.9, 0.5, use_recorded_repetition_penalty=True) == pytest.approx(0.7)
    unrecorded = Trajectory.from_dict({**row, "repetition_penalty": None})
    assert trajectory_return(unrecorded, 0.9, 0.5, use_recorded_repetition_penalty=True) == pytest.approx(0.75)
    cfg = WeighConfig(use_recorded_repetition_penalty=True)
    assert weigh([record], cfg)[0] == [pytest.approx(0.7)]


def test_weights_on_release_sample_equal_hand_computation(records: list[Trajectory]) -> None:
    returns, weights, stats = weigh(records, WeighConfig(gamma=0.9, beta=0.1, repetition_lambda=0.5))
    assert returns == pytest.approx(EXPECTED_RETURNS, abs=1e-12)
    for indices in GROUPS.values():
        expected = naive_weights([EXPECTED_RETURNS[i] for i in indices], 0.1)
        assert [weights[i] for i in indices] == pytest.approx(expected, rel=1e-12)
    # Hand values of the first group: returns 1.0, 0.9, -0.225, 0.6433...
    assert weights[0] == pytest.approx(2.865054317, rel=1e-9)
    assert weights[1] == pytest.approx(1.0539945811, rel=1e-9)
    # The group whose returns are all equal gets exactly 1.
    assert [weights[i] for i in GROUPS["metamath_42"]] == [1.0, 1.0, 1.0]
    assert stats.num_trajectories == 11 and stats.num_groups == 4
    assert stats.equal_return_group_share == 0.25
    assert stats.no_success_group_share == 0.25
    assert stats.weight_mean == pytest.approx(1.0, abs=1e-12)
    assert stats.return_max == 5.0


@pytest.mark.parametrize("beta", [0.01, 0.05, 0.1, 0.2, 1.0, 10.0])
def test_group_mean_weight_is_one(records: list[Trajectory], beta: float) -> None:
    _, weights, _ = weigh(records, WeighConfig(beta=beta))
    for indices in GROUPS.values():
        assert math.fsum(weights[i] for i in indices) / len(indices) == pytest.approx(1.0, abs=1e-12)


def test_large_return_at_small_beta_overflows_float32_but_not_ours(records: list[Trajectory]) -> None:
    # The group with a return of 5.0 at beta = 0.05: exp(5.0 / 0.05) = exp(100) exceeds float32's range
    # (exp(3.0 / 0.05) = exp(60) would still fit: float32 overflows beyond exp(88.7)).
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(np.float32(5.0 / 0.05))
        assert np.isinf(naive)
        naive_group = np.exp(np.array([5.0, 0.0], dtype=np.float32) / np.float32(0.05))
        assert np.isnan((naive_group / naive_group.mean())[0])
    _, weights, _ = weigh(records, WeighConfig(beta=0.05))
    ours = [weights[i] for i in GROUPS["metamath_7"]]
    assert all(math.isfinite(w) for w in ours)
    assert ours == pytest.approx([2 / (1 + math.exp(-100)), 2 * math.exp(-100) / (1 + math.exp(-100))], rel=1e-12)
    assert ours[1] > 0


def test_huge_and_infinite_returns() -> None:
    with pytest.raises(OverflowError):
        naive_weights([1000.0, 999.0, 0.0], 0.1)
    assert group_weights([1000.0, 999.0, 0.0], 0.1) == pytest.approx(
        [3 / (1 + math.exp(-10)), 3 * math.exp(-10) / (1 + math.exp(-10)), 0.0], rel=1e-12
    )
    # The difference of two extreme returns overflows to -inf: its weight is the correct limit, 0.
    assert group_weights([1e308, -1e308], 0.1) == [2.0, 0.0]
    assert group_weights([math.inf, 0.0, math.inf], 0.1) == [1.5, 0.0, 1.5]
    assert group_weights([-math.inf, 0.0], 0.1) == [0.0, 2.0]
    assert group_weights([math.inf, math.inf], 0.1) == [1.0, 1.0]
    assert group_log_weights([math.inf, 0.0, math.inf], 0.1) == pytest.approx([math.log(1.5), -math.inf, math.log(1.5)])


def test_log_weights_agree_with_weights() -> None:
    returns = [1.0, 0.9, -0.225, 0.3, 0.3]
    logs = group_log_weights(returns, 0.1)
    assert [math.exp(x) for x in logs] == pytest.approx(group_weights(returns, 0.1), rel=1e-12)
    assert logs == pytest.approx([math.log(w) for w in naive_weights(returns, 0.1)], rel=1e-12)
    assert group_log_weights([0.4, 0.4], 0.1) == [0.0, 0.0]


def test_equal_nan_empty_and_bad_beta() -> None:
    assert group_weights([0.7] * 5, 0.1) == [1.0] * 5
    assert group_weights([0.7], 0.1) == [1.0]
    assert group_weights([], 0.1) == []
    assert group_log_weights([], 0.1) == []
    with pytest.raises(ValueError, match="NaN"):
        group_weights([1.0, math.nan], 0.1)
    with pytest.raises(ValueError, match="NaN"):
        group_log_weights([math.nan, math.nan], 0.1)
    for beta in (0.0, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="beta"):
            group_weights([1.0, 0.0], beta)


def test_effective_sample_size() -> None:
    assert effective_sample_size([1.0] * 16) == pytest.approx(16.0)
    assert effective_sample_size([4.0, 0.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert effective_sample_size([2.0, 1.0, 1.0]) == pytest.approx(16 / 6)
    assert effective_sample_size([]) == 0.0
    assert effective_sample_size([0.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        effective_sample_size([1.0, -1.0])
    with pytest.raises(ValueError):
        effective_sample_size([math.nan])


def test_weight_stats_from_groups() -> None:
    stats = WeightStats.from_groups(
        [[1.0, 0.0], [0.5, 0.5, 0.5]], [[1.5, 0.5], [1.0, 1.0, 1.0]], [[True, False], [False, False, False]]
    )
    assert stats.num_trajectories == 5 and stats.num_groups == 2
    assert stats.ess_min == pytest.approx(4 / 2.5)
    assert stats.ess_mean == pytest.approx((4 / 2.5 + 3) / 2)
    assert stats.ess_fraction_mean == pytest.approx((4 / 2.5 / 2 + 1) / 2)
    assert stats.ess_overall == pytest.approx(25 / 5.5)
    assert stats.ess_overall_fraction == pytest.approx(25 / 5.5 / 5)
    assert (stats.weight_min, stats.weight_max, stats.weight_mean) == (0.5, 1.5, 1.0)
    assert stats.equal_return_group_share == 0.5 and stats.no_success_group_share == 0.5
    assert WeightStats.from_groups([[1.0]], [[1.0]]).no_success_group_share is None
    with pytest.raises(ValueError):
        WeightStats.from_groups([], [])
    with pytest.raises(ValueError):
        WeightStats.from_groups([[1.0, 2.0]], [[1.0]])


def test_weigh_config_validation_and_empty_input() -> None:
    for bad in (
        {"beta": 0.0},
        {"beta": -1.0},
        {"beta": math.nan},
        {"gamma": 1.5},
        {"gamma": -0.1},
        {"gamma": math.inf},
        {"repetition_lambda": -0.5},
    ):
        with pytest.raises(ValueError):
            WeighConfig(**bad)
    assert WeighConfig() == WeighConfig(gamma=0.9, beta=0.1, repetition_lambda=0.5)
    with pytest.raises(ValueError, match="no trajectories"):
        weigh([], WeighConfig())


def test_infinite_reward_in_a_record_is_rejected() -> None:
    row = {
        "prompt_id": "p",
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "turn_rewards": {"t1": math.inf},
    }
    with pytest.raises(ValueError, match="field 'turn_rewards.t1' must be finite"):
        Trajectory.from_dict(row)
    record = Trajectory(prompt_id="p", messages=row["messages"], verifier={}, turn_rewards={"t1": math.inf})
    with pytest.raises(ValueError, match="prompt_id 'p'"):
        weigh([record])


def test_return_of_three_at_beta_005_matches_hand_computation(tmp_path: Path) -> None:
    # Issue 3 asks for a group with a return of 3.0 at beta = 0.05: exp(3.0 / 0.05) = exp(60) ~ 1.1e26.
    # That overflows float16 (max 65504) and leaves float32 only ~12 orders of magnitude of headroom
    # (a 16-member group summed at exp(88.7) overflows); the log-space weights are exact regardless.
    rows = [
        {"prompt_id": "big", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
         "turn_rewards": {"t1": r}, "answer_norms": [], "format_penalty": 0.0}
        for r in (3.0, 0.0, 0.0)
    ]
    path = tmp_path / "release.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, weights, _ = weigh(read_trajectories(path), WeighConfig(gamma=0.9, beta=0.05, repetition_lambda=0.5))
    e = math.exp(60.0)
    hand = [3 * e / (e + 2), 3 / (e + 2), 3 / (e + 2)]
    assert weights == pytest.approx(hand, rel=1e-12)
    assert sum(weights) == pytest.approx(3.0)
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(np.float16(3.0 / 0.05)))

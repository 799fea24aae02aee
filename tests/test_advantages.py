"""GRPO group advantages, GAE, the clipped objective and the k3 KL against hand-worked examples."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from drift_algos.advantages import gae, group_advantages
from drift_algos.training.losses import clipped_policy_terms, clipped_value_terms, k3_kl


def test_group_advantages_by_hand() -> None:
    # Group a: returns 1, 0, 0, 1 -> mean 0.5, population std 0.5 -> +-1. Group b: all equal -> 0, reported.
    # Group c: a group of one -> 0, reported.
    result = group_advantages([1.0, 0.0, 0.0, 1.0, 0.3, 0.3, 2.0], ["a", "a", "a", "a", "b", "b", "c"], eps=0.0)
    assert result.advantages == pytest.approx([1.0, -1.0, -1.0, 1.0, 0.0, 0.0, 0.0])
    assert result.flat_groups == ["b", "c"]


def test_group_advantages_without_the_std() -> None:
    result = group_advantages([0.9, 0.0, -0.1], ["a"] * 3, scale=False)
    assert result.advantages == pytest.approx([0.9 - 0.8 / 3, -0.8 / 3, -0.1 - 0.8 / 3])
    assert result.flat_groups == []


def test_group_advantages_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="group labels"):
        group_advantages([1.0], ["a", "b"])
    with pytest.raises(ValueError, match="finite"):
        group_advantages([math.nan], ["a"])


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(-10, 10)), min_size=1, max_size=30), st.booleans())
def test_group_advantages_are_zero_mean_per_group_and_finite(rows: list[tuple[str, float]], scale: bool) -> None:
    groups, returns = [g for g, _ in rows], [r for _, r in rows]
    result = group_advantages(returns, groups, scale=scale)
    assert all(math.isfinite(a) for a in result.advantages)
    for g in set(groups):
        members = [a for a, h in zip(result.advantages, groups, strict=True) if h == g]
        assert abs(sum(members)) / len(members) < 1e-6 * max(1.0, max(abs(r) for r in returns))
        if scale and g not in result.flat_groups:
            assert max(abs(a) for a in members) <= math.sqrt(len(members))  # |z| <= sqrt(n) for population std


def test_gae_with_turn_rewards_by_hand() -> None:
    # Two turns of two tokens each; turn rewards 0 (on token 1) and 1 (on token 3); gamma 0.9, lambda 0.5.
    rewards, values = [0.0, 0.0, 0.0, 1.0], [0.5, 0.4, 0.6, 0.8]
    advantages, returns = gae(rewards, values, gamma=0.9, lam=0.5)
    d3 = 1.0 - 0.8  # last token: no next value
    d2 = 0.0 + 0.9 * 0.8 - 0.6
    d1 = 0.0 + 0.9 * 0.6 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.5
    a3 = d3
    a2 = d2 + 0.45 * a3
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    assert advantages == pytest.approx([a0, a1, a2, a3])
    assert returns == pytest.approx([a0 + 0.5, a1 + 0.4, a2 + 0.6, a3 + 0.8])


def test_gae_with_lambda_one_is_the_discounted_return_minus_value() -> None:
    advantages, returns = gae([0.0, -0.1, 0.0, 1.0], [0.2, 0.3, 0.1, 0.0], gamma=0.9, lam=1.0)
    assert returns == pytest.approx([-0.09 + 0.729, -0.1 + 0.81, 0.9, 1.0])


def test_clipped_policy_terms_by_hand() -> None:
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))  # ratios 1.5, 1.5, 0.5, 0.5
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    terms, clipped = clipped_policy_terms(logp, old, adv, clip=0.2)
    # A>0, r=1.5: min(1.5, 1.2) = 1.2 (clipped); A<0, r=1.5: min(-1.5, -1.2) = -1.5 (unclipped);
    # A>0, r=0.5: min(0.5, 0.8) = 0.5; A<0, r=0.5: min(-0.5, -0.8) = -0.8 (clipped).
    assert terms.tolist() == pytest.approx([-1.2, 1.5, -0.5, 0.8])
    assert clipped.tolist() == [True, False, False, True]


def test_k3_kl_by_hand() -> None:
    logp = torch.tensor([math.log(0.5), math.log(0.2), math.log(0.3)])
    ref = torch.tensor([math.log(0.5), math.log(0.4), math.log(0.1)])
    expected = [0.0, 2.0 - math.log(2.0) - 1, 1 / 3 - math.log(1 / 3) - 1]  # r - log r - 1 with r = ref/pi
    assert k3_kl(logp, ref).tolist() == pytest.approx(expected)
    assert (k3_kl(logp, ref) >= 0).all()


def test_clipped_value_terms_by_hand() -> None:
    values, old, returns = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0])
    # Row 0: unclipped (1-0)^2 = 1, clipped V = 0.7 -> 0.49; max 1 -> 0.5. Row 1: (0-1)^2 = 1, clipped 0.3 -> 0.49.
    assert clipped_value_terms(values, old, returns, clip=0.2).tolist() == pytest.approx([0.5, 0.5])

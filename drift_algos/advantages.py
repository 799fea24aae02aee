"""Advantages for the online algorithms, as pure functions: GRPO's group advantages and PPO's GAE."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class GroupAdvantages:
    """Per-trajectory advantages and which groups carried no signal."""

    advantages: list[float]
    """One per trajectory, in input order."""
    flat_groups: list[str]
    """Groups whose returns were all equal (a group of one included): their advantages are 0 and they add no
    gradient, only cost."""


def group_advantages(returns: Sequence[float], groups: Sequence[str], *, scale: bool = True,
                     eps: float = 1e-6) -> GroupAdvantages:
    """GRPO: ``(R_i - mean_g R) / (std_g R + eps)`` within each group ``g`` (population std; ``scale=False``
    leaves out the division, as Dr. GRPO does, so groups with a small spread are not amplified)."""
    if len(returns) != len(groups):
        raise ValueError(f"{len(returns)} returns for {len(groups)} group labels")
    if not all(math.isfinite(r) for r in returns):
        raise ValueError("returns must be finite")
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    advantages = [0.0] * len(returns)
    flat = []
    for g, idx in members.items():
        values = [returns[i] for i in idx]
        mean = sum(values) / len(values)
        if all(v == values[0] for v in values):
            flat.append(g)
            continue
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        for i in idx:
            advantages[i] = (returns[i] - mean) / (std + eps) if scale else returns[i] - mean
    return GroupAdvantages(advantages, flat)


def gae(rewards: Sequence[float], values: Sequence[float], *, gamma: float, lam: float) -> tuple[list[float],
                                                                                               list[float]]:
    """Generalised advantage estimation over one trajectory's assistant tokens.

    ``rewards[t]`` is the reward placed on token t (a turn's reward on its last token, 0 elsewhere), ``values[t]``
    the critic's estimate; the value after the last token is 0 (the episode ends). Returns ``(advantages,
    returns)`` with ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}`` and
    ``G_t = A_t + V_t`` (the value targets).
    """
    if len(rewards) != len(values):
        raise ValueError(f"{len(rewards)} rewards for {len(values)} values")
    advantages = [0.0] * len(rewards)
    running, next_value = 0.0, 0.0
    for t in range(len(rewards) - 1, -1, -1):
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
        next_value = values[t]
    return advantages, [a + v for a, v in zip(advantages, values, strict=True)]

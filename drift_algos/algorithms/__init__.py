"""Algorithms on the shared training core; each is a config, how trajectories become samples, and a loss."""

from __future__ import annotations

from drift_algos.algorithms.base import OfflineAlgorithm, OnlineAlgorithm, OnlineBatch, SampleSet
from drift_algos.algorithms.drift import Drift, DriftConfig
from drift_algos.algorithms.grpo import GRPO, GRPOConfig
from drift_algos.algorithms.ppo import PPO, PPOConfig
from drift_algos.algorithms.sft import SFT, RejectionSFT
from drift_algos.algorithms.sft_all import SFTAllTurns

ALGORITHMS: dict[str, type[OfflineAlgorithm] | type[OnlineAlgorithm]] = {
    cls.name: cls for cls in (Drift, SFT, SFTAllTurns, RejectionSFT, GRPO, PPO)}
"""Algorithms by ``--algo`` name."""


def algorithm_class(name: str) -> type[OfflineAlgorithm] | type[OnlineAlgorithm]:
    """The algorithm called ``name``; a :class:`ValueError` lists the known ones."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{name}' (available: {', '.join(ALGORITHMS)})")
    return ALGORITHMS[name]


__all__ = [
    "ALGORITHMS", "GRPO", "SFT", "Drift", "DriftConfig", "GRPOConfig", "OfflineAlgorithm", "OnlineAlgorithm",
    "OnlineBatch", "PPO", "PPOConfig", "RejectionSFT", "SFTAllTurns", "SampleSet", "algorithm_class",
]

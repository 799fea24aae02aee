"""Algorithms on the shared training core; each is a config, how trajectories become samples, and a loss."""

from __future__ import annotations

from drift_algos.algorithms.base import OfflineAlgorithm, SampleSet
from drift_algos.algorithms.drift import Drift, DriftConfig
from drift_algos.algorithms.sft import SFT, RejectionSFT

ALGORITHMS: dict[str, type[OfflineAlgorithm]] = {cls.name: cls for cls in (Drift, SFT, RejectionSFT)}
"""Algorithms by ``--algo`` name."""



def algorithm_class(name: str) -> type[OfflineAlgorithm]:
    """The algorithm called ``name``; a :class:`ValueError` lists the known ones."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{name}' (available: {', '.join(ALGORITHMS)})")
    return ALGORITHMS[name]


__all__ = [
    "ALGORITHMS", "SFT", "Drift", "DriftConfig", "OfflineAlgorithm", "RejectionSFT", "SampleSet", "algorithm_class",
]

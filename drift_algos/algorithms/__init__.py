"""Algorithms on the shared training core; each is a config, how trajectories become samples, and a loss."""

from __future__ import annotations

from drift_algos.algorithms.base import OfflineAlgorithm, SampleSet
from drift_algos.algorithms.drift import Drift, DriftConfig
from drift_algos.algorithms.sft import SFT, RejectionSFT

ALGORITHMS: dict[str, type[OfflineAlgorithm]] = {cls.name: cls for cls in (Drift, SFT, RejectionSFT)}
"""Algorithms by ``--algo`` name."""

__all__ = ["ALGORITHMS", "SFT", "Drift", "DriftConfig", "OfflineAlgorithm", "RejectionSFT", "SampleSet"]

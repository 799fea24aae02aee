"""Plain SFT baselines: every trajectory weight 1 (``sft``), or only successful ones (``rft``)."""

from __future__ import annotations

from collections.abc import Sequence

from drift_algos.algorithms.base import OfflineAlgorithm, SampleSet, last_turn_sample
from drift_algos.records import Trajectory


class SFT(OfflineAlgorithm):
    """Supervised fine-tuning on every trajectory, weight 1."""

    name = "sft"

    def keep(self, trajectory: Trajectory) -> bool:
        return True

    def samples(self, trajectories: Sequence[Trajectory]) -> SampleSet:
        kept = [last_turn_sample(t, 1.0) for t in trajectories if self.keep(t) and not t.empty_last_reply]
        skipped = len(trajectories) - len(kept)
        return SampleSet(kept, len(trajectories), skipped, skipped / len(trajectories) if trajectories else 0.0,
                         empty_replies=sum(t.empty_last_reply for t in trajectories))


class RejectionSFT(SFT):
    """Rejection-sampling fine-tuning: SFT on the successful trajectories only."""

    name = "rft"

    def keep(self, trajectory: Trajectory) -> bool:
        return trajectory.success

"""DRIFT: importance-weighted SFT on trajectories from a fixed reference policy.

Each trajectory gets ``w = exp(R/beta) / mean_group(exp(R/beta))`` (computed in log space,
group = same ``prompt_id``), and the loss is ``mean_i(w_i * nll_i)`` (the trainer's weighted NLL;
``TrainConfig.normalise_weights`` and ``sequence_loss`` choose its normaliser and per-sample NLL). With
the summed sequence NLL this is the fit of the KL-regularised optimum ``pi_ref * exp(R/beta)``; the
release's token mean, the default, fits it only for replies of equal length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drift_algos.algorithms.base import OfflineAlgorithm, SampleSet, last_turn_sample
from drift_algos.records import Trajectory
from drift_algos.weighting import WeighConfig, weigh


@dataclass
class DriftConfig:
    """DRIFT's settings (release scripts: gamma 0.9, beta 0.1)."""

    gamma: float = 0.9
    """Per-turn discount of the return."""
    beta: float = 0.1
    """KL temperature: smaller puts more weight on the best trajectories of a group."""
    repetition_lambda: float = 0.5
    """Repetition penalty scale in the return."""
    min_weight: float = 0.0
    """Skip samples whose weight is below this (they cost a full pass and change little); the
    weight mass skipped is reported."""
    drop_unsolved_groups: bool = False
    """Leave out groups in which no trajectory succeeded (their weights only rank format and repetition)."""

    @property
    def weighing(self) -> WeighConfig:
        """The return and weight settings, for :func:`~drift_algos.weighting.weigh`."""
        return WeighConfig(self.gamma, self.beta, self.repetition_lambda)

    def __post_init__(self) -> None:
        self.weighing  # noqa: B018 - WeighConfig validates gamma, beta and the repetition lambda
        if self.min_weight < 0:
            raise ValueError(f"min_weight must be >= 0, got {self.min_weight}")


class Drift(OfflineAlgorithm):
    """Weighted SFT with group-normalised ``exp(R/beta)`` weights."""

    name = "drift"

    def __init__(self, config: DriftConfig | None = None):
        self.config = config or DriftConfig()

    def samples(self, trajectories: Sequence[Trajectory]) -> SampleSet:
        _, weights, _ = weigh(trajectories, self.config.weighing)
        return self.weighted_samples(trajectories, weights)

    def weighted_samples(self, trajectories: Sequence[Trajectory], weights: Sequence[float]) -> SampleSet:
        """Samples for trajectories whose weights are given (a file's ``weight`` column, from ``drift weigh``)."""
        if len(weights) != len(trajectories):
            raise ValueError(f"{len(weights)} weights for {len(trajectories)} trajectories")
        cfg = self.config
        solved = {t.prompt_id for t in trajectories if t.success}
        keep, skipped_mass = [], 0.0
        for trajectory, weight in zip(trajectories, weights, strict=True):
            if (weight < cfg.min_weight or (cfg.drop_unsolved_groups and trajectory.prompt_id not in solved)
                    or trajectory.empty_last_reply):
                skipped_mass += weight
                continue
            keep.append(last_turn_sample(trajectory, weight))
        total = sum(weights)
        return SampleSet(keep, len(trajectories), len(trajectories) - len(keep), skipped_mass / total if total else 0.0,
                         empty_replies=sum(t.empty_last_reply for t in trajectories))

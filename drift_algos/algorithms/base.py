"""What an algorithm is: how trajectories become samples (and coefficients), and its loss.

Offline algorithms (DRIFT, SFT, RFT) train once on a fixed file; online ones (GRPO, PPO) are run by the loop
of :mod:`drift_algos.training.online`, which samples with the current policy and hands them each iteration's
trajectories.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from drift_algos.records import Trajectory
from drift_algos.training.objectives import Objective
from drift_algos.training.samples import Sample, TokenizedSample, turn_samples
from drift_algos.training.trainer import TrainConfig, default_objective


@dataclass
class SampleSet:
    """The samples an algorithm trains on, and what it left out."""

    samples: list[Sample]
    """Conversations with their weights."""
    trajectories: int
    """Trajectories it was given."""
    skipped: int
    """Trajectories not turned into samples (filtered out)."""
    weight_mass_skipped: float
    """Share of the total weight the skipped trajectories carried (0 when all weights are 1)."""
    empty_replies: int = 0
    """Of the skipped, trajectories whose last assistant message is blank (nothing to train on)."""


class OfflineAlgorithm(ABC):
    """An algorithm trained once on a fixed set of trajectories (DRIFT, SFT, ...).

    Subclasses set :attr:`name` and implement :meth:`samples`; the objective is the
    weighted NLL of the training config unless overridden.
    """

    name: ClassVar[str]

    @abstractmethod
    def samples(self, trajectories: Sequence[Trajectory]) -> SampleSet:
        """The training samples for ``trajectories``."""

    def objective(self, train: TrainConfig) -> Objective:
        """The loss the trainer minimises: per-sample weighted NLL (``train.normalise_weights``,
        ``train.sequence_loss``)."""
        return default_objective(train)

    def train_config(self, train: TrainConfig) -> TrainConfig:
        """The training settings this algorithm trains with: ``train`` unchanged, or (a variant such as ``sft-all``)
        with what the algorithm fixes, e.g. its loss target."""
        return train


def last_turn_sample(trajectory: Trajectory, weight: float) -> Sample:
    recorded = turn_samples(trajectory, weight=weight)[-1] if trajectory.turn_completion_ids else None
    return Sample(messages=trajectory.messages, weight=weight, prompt_id=trajectory.prompt_id, recorded=recorded)


@dataclass
class OnlineBatch:
    """One iteration's training data."""

    samples: list[TokenizedSample]
    """Token-faithful samples with per-token advantages (the loop adds the old and reference log-probs)."""
    returns: list[float]
    """Each trajectory's return (for the metrics log)."""
    info: dict[str, float]
    """Counts to report (e.g. groups whose returns were all equal)."""


class OnlineAlgorithm(ABC):
    """An algorithm that samples with its current policy (GRPO, PPO); subclasses set :attr:`name`."""

    name: ClassVar[str]

    @property
    def needs_reference(self) -> bool:
        """Whether the loop must keep the reference policy's log-probs (a KL term)."""
        return False

    @abstractmethod
    def batch(self, trajectories: Sequence[Trajectory]) -> OnlineBatch:
        """Samples and coefficients for one iteration's trajectories (sampled with ``record_token_ids``)."""

    def complete(self, batch: OnlineBatch, trainer) -> None:  # noqa: B027 - only some algorithms need it
        """Fill in what needs the policy (PPO: old values, GAE); called after the loop set the old log-probs."""

    @abstractmethod
    def objective(self) -> Objective:
        """The loss the trainer minimises (asked after :meth:`complete`, each iteration)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The algorithm's own trained weights besides the policy's (PPO's value head), for resumable checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor], trainer) -> None:  # noqa: B027 - most have none
        """Restore what :meth:`state_dict` returned (``trainer`` holds the policy, e.g. for its hidden size)."""

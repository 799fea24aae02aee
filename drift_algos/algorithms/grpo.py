"""GRPO: group-relative advantages on trajectories sampled from the current policy, clipped-ratio updates.

Each iteration samples G trajectories per prompt with the current policy (the online loop,
:mod:`drift_algos.training.online`); a trajectory's advantage is its return (DRIFT's return: discounted turn
rewards, format and repetition penalties) minus its group's mean, divided by the group's std (``scale_std``); every
assistant token of the trajectory gets it, and the loss is
:class:`~drift_algos.training.objectives.ClippedPolicyGradient`: the clipped ratio against the sampling policy's
log-probs of exactly the generated tokens, plus an optional k3 KL to the reference, aggregated as a mean over all
the step's assistant tokens. Groups whose returns are all equal add nothing and are reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drift_algos.advantages import group_advantages
from drift_algos.algorithms.base import OnlineAlgorithm, OnlineBatch
from drift_algos.records import Trajectory
from drift_algos.training.objectives import ClippedPolicyGradient, Objective
from drift_algos.training.samples import TokenizedSample, turn_samples
from drift_algos.weighting import WeighConfig


@dataclass
class GRPOConfig:
    """GRPO's settings."""

    clip: float = 0.2
    """Ratio clip epsilon."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to the reference policy (0: off, no reference model kept)."""
    scale_std: bool = True
    """Divide advantages by the group's std (off: Dr. GRPO's unscaled advantages)."""
    gamma: float = 0.9
    """Per-turn discount of the return."""
    repetition_lambda: float = 0.5
    """Repetition penalty scale in the return."""

    def __post_init__(self) -> None:
        if not 0 < self.clip < 1:
            raise ValueError(f"clip must be in (0, 1), got {self.clip}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        WeighConfig(self.gamma, 1.0, self.repetition_lambda)  # validates gamma and the repetition lambda


class GRPO(OnlineAlgorithm):
    """Group-relative policy optimisation over multi-turn trajectories."""

    name = "grpo"

    def __init__(self, config: GRPOConfig | None = None):
        self.config = config or GRPOConfig()

    @property
    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0

    def batch(self, trajectories: Sequence[Trajectory]) -> OnlineBatch:
        cfg = self.config
        returns = [WeighConfig(cfg.gamma, 1.0, cfg.repetition_lambda).return_of(t) for t in trajectories]
        adv = group_advantages(returns, [t.prompt_id for t in trajectories], scale=cfg.scale_std)
        samples: list[TokenizedSample] = []
        flat = set(adv.flat_groups)
        for trajectory, advantage in zip(trajectories, adv.advantages, strict=True):
            if trajectory.prompt_id in flat:
                continue  # zero advantage everywhere: no gradient, only cost
            for sample in turn_samples(trajectory):
                sample.advantages = [advantage] * len(sample)
                samples.append(sample)
        groups = len({t.prompt_id for t in trajectories})
        return OnlineBatch(samples, returns, {"flat_groups": len(flat), "groups": groups})

    def objective(self) -> Objective:
        return ClippedPolicyGradient(clip=self.config.clip, kl_coef=self.config.kl_coef)

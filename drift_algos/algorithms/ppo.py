"""Multi-turn PPO with a value head on the policy (the DRIFT paper's main online baseline, after RAGEN/verl).

Each iteration samples trajectories with the current policy (:mod:`drift_algos.training.online`). Turn-level rewards
sit on the last generated token of each assistant turn: the turn's environment reward plus its format penalty, and the
repetition penalty of DRIFT's return on the last turn. GAE runs over the trajectory's assistant tokens in order
(token-level ``gamma``, default 1, and ``lam``); advantages are whitened over the batch. The loss is
:class:`~drift_algos.training.objectives.PPOObjective`: clipped policy surrogate, ``kl_coef`` times the k3 KL to the
reference, ``value_coef`` times the clipped value loss, each a mean over the step's assistant tokens.

Why a value head rather than a separate critic: it shares the policy's forward pass (one model's memory and compute
on a 2-core CPU, where a second 135M model would double both), and it is what TRL's PPO used for years; verl's
separate critic pays off when the critic is large and trained on other devices. The head starts at zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from drift_algos.advantages import gae
from drift_algos.algorithms.base import OnlineAlgorithm, OnlineBatch
from drift_algos.records import Trajectory
from drift_algos.training.objectives import Objective, PPOObjective, ValueHead
from drift_algos.training.samples import turn_samples
from drift_algos.weighting import WeighConfig
from drift_envs.base import repetition_penalty


@dataclass
class PPOConfig:
    """PPO's settings."""

    clip: float = 0.2
    """Policy ratio clip epsilon."""
    value_clip: float = 0.2
    """Value clip range around the old value."""
    value_coef: float = 0.5
    """Weight of the value loss."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to the reference policy (0: off)."""
    gamma: float = 1.0
    """Token-level discount in GAE."""
    lam: float = 0.95
    """GAE lambda."""
    repetition_lambda: float = 0.5
    """Repetition penalty scale (on the last turn's reward)."""
    whiten: bool = True
    """Normalise advantages to zero mean and unit std over the batch's assistant tokens."""

    def __post_init__(self) -> None:
        if not 0 < self.clip < 1 or self.value_clip <= 0:
            raise ValueError(f"clip must be in (0, 1) and value_clip > 0, got {self.clip}, {self.value_clip}")
        for name in ("value_coef", "kl_coef", "repetition_lambda"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def turn_level_rewards(trajectory: Trajectory, repetition_lambda: float) -> list[float]:
    """One reward per assistant turn: environment reward + that turn's format penalty, minus the repetition
    penalty on the last turn (their sum, undiscounted, is DRIFT's return at gamma 1)."""
    turns = trajectory.num_turns
    rewards = [float(trajectory.turn_rewards.get(f"t{t}", 0.0)) for t in range(1, turns + 1)]
    details = trajectory.reward_details
    if all(isinstance(details.get(f"t{t}"), dict) for t in range(1, turns + 1)):
        for t in range(turns):
            rewards[t] += float(details[f"t{t + 1}"].get("format_penalty", 0.0))
    else:
        rewards[-1] += trajectory.format_penalty
    # A reward recorded past the turns taken (the code environment's partial credit sits at the turn limit when the
    # answer limit ended the episode earlier) belongs to the last turn taken.
    rewards[-1] += sum(float(value) for key, value in trajectory.turn_rewards.items() if int(key[1:]) > turns)
    rewards[-1] -= repetition_penalty(trajectory.answer_norms, repetition_lambda)
    return rewards


class PPO(OnlineAlgorithm):
    """Proximal policy optimisation with turn-level rewards and GAE over assistant tokens."""

    name = "ppo"

    def __init__(self, config: PPOConfig | None = None):
        self.config = config or PPOConfig()
        self.head: ValueHead | None = None  # built on first use, when the hidden size is known

    @property
    def needs_reference(self) -> bool:
        return self.config.kl_coef > 0

    def batch(self, trajectories: Sequence[Trajectory]) -> OnlineBatch:
        returns = [WeighConfig(1.0, 1.0, self.config.repetition_lambda).return_of(t) for t in trajectories]
        samples, owners = [], []
        for index, trajectory in enumerate(trajectories):
            for sample in turn_samples(trajectory):
                samples.append(sample)
                owners.append(index)
        self._owners = owners
        self._trajectories = list(trajectories)
        return OnlineBatch(samples, returns, {"groups": len({t.prompt_id for t in trajectories})})

    def complete(self, batch: OnlineBatch, trainer) -> None:
        """Old values from the value head, then GAE advantages and value targets on each sample's tokens."""
        cfg = self.config
        if self.head is None:
            self.head = ValueHead(trainer.model.config.hidden_size)
        values = trainer.hidden_states(batch.samples, self.head.to(next(trainer.model.parameters()).device))
        for sample, v in zip(batch.samples, values, strict=True):
            sample.old_values = v
        by_owner: dict[int, list] = {}
        for sample, owner in zip(batch.samples, self._owners, strict=True):
            by_owner.setdefault(owner, []).append(sample)
        for owner, samples in by_owner.items():
            turn_rewards = turn_level_rewards(self._trajectories[owner], cfg.repetition_lambda)
            positions = [[i for i, m in enumerate(s.loss_mask) if m] for s in samples]
            rewards, token_values = [], []
            for sample, pos, reward in zip(samples, positions, turn_rewards, strict=True):
                token_values += [sample.old_values[i] for i in pos]
                rewards += [0.0] * (len(pos) - 1) + [reward] if pos else []
            advantages, targets = gae(rewards, token_values, gamma=cfg.gamma, lam=cfg.lam)
            k = 0
            for sample, pos in zip(samples, positions, strict=True):
                sample.advantages, sample.returns = [0.0] * len(sample), [0.0] * len(sample)
                for i in pos:
                    sample.advantages[i], sample.returns[i] = advantages[k], targets[k]
                    k += 1
        if cfg.whiten:
            flat = [a for s in batch.samples for a, m in zip(s.advantages, s.loss_mask, strict=True) if m]
            if len(flat) > 1:
                mean = sum(flat) / len(flat)
                std = (sum((a - mean) ** 2 for a in flat) / len(flat)) ** 0.5
                for s in batch.samples:
                    s.advantages = [(a - mean) / (std + 1e-6) if m else 0.0
                                    for a, m in zip(s.advantages, s.loss_mask, strict=True)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.head is None:
            return {}
        return {f"value_head.{k}": v.detach().cpu() for k, v in self.head.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], trainer) -> None:
        if state:
            self.head = ValueHead(trainer.model.config.hidden_size)
            self.head.load_state_dict({k.removeprefix("value_head."): v for k, v in state.items()})

    def objective(self) -> Objective:
        cfg = self.config
        return PPOObjective(clip=cfg.clip, kl_coef=cfg.kl_coef, head=self.head, value_coef=cfg.value_coef,
                            value_clip=cfg.value_clip)

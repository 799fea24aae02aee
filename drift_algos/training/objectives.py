"""What an algorithm optimises, as a function of the policy's per-token log-probs over a token batch.

The trainer computes ``logprobs`` (B, T-1), log pi(token t+1 | tokens <= t), for a micro-batch and asks the
objective for the micro-batch's *numerator*; it divides by the *denominator* summed over every micro-batch of the
optimiser step, so gradient accumulation gives exactly the gradient of one large batch (a short last micro-batch
counts for no more than its samples) and normalisations such as ``sum w nll / sum w`` span the whole step.

Batch tensors (from :func:`~drift_algos.training.trainer.collate`): ``input_ids``, ``attention_mask`` (B, T),
``loss_mask`` (B, T) bool, ``weights`` (B,), and when samples carry them ``advantages``, ``old_logprobs``,
``ref_logprobs`` (B, T), aligned with the token they score.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from drift_algos.training.losses import SequenceLoss, clipped_policy_terms, clipped_value_terms, k3_kl, per_sample_nll

Batch = dict[str, torch.Tensor]


class Objective(ABC):
    """A loss over token batches, split so that accumulation over micro-batches is exact.

    An objective with its own trainable parameters (PPO's value head) lists them in :meth:`parameters` and sets
    :attr:`needs_hidden`: the trainer then adds ``batch["hidden"]``, the last hidden states (B, T, H).
    """

    needs_hidden: bool = False
    """Whether :meth:`numerator` reads ``batch["hidden"]``."""

    def parameters(self) -> list[torch.nn.Parameter]:
        """Parameters besides the policy's that the optimiser must update."""
        return []

    def to(self, device: torch.device) -> None:  # noqa: B027 - most objectives hold no tensors
        """Move the objective's own parameters to ``device``."""

    @abstractmethod
    def denominator(self, batch: Batch) -> torch.Tensor:
        """This micro-batch's share of the step's normaliser (a scalar; the trainer sums them over the step)."""

    @abstractmethod
    def numerator(self, logprobs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's summed loss (scalar) from ``logprobs`` (B, T-1), and metrics summed over it."""


@dataclass
class WeightedNLL(Objective):
    """Weighted SFT (DRIFT; SFT and RFT with weights 1): ``sum_i w_i nll_i / N`` over the optimiser step's batch.

    ``N`` is the number of samples, or ``sum_i w_i`` when ``normalise`` (the loss is 0 when every weight is 0).
    """

    normalise: bool = False
    """Divide by the step's total weight instead of its sample count."""
    reduction: SequenceLoss = SequenceLoss.TOKEN_MEAN
    """How a sample's target tokens make its NLL (token mean: the release's, the default)."""

    def __post_init__(self) -> None:
        self.reduction = SequenceLoss(self.reduction)

    def denominator(self, batch: Batch) -> torch.Tensor:
        weights = batch["weights"]  # (B,)
        return weights.sum() if self.normalise else torch.tensor(float(len(weights)), device=weights.device)

    def numerator(self, logprobs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        nll = per_sample_nll(logprobs, batch["loss_mask"][:, 1:], self.reduction)  # (B,)
        return (batch["weights"] * nll).sum(), {}


@dataclass
class ClippedPolicyGradient(Objective):
    """GRPO's objective: the clipped-ratio surrogate on every target token, plus ``kl_coef * k3`` to the reference.

    Token-level aggregation: the sum over every target token of the step divided by their count (as DAPO and
    verl's ``token-mean``), so each generated token counts equally and long replies are not down-weighted.
    """

    clip: float = 0.2
    """Ratio clip epsilon."""
    kl_coef: float = 0.0
    """Weight of the k3 KL to the reference policy (0: off; then no reference log-probs are needed)."""

    def denominator(self, batch: Batch) -> torch.Tensor:
        return batch["loss_mask"][:, 1:].float().sum()

    def numerator(self, logprobs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch["loss_mask"][:, 1:].float()  # (B, T-1)
        old = batch["old_logprobs"][:, 1:]  # (B, T-1)
        terms, clipped = clipped_policy_terms(logprobs, old, batch["advantages"][:, 1:], self.clip)
        metrics = {"clipped_tokens": float((clipped.float() * mask).sum()),
                   "entropy_proxy": float((-logprobs.detach() * mask).sum())}
        if self.kl_coef > 0:
            kl = k3_kl(logprobs, batch["ref_logprobs"][:, 1:])  # (B, T-1)
            terms = terms + self.kl_coef * kl
            metrics["kl"] = float((kl.detach() * mask).sum())
        return (terms * mask).sum(), metrics


class ValueHead(torch.nn.Module):
    """A linear value estimate on the policy's last hidden state: V(state before token t+1) at position t."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)  # start at V = 0: no spurious advantages in the first iteration
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)  # (B, T, H) -> (B, T)


@dataclass
class PPOObjective(ClippedPolicyGradient):
    """PPO: the clipped policy surrogate with GAE advantages, ``kl_coef * k3`` to the reference, and
    ``value_coef`` times the clipped value loss of a value head on the policy; token mean over the step.

    Batch needs ``advantages``, ``old_logprobs``, ``old_values`` and ``returns`` (and ``ref_logprobs`` with a KL).
    """

    head: ValueHead | None = None
    """The value head (trained with the policy)."""
    value_coef: float = 0.5
    """Weight of the value loss."""
    value_clip: float = 0.2
    """Clip range of the new value around the old one."""

    needs_hidden = True

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.head.parameters())

    def to(self, device: torch.device) -> None:
        self.head.to(device)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """Values aligned with the log-probs: hidden (B, T, H) -> (B, T-1)."""
        return self.head(hidden[:, :-1])

    def numerator(self, logprobs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        policy, metrics = super().numerator(logprobs, batch)
        mask = batch["loss_mask"][:, 1:].float()  # (B, T-1)
        value_terms = clipped_value_terms(self.values(batch["hidden"]), batch["old_values"][:, 1:],
                                          batch["returns"][:, 1:], self.value_clip)  # (B, T-1)
        value_loss = (value_terms * mask).sum()
        metrics["value_loss"] = float(value_loss.detach())
        return policy + self.value_coef * value_loss, metrics

"""Losses as pure functions of tensors: per-token log-probs in, per-sample or per-token terms out."""

from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F


class SequenceLoss(str, Enum):
    """How a sample's target tokens make its NLL."""

    TOKEN_MEAN = "token-mean"
    """Mean NLL over the sample's target tokens (the DRIFT release's choice, and the default: it is what reproduced
    the published numbers; it makes a long reply's weight count no more than a short one's)."""
    SUM = "sum"
    """Summed NLL, ``-log pi(y | x)``: the derivation's objective, whose weighted minimiser is the KL-regularised
    optimum ``pi_ref * exp(R/beta)``. The token mean fits that optimum only when every reply has the same length."""


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log pi(token t+1 | tokens <= t): logits (B, T, V), input_ids (B, T) -> (B, T-1), in fp32."""
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_ids = input_ids[:, 1:]  # (B, T-1)
    return -F.cross_entropy(shift_logits.transpose(1, 2), shift_ids, reduction="none")  # (B, T-1)


def per_sample_nll(logprobs: torch.Tensor, mask: torch.Tensor,
                   reduction: SequenceLoss = SequenceLoss.TOKEN_MEAN) -> torch.Tensor:
    """Each sample's NLL over its target tokens: logprobs (B, T'), mask (B, T') -> (B,).

    ``token-mean`` divides by the sample's target-token count (a sample without targets gets 0); ``sum`` does not.
    """
    mask = mask.float()  # (B, T')
    total = (-logprobs * mask).sum(dim=1)  # (B,)
    if SequenceLoss(reduction) is SequenceLoss.SUM:
        return total
    return total / mask.sum(dim=1).clamp(min=1)


def sequence_nll(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor,
                 reduction: SequenceLoss = SequenceLoss.TOKEN_MEAN) -> torch.Tensor:
    """Per-sample NLL from logits (B, T, V), input_ids (B, T), loss_mask (B, T) bool -> (B,).

    Position t predicts token t + 1, so the mask is shifted with the ids.
    """
    return per_sample_nll(token_logprobs(logits, input_ids), loss_mask[:, 1:], reduction)


def weighted_nll_loss(nll: torch.Tensor, weights: torch.Tensor, *, normalise: bool = False) -> torch.Tensor:
    """DRIFT's batch loss from per-sample NLL (B,) and weights (B,).

    ``mean_i(w_i * nll_i)`` (the release's default), or ``sum_i(w_i * nll_i) / sum_i(w_i)``
    when ``normalise`` (0 when every weight is 0). Plain SFT is this loss with all weights 1.
    The trainer applies the same formula over an optimiser step's whole batch (see
    :class:`~drift_algos.training.objectives.WeightedNLL`).
    """
    if nll.shape != weights.shape:
        raise ValueError(f"nll {tuple(nll.shape)} and weights {tuple(weights.shape)} differ in shape")
    weighted = weights * nll
    if normalise:
        total = weights.sum()
        return weighted.sum() / total if total > 0 else weighted.sum() * 0
    return weighted.mean()


def clipped_policy_terms(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                         clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token, as a loss: ``-min(r A, clip(r, 1-eps, 1+eps) A)`` with ``r = pi/pi_old``.

    All (B, T') -> (loss terms (B, T'), clipped (B, T') bool: where the clipped branch was the minimum and
    differs from the unclipped one, i.e. the token's gradient is cut off).
    """
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T')
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip, 1 + clip) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || pi_ref) per token, ``exp(d) - d - 1`` with ``d = log pi_ref - log pi``.

    Unbiased for samples from pi, never negative, 0 where the policies agree. (B, T') -> (B, T').
    """
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


def clipped_value_terms(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                        clip: float) -> torch.Tensor:
    """PPO's clipped value loss per token, ``0.5 * max((V - G)^2, (V_old + clip(V - V_old, -eps, eps) - G)^2)``."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)

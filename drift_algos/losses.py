"""Losses as pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_nll(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean token negative log-likelihood over each sequence's target tokens.

    logits (B, T, V), input_ids (B, T), loss_mask (B, T) bool -> (B,). Position t predicts
    token t + 1. A sequence without target tokens gets 0.
    """
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_ids = input_ids[:, 1:]  # (B, T-1)
    shift_mask = loss_mask[:, 1:].float()  # (B, T-1)
    nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_ids, reduction="none")  # (B, T-1)
    counts = shift_mask.sum(dim=1)  # (B,)
    return (nll * shift_mask).sum(dim=1) / counts.clamp(min=1)


def weighted_nll_loss(nll: torch.Tensor, weights: torch.Tensor, *, normalise: bool = False) -> torch.Tensor:
    """DRIFT's batch loss from per-sample NLL (B,) and weights (B,).

    ``mean_i(w_i * nll_i)`` (the release's default), or ``sum_i(w_i * nll_i) / sum_i(w_i)``
    when ``normalise`` (0 when every weight is 0). Plain SFT is this loss with all weights 1.
    """
    if nll.shape != weights.shape:
        raise ValueError(f"nll {tuple(nll.shape)} and weights {tuple(weights.shape)} differ in shape")
    weighted = weights * nll
    if normalise:
        total = weights.sum()
        return weighted.sum() / total if total > 0 else weighted.sum() * 0
    return weighted.mean()

"""Trajectory returns and DRIFT's self-normalised importance weights.

Pure float64 arithmetic (the standard library's ``math``), no tensors: the same numbers
come out on every machine, and the functions can be checked by hand.

- Return (as the DRIFT release's ``weight_sft.py`` computes it):
  ``R = sum_t gamma**(t-1) * r_t + format_penalty - repetition_penalty`` with turns ``t1, t2, ...``
  taken in numeric order and ``repetition_penalty = lam * (1 - unique non-empty answers / answers)``.
- Weights within one prompt's group of n trajectories:
  ``w_i = exp(R_i / beta) / ((1/n) * sum_j exp(R_j / beta))``, so the group's mean weight is 1.
  They are computed in log space, shifted by the group's best return: with beta = 0.1 a
  return of 1.0 is exp(10) before normalisation, and a return of 100 would overflow float64.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from drift_envs.base import repetition_penalty

if TYPE_CHECKING:
    from drift_algos.records import Trajectory

_TURN_KEY = re.compile(r"^t(\d+)$")

DEFAULT_GAMMA = 0.9
"""Discount of the released training scripts (the release's code default is 0.7)."""
DEFAULT_BETA = 0.1
"""Temperature of the released training scripts (the release's code default is 0.2)."""
DEFAULT_REPETITION_LAMBDA = 0.5
"""Scale of the repetition penalty in the release."""


def discounted_return(turn_rewards: Mapping[str, float], gamma: float) -> float:
    """``sum_t gamma**(t-1) * r_t`` over keys ``t1, t2, ...`` in numeric order (``t10`` after ``t9``).

    A key that is not ``t<digits>`` raises :class:`ValueError` (the record loader rejects
    such keys too; the release skipped them silently).
    """
    turns: list[tuple[int, float]] = []
    for key, reward in turn_rewards.items():
        match = _TURN_KEY.match(str(key))
        if match is None:
            raise ValueError(f"turn_rewards key {key!r} is not of the form t1, t2, ...")
        turns.append((int(match.group(1)), float(reward)))
    total = 0.0
    # Summed in turn order, term by term, as the release does, so the float results agree exactly.
    for turn, reward in sorted(turns):
        total += gamma ** (turn - 1) * reward
    return total


def trajectory_return(
    record: Trajectory,
    gamma: float = DEFAULT_GAMMA,
    lam: float = DEFAULT_REPETITION_LAMBDA,
    *,
    use_recorded_repetition_penalty: bool = False,
) -> float:
    """The return of one trajectory record.

    By default the repetition penalty is recomputed from ``answer_norms`` with ``lam``, which
    is what the release does and works for release files (they carry no penalty column). With
    ``use_recorded_repetition_penalty`` the environment's own ``repetition_penalty`` is used
    where the record has one (then ``lam`` does not apply to it); records without one fall
    back to the recomputation.
    """
    penalty: float
    if use_recorded_repetition_penalty and record.repetition_penalty is not None:
        recorded = record.repetition_penalty
        if isinstance(recorded, bool) or not isinstance(recorded, (int, float)) or not math.isfinite(recorded):
            raise ValueError(f"field 'repetition_penalty' must be a finite number, got {recorded!r}")
        penalty = float(recorded)
    else:
        penalty = repetition_penalty(record.answer_norms, lam)
    return discounted_return(record.turn_rewards, gamma) + record.format_penalty - penalty


def _check_beta(beta: float) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")


def _shifted_exps(returns: Sequence[float], beta: float) -> list[float] | None:
    """``exp((R_i - R_max) / beta)`` for each member, each in [0, 1]; ``None`` if all returns are equal.

    Differences to the best return are taken before dividing by beta, so no intermediate
    exceeds the float range: a difference that overflows is -inf, whose exp is the correct 0.
    """
    _check_beta(beta)
    values = [float(r) for r in returns]
    for i, value in enumerate(values):
        if math.isnan(value):
            raise ValueError(f"return of group member {i} is NaN; cannot weigh a NaN return")
    if all(value == values[0] for value in values):
        return None
    best = max(values)
    if best == math.inf:
        # The limit of the formula: the members with an infinite return share the whole mass.
        return [1.0 if value == math.inf else 0.0 for value in values]
    return [math.exp((value - best) / beta) for value in values]


def group_weights(returns: Sequence[float], beta: float) -> list[float]:
    """Self-normalised weights ``exp(R_i/beta) / mean_j exp(R_j/beta)`` of one group (mean 1).

    Equal returns (including a group of one) give exactly 1 each; an empty group gives ``[]``;
    a NaN return raises :class:`ValueError`. ``+inf`` returns share the group's mass equally,
    ``-inf`` returns get 0.
    """
    if not returns:
        return []
    exps = _shifted_exps(returns, beta)
    if exps is None:
        return [1.0] * len(returns)
    # The best member contributes exp(0) = 1, so the sum is in [1, n]: no division by ~0.
    total = math.fsum(exps)
    n = len(exps)
    return [n * e / total for e in exps]


def group_log_weights(returns: Sequence[float], beta: float) -> list[float]:
    """``log`` of :func:`group_weights`, via log-sum-exp (``-inf`` for a weight of 0)."""
    if not returns:
        return []
    exps = _shifted_exps(returns, beta)
    if exps is None:
        return [0.0] * len(returns)
    values = [float(r) for r in returns]
    best = max(values)
    log_norm = math.log(math.fsum(exps)) - math.log(len(values))
    if best == math.inf:
        return [-log_norm if value == math.inf else -math.inf for value in values]
    return [(value - best) / beta - log_norm for value in values]


def effective_sample_size(weights: Sequence[float]) -> float:
    """Kish's effective sample size ``(sum w)**2 / sum w**2``: n for equal weights, 1 when one member has all.

    0 for no weights or all-zero weights; negative or non-finite weights raise :class:`ValueError`.
    """
    values = [float(w) for w in weights]
    for value in values:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weights must be finite and >= 0, got {value!r}")
    squares = math.fsum(v * v for v in values)
    if squares == 0.0:
        return 0.0
    return math.fsum(values) ** 2 / squares


@dataclass
class WeightStats:
    """Summary of a weighted trajectory set, for judging whether the weights are usable."""

    num_trajectories: int
    """Trajectories weighed."""
    num_groups: int
    """Prompt groups (distinct ``prompt_id``s)."""
    ess_mean: float
    """Mean over groups of the group's effective sample size (n for uniform weights, 1 for one dominant member)."""
    ess_min: float
    """Smallest group effective sample size."""
    ess_fraction_mean: float
    """Mean over groups of ESS / group size, in (0, 1]."""
    ess_overall: float
    """Effective sample size of all weights together."""
    ess_overall_fraction: float
    """``ess_overall / num_trajectories``: the share of the data that effectively carries the loss."""
    weight_min: float
    """Smallest weight."""
    weight_max: float
    """Largest weight (at most the largest group size)."""
    weight_mean: float
    """Mean weight (1 up to rounding, since each group's mean is 1)."""
    return_mean: float
    """Mean return."""
    return_min: float
    """Smallest return."""
    return_max: float
    """Largest return."""
    equal_return_group_share: float
    """Share of groups whose returns are all equal: their weights are all 1, so they add no preference signal."""
    no_success_group_share: float | None
    """Share of groups in which no trajectory succeeded; ``None`` when success is unknown."""
    single_trajectory_groups: int = 0
    """Groups of one trajectory: weight exactly 1, no comparison within the group (counted, not an error)."""
    empty_last_replies: int = 0
    """Trajectories whose last assistant message is blank: weighed with their group, not trained on (counted)."""

    @classmethod
    def from_groups(
        cls,
        returns_by_group: Sequence[Sequence[float]],
        weights_by_group: Sequence[Sequence[float]],
        success_by_group: Sequence[Sequence[bool]] | None = None,
    ) -> WeightStats:
        """Statistics of groups given as parallel lists (one inner list per group)."""
        if len(returns_by_group) != len(weights_by_group):
            raise ValueError("returns_by_group and weights_by_group must have the same number of groups")
        if not returns_by_group:
            raise ValueError("no trajectories to summarise")
        for returns, weights in zip(returns_by_group, weights_by_group, strict=True):
            if not returns or len(returns) != len(weights):
                raise ValueError("each group needs at least one return and one weight per return")
        if success_by_group is not None and [len(s) for s in success_by_group] != [len(r) for r in returns_by_group]:
            raise ValueError("success_by_group must have the shape of returns_by_group")
        ess_sizes = [(effective_sample_size(w), len(w)) for w in weights_by_group]
        all_returns = [float(r) for group in returns_by_group for r in group]
        all_weights = [float(w) for group in weights_by_group for w in group]
        num_groups = len(returns_by_group)
        ess_overall = effective_sample_size(all_weights)
        no_success: float | None = None
        if success_by_group is not None:
            no_success = sum(1 for s in success_by_group if not any(s)) / num_groups
        return cls(
            num_trajectories=len(all_weights),
            num_groups=num_groups,
            ess_mean=math.fsum(e for e, _ in ess_sizes) / num_groups,
            ess_min=min(e for e, _ in ess_sizes),
            ess_fraction_mean=math.fsum(e / n for e, n in ess_sizes) / num_groups,
            ess_overall=ess_overall,
            ess_overall_fraction=ess_overall / len(all_weights),
            weight_min=min(all_weights),
            weight_max=max(all_weights),
            weight_mean=math.fsum(all_weights) / len(all_weights),
            return_mean=math.fsum(all_returns) / len(all_returns),
            return_min=min(all_returns),
            return_max=max(all_returns),
            equal_return_group_share=sum(1 for g in returns_by_group if all(r == g[0] for r in g)) / num_groups,
            no_success_group_share=no_success,
            single_trajectory_groups=sum(1 for g in returns_by_group if len(g) == 1),
        )

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

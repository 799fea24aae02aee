"""Weighing a trajectory set: each trajectory's return and its DRIFT weight within its prompt group.

:func:`weigh` works on records in memory; :func:`weigh_file` turns a JSONL trajectory file
(drift's or the DRIFT release's) into the same file with ``return`` and ``weight`` columns,
which weighted SFT trains on. Weighing needs no model: a different ``beta`` or ``gamma`` is a
new weighing of the same rollouts.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from drift_algos.records import Trajectory, iter_rows
from drift_algos.returns import (
    DEFAULT_BETA,
    DEFAULT_GAMMA,
    DEFAULT_REPETITION_LAMBDA,
    WeightStats,
    group_weights,
    trajectory_return,
)
from drift_envs.loading import DataError

logger = logging.getLogger(__name__)

RETURN_COLUMN = "return"
"""Column the weighted file stores each trajectory's return in."""
WEIGHT_COLUMN = "weight"
"""Column the weighted file stores each trajectory's weight in (the release's trainer reads this name)."""


@dataclass
class WeighConfig:
    """How returns and weights are computed."""

    gamma: float = DEFAULT_GAMMA
    """Discount per turn: a success at turn t earns ``gamma**(t-1)``; in [0, 1]."""
    beta: float = DEFAULT_BETA
    """KL temperature: weights are ``exp(R/beta)`` normalised per group; smaller is greedier; > 0."""
    repetition_lambda: float = DEFAULT_REPETITION_LAMBDA
    """Scale of the repetition penalty recomputed from ``answer_norms``; >= 0."""
    use_recorded_repetition_penalty: bool = False
    """Use a record's own ``repetition_penalty`` (the environment's value) where it has one, instead of
    recomputing it from ``answer_norms``. Off by default: recomputing is what the release does and the only
    option for release files, which carry no penalty column."""

    def __post_init__(self) -> None:
        for name in ("gamma", "beta", "repetition_lambda"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.repetition_lambda < 0:
            raise ValueError(f"repetition_lambda must be >= 0, got {self.repetition_lambda}")

    def return_of(self, record: Trajectory) -> float:
        """The record's return under this configuration."""
        return trajectory_return(
            record,
            self.gamma,
            self.repetition_lambda,
            use_recorded_repetition_penalty=self.use_recorded_repetition_penalty,
        )


def weigh(
    records: Sequence[Trajectory], cfg: WeighConfig | None = None
) -> tuple[list[float], list[float], WeightStats]:
    """Returns, weights (both in the order of ``records``) and statistics; groups are ``prompt_id``s.

    Raises :class:`ValueError` for no records or a non-finite return.
    """
    cfg = cfg or WeighConfig()
    if not records:
        raise ValueError("no trajectories to weigh")
    returns = []
    for index, record in enumerate(records):
        value = cfg.return_of(record)
        if not math.isfinite(value):
            raise ValueError(
                f"trajectory {index} (prompt_id {record.prompt_id!r}) has return {value}; rewards must be finite"
            )
        returns.append(value)
    weights, stats = _weigh_returns([r.prompt_id for r in records], returns, [r.success for r in records], cfg.beta)
    stats.empty_last_replies = sum(r.empty_last_reply for r in records)
    return returns, weights, stats


def weigh_file(in_path: str | Path, out_path: str | Path, cfg: WeighConfig | None = None) -> WeightStats:
    """Write ``in_path``'s rows to ``out_path`` with ``return`` and ``weight`` set, and summarise the weights.

    Every other field of every row is written back unchanged (a release file gains just the two
    columns; a weighted file weighed again has them replaced). Rows are validated as
    :class:`Trajectory` records, so a bad row raises :class:`DataError` naming ``file:line`` and the
    field. A regular file is read twice rather than held in memory (a pipe is held), and the output is written to a
    temporary file first, so ``out_path`` may equal ``in_path`` and an error leaves no partial file.
    A missing output directory raises :class:`FileNotFoundError`; an output path that is a directory,
    :class:`IsADirectoryError`.
    """
    cfg = cfg or WeighConfig()
    in_path, out_path = Path(in_path), Path(out_path)
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {out_path.parent}")
    if out_path.is_dir():
        raise IsADirectoryError(f"output path is a directory: {out_path}")

    prompt_ids: list[str] = []
    returns: list[float] = []
    successes: list[bool] = []
    empty = 0
    # A pipe or /dev/stdin can be read only once: keep its rows; a regular file is read again instead.
    kept: list[tuple[str, dict]] | None = None if in_path.is_file() else []
    for where, row in iter_rows(in_path):
        if kept is not None:
            kept.append((where, row))
        record = Trajectory.from_dict(row, where)
        try:
            value = cfg.return_of(record)
        except ValueError as err:
            raise DataError(f"{where}: {err}") from None
        if not math.isfinite(value):
            raise DataError(f"{where}: return is {value}; turn_rewards and penalties must be finite")
        prompt_ids.append(record.prompt_id)
        returns.append(value)
        successes.append(record.success)
        empty += record.empty_last_reply
    if not returns:
        raise DataError(f"{in_path}: no trajectories")
    weights, stats = _weigh_returns(prompt_ids, returns, successes, cfg.beta)
    stats.empty_last_replies = empty

    # A sibling temporary file (created with the usual permissions, unlike tempfile's 0600), renamed into place.
    temporary = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            count = 0
            for where, row in iter_rows(in_path) if kept is None else kept:
                if count >= len(weights):
                    raise DataError(f"{where}: {in_path} changed while it was being weighed")
                # Assigning keeps an existing column's position and appends a new one at the end.
                row[RETURN_COLUMN] = returns[count]
                row[WEIGHT_COLUMN] = weights[count]
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
            if count != len(weights):
                raise DataError(f"{in_path}: changed while it was being weighed")
        os.replace(temporary, out_path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    logger.info(
        "weighed %d trajectories in %d groups (gamma=%s, beta=%s) -> %s",
        stats.num_trajectories,
        stats.num_groups,
        cfg.gamma,
        cfg.beta,
        out_path,
    )
    return stats


def default_output_path(in_path: str | Path) -> Path:
    """``runs/x.jsonl`` -> ``runs/x.weighted.jsonl``."""
    return Path(in_path).with_suffix(".weighted.jsonl")


def stats_path_for(out_path: str | Path) -> Path:
    """Where the statistics of a weighted file go: ``OUT.stats.json`` next to it."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".stats.json")


def _weigh_returns(
    prompt_ids: Sequence[str], returns: Sequence[float], successes: Sequence[bool], beta: float
) -> tuple[list[float], WeightStats]:
    """Weights in input order, and the statistics, for returns grouped by prompt id."""
    groups: dict[str, list[int]] = {}
    for index, prompt_id in enumerate(prompt_ids):
        groups.setdefault(prompt_id, []).append(index)
    weights = [0.0] * len(returns)
    returns_by_group, weights_by_group, success_by_group = [], [], []
    for indices in groups.values():
        group_returns = [returns[i] for i in indices]
        group_w = group_weights(group_returns, beta)
        for i, w in zip(indices, group_w, strict=True):
            weights[i] = w
        returns_by_group.append(group_returns)
        weights_by_group.append(group_w)
        success_by_group.append([successes[i] for i in indices])
    stats = WeightStats.from_groups(returns_by_group, weights_by_group, success_by_group)
    return weights, stats

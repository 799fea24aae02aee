"""The trajectory record and its JSONL store.

One JSON object per line, in the DRIFT release's schema (``prompt_id``, ``gold``,
``messages``, ``verifier``, ``turn_rewards``, ``reward_details``, ``t_star``,
``answer_norms``, ``format_penalty``) plus drift's own fields. Files load with
``datasets.load_dataset("json", data_files=path)``; release files load here too (drift's
fields take their defaults).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drift_envs.loading import DataError, iter_jsonl

_TURN_KEY = re.compile(r"^t(\d+)$")
ROLES = ("system", "user", "assistant")


@dataclass
class Sampling:
    """Sampling settings a trajectory was generated with."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int = 512
    """Token limit per turn."""


@dataclass
class Trajectory:
    """One episode: the conversation and how it was scored."""

    prompt_id: str
    """Problem id; trajectories with the same ``prompt_id`` form a group."""
    messages: list[dict[str, str]]
    """The conversation, ``{"role", "content"}`` dicts, ending with the last assistant reply."""
    verifier: dict[str, int]
    """``{"t1": 0/1, ...}``: success per turn (padded with 0 up to the turn limit)."""
    turn_rewards: dict[str, float]
    """``{"t1": r_1, ...}``: per-turn reward, padded with 0 up to the turn limit."""
    gold: str = ""
    """Reference answer."""
    reward_details: dict[str, Any] = field(default_factory=dict)
    """Per-turn details, ``{"t1": {"env_reward", "format_penalty", "actions", "success"}, ...}``."""
    t_star: int | None = None
    """First correct turn (1-based), ``None`` if never correct."""
    answer_norms: list[str] = field(default_factory=list)
    """Normalised answers given, in order."""
    format_penalty: float = 0.0
    """Sum of format penalties (<= 0)."""
    # drift's own fields
    env_id: str = ""
    """Gymnasium id of the environment."""
    model: str = ""
    """Model that generated the replies."""
    sampling: Sampling = field(default_factory=Sampling)
    """Sampling settings."""
    seed: int | None = None
    """Seed of the rollout run."""
    sample_index: int = 0
    """Index of this trajectory within its group."""
    group_index: int | None = None
    """Index of its group within the rollout run (what resume, shards and merge key on)."""
    turn_tokens: list[int] = field(default_factory=list)
    """Generated tokens per turn."""
    turn_logprobs: list[float | None] = field(default_factory=list)
    """Sum of the sampled tokens' log-probabilities per turn (``None`` where the engine gives none)."""
    turn_prompt_ids: list[list[int]] = field(default_factory=list)
    """Per turn, the prompt token ids the engine saw (recorded when ``RolloutConfig.record_token_ids``)."""
    turn_completion_ids: list[list[int]] = field(default_factory=list)
    """Per turn, the token ids the engine generated (recorded when ``RolloutConfig.record_token_ids``)."""
    repetition_penalty: float | None = None
    """Repetition penalty the environment charged; ``None``: recompute from ``answer_norms``."""
    success: bool = False
    """Solved within the limits."""

    @property
    def num_turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "assistant")

    @property
    def outcome(self) -> list[bool]:
        """Success per turn taken (the input of :mod:`drift_algos.evaluation.metrics`)."""
        return [bool(self.verifier.get(f"t{t}", 0)) for t in range(1, self.num_turns + 1)]

    @property
    def empty_last_reply(self) -> bool:
        """Whether the last assistant message is blank (a model can end its reply at once): such a trajectory is
        weighed with its group, but offline algorithms leave it out of training (nothing to learn from) and count
        it (``SampleSet.empty_replies``)."""
        return not self.messages[-1]["content"].strip()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any], where: str = "<record>") -> Trajectory:
        """Validate a row (ours or the release's) and build a record; errors name ``where`` and the field."""

        def need(name: str, types: type | tuple[type, ...]) -> Any:
            if name not in row or row[name] is None:
                raise DataError(f"{where}: {name}: missing field")
            if not isinstance(row[name], types) or isinstance(row[name], bool):
                raise DataError(f"{where}: {name}: must be {_names(types)}, got {type(row[name]).__name__}")
            return row[name]

        prompt_id = need("prompt_id", (str, int))
        if str(prompt_id) == "":
            raise DataError(f"{where}: prompt_id: is empty")
        messages = need("messages", list)
        for i, message in enumerate(messages):
            ok = isinstance(message, dict) and message.get("role") in ROLES and isinstance(message.get("content"), str)
            if not ok:
                raise DataError(f"{where}: messages[{i}]: must be {{role: system|user|assistant, content: str}}")
        if not messages or messages[-1]["role"] != "assistant":
            # Training targets the assistant turns; a trailing user turn would be caught only after the model loads.
            raise DataError(f"{where}: messages: must end with an assistant message")
        turn_rewards = _turn_dict(need("turn_rewards", dict), "turn_rewards", where, float)
        verifier_raw = row.get("verifier") or {}
        if not isinstance(verifier_raw, dict):
            raise DataError(f"{where}: verifier: must be an object {{t1: 0/1, ...}}")
        verifier = _turn_dict(verifier_raw, "verifier", where, int)
        fp = row.get("format_penalty", row.get("trajectory_penalty", 0.0)) or 0.0
        fp = _finite(fp, "format_penalty", where)
        if fp > 0:
            # A penalty is never a bonus: a positive value would take its group's whole weight.
            raise DataError(f"{where}: format_penalty: must be <= 0, got {fp:g}")
        norms = row.get("answer_norms") or []
        if not isinstance(norms, list):
            raise DataError(f"{where}: answer_norms: must be a list")
        sampling = row.get("sampling") or {}
        if not isinstance(sampling, dict):
            raise DataError(f"{where}: sampling: must be an object")
        t_star = row.get("t_star")
        if t_star is not None and (isinstance(t_star, bool) or not isinstance(t_star, int) or t_star < 1):
            raise DataError(f"{where}: t_star: must be a turn number >= 1 or null, got {t_star!r}")
        success = row.get("success", t_star is not None)
        if not isinstance(success, bool):
            # "false" is a truthy string: accepting it would count a failure as solved.
            raise DataError(f"{where}: success: must be true or false, got {success!r}")
        repetition = row.get("repetition_penalty")
        if repetition is not None:
            repetition = _finite(repetition, "repetition_penalty", where)
            if repetition < 0:
                raise DataError(f"{where}: repetition_penalty: must be >= 0, got {repetition:g}")
        for name in ("turn_tokens", "turn_logprobs"):
            if not isinstance(row.get(name) or [], list):
                raise DataError(f"{where}: {name}: must be a list")
        seed = row.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise DataError(f"{where}: seed: must be an integer or null, got {seed!r}")
        sample_index = row.get("sample_index") or 0
        if isinstance(sample_index, bool) or not isinstance(sample_index, int):
            raise DataError(f"{where}: sample_index: must be an integer, got {sample_index!r}")
        group_index = row.get("group_index")
        if group_index is not None and (isinstance(group_index, bool) or not isinstance(group_index, int)):
            raise DataError(f"{where}: group_index: must be an integer or null, got {group_index!r}")
        reward_details = row.get("reward_details") or {}
        if not isinstance(reward_details, dict):
            raise DataError(f"{where}: reward_details: must be an object")
        try:
            known = ("temperature", "top_p", "max_new_tokens")
            sampling_cfg = Sampling(**{k: v for k, v in sampling.items() if k in known})
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: sampling: {err}") from None
        return cls(
            prompt_id=str(prompt_id),
            messages=[{"role": m["role"], "content": m["content"]} for m in messages],
            verifier=verifier,
            turn_rewards=turn_rewards,
            gold=str(row.get("gold") or ""),
            reward_details=reward_details,
            t_star=t_star,
            answer_norms=[str(a) if a is not None else "" for a in norms],
            format_penalty=fp,
            env_id=str(row.get("env_id") or ""),
            model=str(row.get("model") or ""),
            sampling=sampling_cfg,
            seed=seed,
            sample_index=sample_index,
            group_index=group_index,
            turn_tokens=list(row.get("turn_tokens") or []),
            turn_logprobs=list(row.get("turn_logprobs") or []),
            turn_prompt_ids=_id_lists(row.get("turn_prompt_ids"), "turn_prompt_ids", where),
            turn_completion_ids=_id_lists(row.get("turn_completion_ids"), "turn_completion_ids", where),
            repetition_penalty=repetition,
            success=success,
        )


def _names(types: type | tuple[type, ...]) -> str:
    return types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)


def _finite(value: Any, name: str, where: str) -> float:
    """``value`` as a finite float, or a :class:`DataError` (NaN, infinities and integers beyond float range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: {name}: must be a number, got {value!r}"[:300])
    try:
        number = float(value)
    except OverflowError:
        raise DataError(f"{where}: {name}: number too large ({len(str(abs(value)))} digits)") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: {name}: must be finite, got {number}")
    return number


def _turn_dict(value: dict, name: str, where: str, kind: type) -> dict:
    out = {}
    for key, item in value.items():
        if not _TURN_KEY.match(str(key)):
            raise DataError(f"{where}: {name}: has key {key!r}; expected t1, t2, ...")
        if kind is int and isinstance(item, bool):
            item = int(item)
        out[str(key)] = kind(_finite(item, f"{name}.{key}", where))
    return dict(sorted(out.items(), key=lambda kv: int(kv[0][1:])))


class TrajectoryWriter:
    """Streams records to a JSONL file, one line each, so an interrupted run keeps what it made.

    Each line goes to the file in one unbuffered ``os.write`` of the whole encoded line: a
    process killed with SIGKILL leaves whole lines, and at most the last one cut short if the
    kernel stopped mid-write (the collection reader drops such a line).
    """

    def __init__(self, path: str | Path, *, append: bool = False):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"output directory does not exist: {self.path.parent}")
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        self._fd: int | None = os.open(self.path, flags, 0o644)
        self.count = 0

    def write(self, record: Trajectory | dict[str, Any]) -> None:
        data = record.to_dict() if isinstance(record, Trajectory) else record
        line = memoryview((json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8"))
        while line:  # os.write may write less than asked (rare for regular files)
            line = line[os.write(self._fd, line):]
        self.count += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _id_lists(value: Any, name: str, where: str) -> list[list[int]]:
    """An optional list of token-id lists (absent in older files: empty)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(ids, list) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids) for ids in value):
        raise DataError(f"{where}: field '{name}' must be a list of token-id lists")
    return [list(ids) for ids in value]


def iter_rows(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each JSON line; a malformed line raises :class:`DataError` naming it."""
    for row in iter_jsonl(path):
        yield row.where, dict(row.data)


def read_trajectories(path: str | Path) -> list[Trajectory]:
    """All records of a JSONL file, validated."""
    records = [Trajectory.from_dict(row, where) for where, row in iter_rows(path)]
    if not records:
        raise DataError(f"{path}: no trajectories")
    return records


def write_trajectories(path: str | Path, records: Iterable[Trajectory | dict[str, Any]]) -> int:
    with TrajectoryWriter(path) as writer:
        for record in records:
            writer.write(record)
        return writer.count

"""Collecting rollouts that survive crashes and spread over machines: resume, shards, merge.

A collection is ``num_prompts`` groups of ``n`` trajectories. Group ``g`` is always the same
problem with the same seeds (the agent seeds each episode and turn from the run's seed, the
group index and the sample index), so the groups can be collected in any order, by any
number of processes, and interrupted at any point:

- **resume**: a file's complete groups are kept, its partial groups and a torn last line
  (a process killed mid-write) are dropped, and only the missing groups are run again;
- **shards**: ``--shard I/K`` collects the groups ``g`` with ``g % K == I``;
- **merge**: shards of one collection become one file, after checking that they share one
  configuration and together hold every group exactly once.

Each output ``OUT.jsonl`` has a sidecar ``OUT.meta.json`` (:class:`CollectionMeta`) written
before the first record, which resume and merge compare field by field.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from drift_algos.records import Trajectory
from drift_envs.loading import DataError


@dataclass(frozen=True)
class Shard:
    """Share ``index`` of ``count`` of a collection's groups."""

    index: int = 0
    """Which share, ``0 <= index < count``."""
    count: int = 1
    """Number of shares."""

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard must be I/K with 0 <= I < K, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"1/4"`` -> ``Shard(1, 4)``."""
        index, sep, count = text.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"--shard expects I/K (e.g. 0/4), got {text!r}")
        return cls(int(index), int(count))

    def groups(self, num_groups: int) -> list[int]:
        """This shard's group indices, in order."""
        return list(range(self.index, num_groups, self.count))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class CollectionMeta:
    """What a collection is: every setting that decides its trajectories."""

    env_id: str
    """Gymnasium id of the environment."""
    env_args: dict[str, Any]
    """Environment constructor arguments."""
    model: str
    """Model spec that generated the replies."""
    temperature: float
    """Sampling temperature."""
    top_p: float
    """Nucleus sampling mass."""
    max_new_tokens: int
    """Token limit per turn."""
    seed: int
    """Seed of the run."""
    num_prompts: int
    """Groups in the whole collection (all shards)."""
    n: int
    """Trajectories per group."""
    problems: list[int | None]
    """Problem index of each group (``None``: drawn by the environment from its seed)."""
    shard: str = "0/1"
    """Which share of the groups this file holds."""

    @staticmethod
    def path_for(out: str | Path) -> Path:
        """``x.jsonl`` -> ``x.meta.json``."""
        return Path(out).with_suffix(".meta.json")

    def save(self, out: str | Path) -> Path:
        path = self.path_for(out)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, out: str | Path) -> CollectionMeta:
        path = cls.path_for(out)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{path}: missing (the collection's settings; written by drift rollout)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
        names = {f.name for f in fields(cls)}
        missing = names - set(data)
        if missing:
            raise DataError(f"{path}: missing field '{sorted(missing)[0]}'")
        return cls(**{k: v for k, v in data.items() if k in names})

    def differences(self, other: CollectionMeta, *, ignore: tuple[str, ...] = ()) -> list[str]:
        """Fields whose values differ (JSON-normalised, so tuples equal lists)."""
        mine, theirs = json.loads(json.dumps(asdict(self))), json.loads(json.dumps(asdict(other)))
        return [name for name in mine if name not in ignore and mine[name] != theirs[name]]


@dataclass
class Scan:
    """What an interrupted collection file holds."""

    complete: dict[int, list[str]]
    """Group index -> its ``n`` lines (raw JSON), for the groups with every sample."""
    partial_rows: int
    """Rows of groups that were not finished (dropped; the group runs again)."""
    torn_lines: int
    """A last line cut short by a kill (dropped)."""


def scan(path: str | Path, n: int) -> Scan:
    """Read a collection file written by an interrupted run; keep whole groups only."""
    rows: dict[int, dict[int, str]] = defaultdict(dict)
    torn = 0
    raw = Path(path).read_bytes() if Path(path).exists() else b""
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if number == len(lines):  # only the last line can be torn by a kill; anything else is corruption
                torn += 1
                continue
            raise DataError(f"{path}:{number}: invalid JSON (not a collection drift rollout wrote?)") from None
        record = Trajectory.from_dict(data, f"{path}:{number}")
        if record.group_index is None:
            raise DataError(f"{path}:{number}: field 'group_index' missing (written by an older drift?)")
        rows[record.group_index][record.sample_index] = line.decode("utf-8")
    complete = {g: [samples[k] for k in sorted(samples)] for g, samples in rows.items() if len(samples) == n}
    partial = sum(len(samples) for g, samples in rows.items() if g not in complete)
    return Scan(complete, partial, torn)


def rewrite_complete(path: str | Path, found: Scan) -> None:
    """Rewrite ``path`` with only its complete groups (atomically: a temporary file renamed into place)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for group in sorted(found.complete):
            for line in found.complete[group]:
                handle.write(line + "\n")
    os.replace(temporary, path)


@dataclass
class Pending:
    """What a collection still owes, from :func:`open_collection`."""

    groups: list[int]
    """Group indices still to collect, in order."""
    found: Scan | None
    """What a resumed file held (``None``: a fresh collection)."""


def open_collection(out: str | Path, meta: CollectionMeta, *, resume: bool) -> Pending:
    """Get ``out`` ready to collect ``meta``'s share of groups, and say which groups are left.

    Fresh: ``out`` must not hold records (it is never overwritten); the meta file is written first. Resumed:
    ``out``'s meta file must match ``meta`` field by field; the file is rewritten with its complete groups only
    (partial groups and a torn last line dropped) and those groups are not collected again. Records then go to
    ``out`` appended (``TrajectoryWriter(out, append=True)``).
    """
    out = Path(out)
    groups = Shard.parse(meta.shard).groups(meta.num_prompts)
    if not resume:
        if out.exists() and out.stat().st_size > 0:
            raise FileExistsError(f"{out} already exists: finish it with --resume, or choose another --out")
        meta.save(out)
        return Pending(groups, None)
    if not out.exists():
        raise FileNotFoundError(f"--resume: {out} does not exist (nothing to resume)")
    saved = CollectionMeta.load(out)
    diff = saved.differences(meta)
    if diff:
        name = diff[0]
        raise ValueError(f"--resume: {CollectionMeta.path_for(out)} has another '{name}' ({getattr(saved, name)!r}, "
                         f"now {getattr(meta, name)!r})")
    found = scan(out, meta.n)
    rewrite_complete(out, found)
    return Pending([g for g in groups if g not in found.complete], found)


def merge(shards: list[Path], out: Path) -> tuple[CollectionMeta, int]:
    """Merge shard files into ``out`` (groups in order); returns the merged meta and the row count.

    Refuses, with a :class:`DataError` naming the shard file and the field: a shard whose
    settings differ from the first's, a group in two shards (or twice in one), a group with
    missing or repeated samples, and groups that no shard holds.
    """
    if not shards:
        raise ValueError("drift merge needs at least one shard file")
    metas = [CollectionMeta.load(path) for path in shards]
    first = metas[0]
    for path, meta in zip(shards[1:], metas[1:], strict=True):
        diff = meta.differences(first, ignore=("shard",))
        if diff:
            name = diff[0]
            raise DataError(f"{path}: field '{name}' is {getattr(meta, name)!r}, but {shards[0]} has "
                            f"{getattr(first, name)!r}: shards of different collections")
    owner: dict[int, Path] = {}
    lines: dict[int, list[str]] = {}
    for path in shards:
        groups: dict[int, dict[int, str]] = defaultdict(dict)
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = Trajectory.from_dict(json.loads(line), f"{path}:{number}")
            except json.JSONDecodeError:
                raise DataError(f"{path}:{number}: invalid JSON (an unfinished shard? finish it with "
                                "drift rollout --resume)") from None
            g = record.group_index
            if g is None or not 0 <= g < first.num_prompts:
                raise DataError(f"{path}:{number}: field 'group_index' is {g!r}, outside 0..{first.num_prompts - 1}")
            if g in owner and owner[g] != path:
                raise DataError(f"{path}:{number}: field 'group_index': group {g} is also in {owner[g]}")
            if record.sample_index in groups[g]:
                raise DataError(f"{path}:{number}: field 'sample_index': sample {record.sample_index} of group {g} "
                                "appears twice")
            groups[g][record.sample_index] = line
            owner[g] = path
        for g, samples in groups.items():
            if sorted(samples) != list(range(first.n)):
                raise DataError(f"{path}: field 'sample_index': group {g} has samples {sorted(samples)}, expected "
                                f"0..{first.n - 1} (an unfinished shard? finish it with drift rollout --resume)")
            lines[g] = [samples[k] for k in range(first.n)]
    missing = [g for g in range(first.num_prompts) if g not in lines]
    if missing:
        raise DataError(f"{out}: groups {missing[:5]}{'...' if len(missing) > 5 else ''} are in none of the "
                        f"{len(shards)} shards (field 'group_index'; expected 0..{first.num_prompts - 1})")
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for g in range(first.num_prompts):
            for line in lines[g]:
                handle.write(line + "\n")
    os.replace(temporary, out)
    merged = CollectionMeta(**{**asdict(first), "shard": "0/1"})
    merged.save(out)
    return merged, first.num_prompts * first.n

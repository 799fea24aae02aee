"""Reading problem tables from local files or the Hugging Face Hub, with errors that
name the file, the line and the field.

Local JSON Lines files are read line by line here (so a malformed line is reported by
number); JSON, Parquet and CSV go through ``datasets``; anything that is not an existing
path is treated as a Hub dataset id.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    """Bad input data; the message names the file (or dataset), the line and the field."""


@dataclass(frozen=True)
class Row:
    """One record of a table and where it came from."""

    where: str
    """``path:line`` for local files (1-based line), ``dataset[split]#index`` for the Hub."""
    data: Mapping[str, Any]
    """The record's fields."""

    def get(self, field: str, *, types: type | tuple[type, ...] = str) -> Any:
        """The field's value, or a :class:`DataError` naming the place and the field."""
        if field not in self.data:
            raise DataError(f"{self.where}: missing field '{field}' (fields: {sorted(self.data)})")
        value = self.data[field]
        if not isinstance(value, types):
            names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
            raise DataError(f"{self.where}: field '{field}' must be {names}, got {type(value).__name__}")
        return value

    def first(self, *fields: str, types: type | tuple[type, ...] = str) -> Any:
        """The first of ``fields`` that is present (for sources that name a column differently)."""
        for name in fields:
            if name in self.data:
                return self.get(name, types=types)
        raise DataError(f"{self.where}: missing field, expected one of {list(fields)} (fields: {sorted(self.data)})")


def iter_jsonl(path: str | Path) -> Iterator[Row]:
    """Records of a JSON Lines file (``.gz`` compressed or not), each with its ``path:line``.

    A malformed line raises :class:`DataError` naming the file and the line.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: invalid JSON ({err.msg} at column {err.colno})") from None
                except RecursionError:
                    raise DataError(f"{path}:{number}: invalid JSON (nested too deeply)") from None
                except ValueError as err:  # e.g. an integer past Python's digit limit
                    raise DataError(f"{path}:{number}: invalid JSON ({str(err).splitlines()[0]})") from None
                if not isinstance(data, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object, got {type(data).__name__}")
                yield Row(f"{path}:{number}", data)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, UnicodeDecodeError) as err:  # not gzip, truncated, binary
        raise DataError(f"{path}: cannot read as JSON Lines: {err}") from None


def _read_with_datasets(path: Path, fmt: str) -> Iterator[Row]:
    import datasets

    try:
        table = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except Exception as err:  # datasets raises many types; all mean "cannot read this file"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot read as {fmt}: {first}") from None
    for index, data in enumerate(table):
        # Row numbers: JSON arrays and Parquet have no lines; CSV line = header + index.
        where = f"{path}:{index + 2}" if fmt == "csv" else f"{path}#{index}"
        yield Row(where, data)


def _read_hub(dataset_id: str, *, name: str | None, split: str) -> Iterator[Row]:
    import datasets

    try:
        table = datasets.load_dataset(dataset_id, name, split=split)
    except Exception as err:
        text = str(err)
        hint = ""
        if "gated" in text.lower() or "401" in text or "403" in text:
            hint = " (the dataset is gated: accept its terms on the Hub and set HF_TOKEN)"
        first = text.splitlines()[0] if text else type(err).__name__
        raise DataError(f"cannot load dataset '{dataset_id}' (split '{split}'){hint}: {first}") from None
    for index, data in enumerate(table):
        yield Row(f"{dataset_id}[{split}]#{index}", data)


def looks_like_path(spec: str) -> bool:
    """A spec meant as a local file: it exists, or has a file suffix or a path prefix."""
    return Path(spec).exists() or Path(spec).suffix in _LOCAL_FORMATS or spec.startswith(("/", "./", "../", "~"))


def read_rows(spec: str, *, split: str = "train", name: str | None = None, limit: int | None = None) -> list[Row]:
    """Rows of a local file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``) or a Hub dataset.

    ``split`` and ``name`` (the dataset configuration) apply to Hub datasets only.
    """
    path = Path(spec).expanduser()
    if looks_like_path(spec):
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        fmt = _LOCAL_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"{path}: unsupported file type '{path.suffix}' (use .jsonl, .json, .parquet or .csv)")
        rows = iter_jsonl(path) if path.suffix.lower() == ".jsonl" else _read_with_datasets(path, fmt)
    else:
        rows = _read_hub(spec, name=name, split=split)
    out: list[Row] = []
    for row in rows:
        if limit is not None and len(out) >= limit:
            break
        out.append(row)
    if not out:
        raise DataError(f"{spec}: no records")
    return out


T = TypeVar("T")


@dataclass(frozen=True)
class HubSource(Generic[T]):
    """How one dataset (on the Hub, or a local file with its columns) becomes problems."""

    name: str
    """Source name (``gsm8k``, ``gpqa``, ...): the ``source`` of its problems and the prefix of their ids."""
    hub_id: str
    """Hub dataset read when no path is given."""
    hub_config: str | None
    """Configuration of :attr:`hub_id` (``None``: the default one)."""
    hub_splits: tuple[str, ...]
    """Splits :attr:`hub_id` has; asking for another fails before any download."""
    convert: Callable[[Row], T]
    """Reads one record (a loader may let it return ``None`` to leave the record out); raises
    :class:`DataError` naming the record and the field."""
    gated: bool = False
    """The Hub dataset needs its terms accepted and a token."""

    def locate(self, path: str | None, split: str) -> SourceLocation:
        """Where to read: ``path`` or the default Hub id; a split the default dataset lacks fails here."""
        spec = path or self.hub_id
        local = looks_like_path(spec)
        default_hub = not local and spec == self.hub_id
        if default_hub and split not in self.hub_splits:
            raise DataError(f"{self.hub_id} has no split '{split}' (it has: {', '.join(self.hub_splits)})")
        return SourceLocation(spec, local, default_hub)


@dataclass(frozen=True)
class SourceLocation:
    """Where a source's records are read from."""

    spec: str
    """Local path or Hub dataset id."""
    local: bool
    """A local file."""
    default_hub: bool
    """The source's own Hub dataset (its configuration and splits apply)."""


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")

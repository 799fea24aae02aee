"""Math problems from public datasets: GSM8K, MATH, MATH-500 and MetaMathQA.

Each source reads either a local file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``) with
the dataset's own column names, or a Hugging Face Hub dataset (the source's usual id by
default). The reference answer (``gold``) is taken the way each dataset states it:

* ``gsm8k``: ``question``, ``answer``; gold is the text after ``####``, commas removed;
* ``math``: ``problem``, ``solution``, ``level`` (``"Level 3"``), ``type``; gold is the
  content of the last ``\\boxed{...}`` of the solution;
* ``math500``: ``problem``, ``answer`` (else the solution's last ``\\boxed{}``), ``level``,
  ``unique_id``;
* ``metamath``: ``query``, ``response``, ``type``; gold is the text after
  ``The answer is:``. Only ``MATH_*`` types are kept by default, as the DRIFT release
  trains on them.

Errors name the record (``path:line`` for local files) and the field.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from drift_envs.base import Problem
from drift_envs.loading import DataError, HubSource, Row, check_limit, read_rows

logger = logging.getLogger(__name__)

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_LEVEL_RE = re.compile(r"^\s*(?:level\s*)?(\d+)\s*$", re.IGNORECASE)
_UNKNOWN_LEVEL_RE = re.compile(r"^\s*(?:level\s*)?\?\s*$", re.IGNORECASE)
METAMATH_ANSWER_MARK = "The answer is:"
DEFAULT_METAMATH_TYPES = ("MATH_",)
"""MetaMathQA ``type`` prefixes kept by default (the release's training prompts)."""


def _braced(text: str, start: int) -> str | None:
    """Content of the brace group opening at ``text[start] == "{"``, or ``None`` if unclosed.

    A backslash escapes the next character, so ``\\{`` and ``\\}`` do not count as braces.
    """
    depth = 0
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def _box_content(text: str, end: int) -> str | None:
    """What follows a box command ending at ``end``: a brace group, or (``\\boxed 5``) one token."""
    i = end
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        content = _braced(text, i)
        return content.strip() if content is not None else None
    if i == end:  # ``\boxedfoo`` is another command, not a box
        return None
    match = re.match(r"[^\s$]+", text[i:])
    return match.group(0) if match else None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced.

    >>> last_boxed(r"so $x = \\boxed{\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'

    ``None`` when no box can be read.
    """
    starts = sorted(
        (m.start(), m.end()) for cmd in _BOX_COMMANDS for m in re.finditer(re.escape(cmd), text)
    )
    # The last readable box wins; an unclosed one at the end falls back to the one before.
    for _, end in reversed(starts):
        content = _box_content(text, end)
        if content:
            return content
    return None


def gsm8k_gold(answer: str) -> str | None:
    """The final answer of a GSM8K solution: the text after ``####``, commas removed."""
    if "####" not in answer:
        return None
    gold = answer.rsplit("####", 1)[1].strip().replace(",", "")
    return gold or None


def metamath_gold(response: str) -> str | None:
    """The final answer of a MetaMathQA response: the text after ``The answer is:``."""
    if METAMATH_ANSWER_MARK not in response:
        return None
    gold = response.rsplit(METAMATH_ANSWER_MARK, 1)[1].strip()
    return gold or None


def parse_level(value: object) -> int | None:
    """Difficulty level from ``"Level 3"``, ``"3"`` or ``3``; ``None`` for ``"Level ?"`` or no value.

    Raises :class:`ValueError` for anything else.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        match = _LEVEL_RE.match(value)
        if match:
            return int(match.group(1))
        # MATH marks a few problems "Level ?": they have no level, they are not malformed.
        if not value.strip() or _UNKNOWN_LEVEL_RE.match(value):
            return None
    raise ValueError(f"cannot read a level from {value!r}")


@dataclass(frozen=True)
class _Item:
    question: str
    answer: str
    level: int | None = None
    native_id: str | None = None


def _text(row: Row, field: str) -> str:
    value = row.get(field)
    if not value.strip():
        raise DataError(f"{row.where}: field '{field}' is empty")
    return value


def _level(row: Row, field: str = "level") -> int | None:
    if field not in row.data:
        return None
    try:
        return parse_level(row.data[field])
    except ValueError as err:
        raise DataError(f"{row.where}: field '{field}': {err}") from None


def _gsm8k(row: Row) -> _Item:
    gold = gsm8k_gold(row.get("answer"))
    if gold is None:
        raise DataError(f"{row.where}: field 'answer' has no final answer after '####'")
    return _Item(_text(row, "question"), gold)


def _math(row: Row) -> _Item:
    gold = last_boxed(row.get("solution"))
    if gold is None:
        raise DataError(f"{row.where}: field 'solution' has no \\boxed{{...}} answer")
    return _Item(_text(row, "problem"), gold, _level(row))


def _math500(row: Row) -> _Item:
    # CSV and Parquet readers type a column of numbers as numbers: "7" arrives as 7.
    answer = row.get("answer", types=(str, int, float)) if row.data.get("answer") is not None else ""
    gold = str(answer).strip()
    if not gold:
        if "solution" not in row.data:
            raise DataError(f"{row.where}: missing field 'answer' (and no 'solution' to read it from)")
        gold = last_boxed(row.get("solution")) or ""
        if not gold:
            raise DataError(f"{row.where}: field 'answer' is empty and field 'solution' has no \\boxed{{...}} answer")
    native_id = str(row.get("unique_id", types=(str, int))) if "unique_id" in row.data else None
    return _Item(_text(row, "problem"), gold, _level(row), native_id)


def _metamath(row: Row) -> _Item:
    gold = metamath_gold(row.get("response"))
    if gold is None:
        raise DataError(f"{row.where}: field 'response' has no final answer after '{METAMATH_ANSWER_MARK}'")
    return _Item(_text(row, "query"), gold)


SOURCES: dict[str, HubSource[_Item]] = {
    "gsm8k": HubSource("gsm8k", "openai/gsm8k", "main", ("train", "test"), _gsm8k),
    # The original hendrycks/competition_math is gone from the Hub; this copy keeps its
    # columns (problem, level, type, solution) and splits in one default configuration.
    "math": HubSource("math", "DigitalLearningGmbH/MATH-lighteval", None, ("train", "test"), _math),
    "math500": HubSource("math500", "HuggingFaceH4/MATH-500", None, ("test",), _math500),
    "metamath": HubSource("metamath", "meta-math/MetaMathQA", None, ("train",), _metamath),
}


def load(
    source: str,
    *,
    path: str | None = None,
    split: str = "train",
    limit: int | None = None,
    metamath_types: Sequence[str] | None = DEFAULT_METAMATH_TYPES,
) -> list[Problem]:
    """Problems of ``source`` (``gsm8k``, ``math``, ``math500`` or ``metamath``).

    ``path`` is a local file or a Hub dataset id (default: the source's usual Hub id);
    ``split`` applies to Hub datasets only. ``limit`` caps the number of problems (after
    filtering). ``metamath_types`` are the MetaMathQA ``type`` prefixes to keep (``None``:
    all types); other sources ignore it.

    Problem ids are stable: the dataset's own id where it has one (MATH-500's
    ``unique_id``), else ``<source>-<split or file stem>-<record index>``, counted
    before filtering so that a filter or a limit does not renumber problems.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown math dataset source {source!r}; known: {sorted(SOURCES)}")
    check_limit(limit)
    spec = SOURCES[source]
    where = spec.locate(path, split)
    spec_path, local, on_default_hub = where.spec, where.local, where.default_hub
    if isinstance(metamath_types, str):  # one prefix, not its characters
        metamath_types = (metamath_types,)
    prefixes = tuple(metamath_types) if (source == "metamath" and metamath_types is not None) else None
    rows = read_rows(
        spec_path,
        split=split,
        name=spec.hub_config if on_default_hub else None,
        # With a filter the limit counts kept records, so every record must be read.
        limit=None if prefixes is not None else limit,
    )
    tag = Path(spec_path).stem if local else split
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for index, row in enumerate(rows):
        if limit is not None and len(problems) >= limit:
            break
        if prefixes is not None and not row.get("type").startswith(prefixes):
            continue
        item = spec.convert(row)
        problem_id = item.native_id or f"{spec.name}-{tag}-{index}"
        # Ids pick problems (reset's problem_id) and group trajectories: they must be unique.
        if problem_id in seen:
            raise DataError(f"{row.where}: duplicate problem id {problem_id!r} (first at {seen[problem_id]})")
        seen[problem_id] = row.where
        problems.append(Problem(problem_id, item.question, item.answer, spec.name, item.level))
    if not problems:
        raise DataError(f"{spec_path}: no records of type {list(prefixes or ())} (of {len(rows)} read)")
    logger.info("loaded %d %s problems from %s", len(problems), spec.name, spec_path)
    return problems

"""Multiple-choice problems from public datasets: GPQA, MMLU, MMLU-Pro and MMLU-Redux.

``load`` reads a local file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``) with the dataset's
own column names, or the Hugging Face Hub (the source's usual id by default):

* ``gpqa`` (``Idavidrein/gpqa``, config ``gpqa_diamond``, gated): ``Question``,
  ``Correct Answer``, ``Incorrect Answer 1..3``; the correct answer comes first in the data,
  so the options are shuffled once, by a hash of the record (as the DRIFT release does);
* ``mmlu`` (``cais/mmlu``, config ``all``): ``question``, ``choices``, ``answer`` (index);
* ``mmlu_pro`` (``TIGER-Lab/MMLU-Pro``): ``question``, ``options`` (up to 10), ``answer``
  (letter) and/or ``answer_index``;
* ``mmlu_redux`` (``edinburgh-dawg/mmlu-redux-2.0``, every subject by default):
  ``question``, ``choices``, ``answer``, and the annotations ``error_type`` /
  ``correct_answer``: questions annotated ``ok`` (or without annotation) keep their answer,
  ``wrong_groundtruth`` ones take the annotators' corrected answer when they gave one, the
  rest (no or several correct answers, unclear question or options, expert) are left out.
  The DRIFT release keeps every question with MMLU's original label instead.

Errors name the record (``path:line`` for local files) and the field.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from drift_envs.loading import DataError, HubSource, Row, check_limit, read_rows
from drift_envs.multiple_choice.problems import LETTERS, MAX_CHOICES, MIN_CHOICES, MCProblem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Item:
    question: str
    choices: tuple[str, ...]
    correct: int
    native_id: str | None = None
    """The dataset's own id of the record, where it has one."""


def _text(row: Row, field: str) -> str:
    value = row.get(field)
    if not value.strip():
        raise DataError(f"{row.where}: field '{field}' is empty")
    return value.strip()


def _option(row: Row, field: str, value: object, label: str = "") -> str:
    # CSV and Parquet readers type a column of numbers as numbers: "7" arrives as 7.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{row.where}: field '{field}'{label} must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise DataError(f"{row.where}: field '{field}'{label} is empty")
    return text


def _options(row: Row, field: str) -> tuple[str, ...]:
    values = row.get(field, types=(list, tuple))
    if not MIN_CHOICES <= len(values) <= MAX_CHOICES:
        raise DataError(
            f"{row.where}: field '{field}' must hold {MIN_CHOICES} to {MAX_CHOICES} options, got {len(values)}"
        )
    return tuple(_option(row, field, value, f"[{i}]") for i, value in enumerate(values))


def choice_index(value: object, num_choices: int) -> int | None:
    """An answer given as an index (``2``, ``"2"``) or a letter (``"C"``) as an index; ``None`` if unreadable or
    out of range."""
    index: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) == 1 and text.upper() in LETTERS:
            index = LETTERS.index(text.upper())
        elif text.isdigit():
            index = int(text)
    if index is None or not 0 <= index < num_choices:
        return None
    return index


def _answer(row: Row, field: str, num_choices: int) -> int:
    value = row.get(field, types=(int, str))
    index = choice_index(value, num_choices)
    if index is None:
        raise DataError(
            f"{row.where}: field '{field}' is {value!r}, not one of the {num_choices} options "
            f"(an index 0-{num_choices - 1} or a letter A-{LETTERS[num_choices - 1]})"
        )
    return index


GPQA_WRONG_FIELDS = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def _gpqa(row: Row) -> _Item | None:
    question = _text(row, "Question")
    correct = _option(row, "Correct Answer", row.get("Correct Answer", types=(str, int, float)))
    wrong = [_option(row, f, row.get(f, types=(str, int, float))) for f in GPQA_WRONG_FIELDS]
    native_id = str(row.data["Record ID"]).strip() if row.data.get("Record ID") else None
    # The data lists the correct answer first; shuffle once, by the record's content, so that
    # the letter is not always A even when the environment does not shuffle.
    order = [correct, *wrong]
    key = native_id or question
    random.Random(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16)).shuffle(order)
    return _Item(question, tuple(order), order.index(correct), native_id)


def _mmlu(row: Row) -> _Item | None:
    choices = _options(row, "choices")
    return _Item(_text(row, "question"), choices, _answer(row, "answer", len(choices)))


def _mmlu_pro(row: Row) -> _Item | None:
    choices = _options(row, "options")
    if "answer_index" in row.data:
        index = _answer(row, "answer_index", len(choices))
        if "answer" in row.data and _answer(row, "answer", len(choices)) != index:
            raise DataError(
                f"{row.where}: field 'answer' ({row.data['answer']!r}) disagrees with field 'answer_index' ({index})"
            )
    else:
        index = _answer(row, "answer", len(choices))
    native_id = str(row.data["question_id"]) if row.data.get("question_id") is not None else None
    return _Item(_text(row, "question"), choices, index, native_id)


REDUX_UNUSABLE = ("no_correct_answer", "multiple_correct_answers", "bad_question_clarity", "bad_options_clarity",
                  "expert")
"""MMLU-Redux annotations that leave a question without one reliable answer."""


def _mmlu_redux(row: Row) -> _Item | None:
    choices = _options(row, "choices")
    question = _text(row, "question")
    error_type = row.get("error_type").strip() if row.data.get("error_type") is not None else "ok"
    if error_type == "ok":
        return _Item(question, choices, _answer(row, "answer", len(choices)))
    if error_type == "wrong_groundtruth":
        index = choice_index(row.data.get("correct_answer"), len(choices))
        return None if index is None else _Item(question, choices, index)
    if error_type in REDUX_UNUSABLE:
        return None
    raise DataError(
        f"{row.where}: field 'error_type' is {error_type!r}; expected 'ok', 'wrong_groundtruth' or one of "
        f"{list(REDUX_UNUSABLE)}"
    )


SOURCES: dict[str, HubSource[_Item | None]] = {
    # GPQA is an evaluation set published as a single "train" split.
    "gpqa": HubSource("gpqa", "Idavidrein/gpqa", "gpqa_diamond", ("train",), _gpqa, gated=True),
    "mmlu": HubSource("mmlu", "cais/mmlu", "all", ("test", "validation", "dev", "auxiliary_train"), _mmlu),
    "mmlu_pro": HubSource("mmlu_pro", "TIGER-Lab/MMLU-Pro", None, ("test", "validation"), _mmlu_pro),
    # One configuration per subject; none given reads them all (as the DRIFT release does).
    "mmlu_redux": HubSource("mmlu_redux", "edinburgh-dawg/mmlu-redux-2.0", None, ("test",), _mmlu_redux),
}


def _gated_hint(source: HubSource, dataset_id: str, err: DataError) -> DataError:
    text = str(err)
    if not source.gated or not any(mark in text.lower() for mark in ("gated", "401", "403", "unauthorized")):
        return err
    return DataError(
        f"{source.name}: '{dataset_id}' is a gated dataset: accept its terms at "
        f"https://huggingface.co/datasets/{dataset_id} and set HF_TOKEN (or log in with `hf auth login`), "
        f"or pass a local file as path. ({text})"
    )


def _config_names(dataset_id: str) -> list[str]:
    import datasets  # lazy: heavy

    try:
        return list(datasets.get_dataset_config_names(dataset_id))
    except Exception as err:  # datasets raises many types; all mean "cannot list them"
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot list the configurations of dataset '{dataset_id}': {first}") from None


def load(
    source: str,
    path: str | None = None,
    split: str = "test",
    limit: int | None = None,
    name: str | None = None,
) -> list[MCProblem]:
    """Problems of ``source`` (``gpqa``, ``mmlu``, ``mmlu_pro`` or ``mmlu_redux``).

    ``path`` is a local file or a Hub dataset id (default: the source's usual Hub id);
    ``split`` and ``name`` (the Hub configuration; default: the source's usual one) apply to
    Hub datasets only. ``limit`` caps the number of problems (after filtering).

    Problem ids are stable: ``<source>-<dataset id>`` where the dataset has one (GPQA's
    ``Record ID``, MMLU-Pro's ``question_id``), else ``<source>-<tag>-<record index>`` with the
    tag the file stem, or the split (and subject) on the Hub, counted before filtering.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown multiple-choice dataset source {source!r}; known: {sorted(SOURCES)}")
    check_limit(limit)
    spec = SOURCES[source]
    where = spec.locate(path, split)
    spec_path, local, on_default_hub = where.spec, where.local, where.default_hub
    config = name if name is not None else (spec.hub_config if on_default_hub else None)
    # With a filter (MMLU-Redux) the limit counts kept records, so every record must be read.
    read_limit = None if source == "mmlu_redux" else limit

    def parts() -> Iterator[tuple[str, list[Row]]]:
        """(id tag, rows) per table read; MMLU-Redux on the Hub is one table per subject."""
        try:
            if local:
                yield Path(spec_path).stem, read_rows(spec_path, limit=read_limit)
            elif source == "mmlu_redux" and config is None:
                for subject in _config_names(spec_path):
                    yield f"{split}-{subject}", read_rows(spec_path, split=split, name=subject)
            else:
                tag = f"{split}-{config}" if config and source != "gpqa" else split
                yield tag, read_rows(spec_path, split=split, name=config, limit=read_limit)
        except DataError as err:
            raise _gated_hint(spec, spec_path, err) from None

    problems: list[MCProblem] = []
    seen: dict[str, str] = {}
    skipped = read = 0
    for tag, rows in parts():
        if limit is not None and len(problems) >= limit:
            break
        for index, row in enumerate(rows):
            if limit is not None and len(problems) >= limit:
                break
            read += 1
            item = spec.convert(row)
            if item is None:
                skipped += 1
                continue
            subject = row.data.get("subject") if source == "mmlu" else None
            local_tag = f"{tag}-{subject}" if isinstance(subject, str) and subject else tag
            problem_id = f"{source}-{item.native_id}" if item.native_id else f"{source}-{local_tag}-{index}"
            # Ids pick problems (reset's problem_id) and group trajectories: they must be unique.
            if problem_id in seen:
                raise DataError(f"{row.where}: duplicate problem id {problem_id!r} (first at {seen[problem_id]})")
            seen[problem_id] = row.where
            problems.append(MCProblem.create(problem_id, item.question, item.choices, item.correct, source=source))
    if skipped:
        logger.info("%s: left out %d of %d records annotated without one reliable answer", spec_path, skipped, read)
    if not problems:
        raise DataError(f"{spec_path}: no usable records (of {read} read)")
    logger.info("loaded %d %s problems from %s", len(problems), source, spec_path)
    return problems


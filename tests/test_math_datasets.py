"""Math dataset loaders on small local files with each source's real column names (no Hub)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from drift_envs.loading import DataError
from drift_envs.math.datasets import SOURCES, gsm8k_gold, last_boxed, load, metamath_gold, parse_level
from drift_envs.math.env import MathCorrectionEnv


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


GSM8K = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A car costs 1,000 dollars more than 234. Price?", "answer": "1000 + 234 = 1234\n#### 1,234"},
]
MATH = [
    {"problem": "Compute $\\frac{2}{4}$.", "solution": "Reduce: $\\boxed{\\frac{1}{2}}$.", "level": "Level 3",
     "type": "Prealgebra"},
    {"problem": "Find x.", "solution": "First $\\boxed{2}$ is wrong; in fact $x = \\boxed{\\{1, 2\\}}$.",
     "level": "Level ?", "type": "Algebra"},
]
MATH500 = [
    {"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "answer": "2", "subject": "Prealgebra",
     "level": 1, "unique_id": "test/prealgebra/1.json"},
    {"problem": "Simplify $\\frac{6}{8}$.", "solution": "So $\\boxed{\\frac{3}{4}}$.", "answer": "",
     "subject": "Prealgebra", "level": 2, "unique_id": "test/prealgebra/2.json"},
]
METAMATH = [
    {"query": "GSM question?", "response": "Work.\nThe answer is: 5", "type": "GSM_AnsAug",
     "original_question": "q"},
    {"query": "What is $\\frac{1}{2}+\\frac{1}{4}$?", "response": "Add.\nThe answer is: \\frac{3}{4}",
     "type": "MATH_AnsAug", "original_question": "q"},
    {"query": "Rephrased GSM?", "response": "The answer is: 1,200", "type": "GSM_Rephrased", "original_question": "q"},
    {"query": "If $x=3$, what is $x^2$?", "response": "Square it.\nThe answer is: 9", "type": "MATH_SV",
     "original_question": "q"},
]


# -- gold extraction ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\fbox{7}", "7"),
        ("so \\boxed 5$.", "5"),
        ("\\boxed{3} and an unclosed \\boxed{4", "3"),
        ("no box here", None),
        ("\\boxed{}", None),
        ("\\boxedfoo{3}", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("5 + 2 = 7\n#### 7", "7"), ("#### 1,234", "1234"), ("a #### 1\n#### -3 ", "-3"), ("no marker 7", None),
     ("####   ", None)],
)
def test_gsm8k_gold(answer: str, expected: str | None) -> None:
    assert gsm8k_gold(answer) == expected


def test_metamath_gold() -> None:
    assert metamath_gold("Steps.\nThe answer is: \\frac{3}{4}") == "\\frac{3}{4}"
    assert metamath_gold("The answer is: 1\nThe answer is: 2") == "2"
    assert metamath_gold("no final line") is None


@pytest.mark.parametrize(
    ("value", "expected"), [("Level 3", 3), ("level 5", 5), ("4", 4), (2, 2), ("Level ?", None), (None, None)]
)
def test_parse_level(value: object, expected: int | None) -> None:
    assert parse_level(value) == expected


@pytest.mark.parametrize("value", ["hard", "Level three", 2.5, True])
def test_parse_level_rejects_garbage(value: object) -> None:
    with pytest.raises(ValueError, match="level"):
        parse_level(value)


# -- loaders -----------------------------------------------------------------------------
def test_gsm8k_jsonl(tmp_path: Path) -> None:
    problems = load("gsm8k", path=write_jsonl(tmp_path / "gsm.jsonl", GSM8K))
    assert [p.answer for p in problems] == ["7", "1234"]
    assert [p.id for p in problems] == ["gsm8k-gsm-0", "gsm8k-gsm-1"]
    assert problems[0].question == GSM8K[0]["question"]
    assert {p.source for p in problems} == {"gsm8k"}
    assert problems[0].level is None


def test_gsm8k_without_final_answer_names_line_and_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "gsm.jsonl", [GSM8K[0], {"question": "q", "answer": "seven"}])
    with pytest.raises(DataError, match=r"gsm\.jsonl:2: field 'answer'.*####"):
        load("gsm8k", path=path)


def test_math_jsonl_boxed_and_levels(tmp_path: Path) -> None:
    problems = load("math", path=write_jsonl(tmp_path / "math.jsonl", MATH))
    assert [p.answer for p in problems] == ["\\frac{1}{2}", "\\{1, 2\\}"]
    assert [p.level for p in problems] == [3, None]
    assert problems[0].question == MATH[0]["problem"]
    assert [p.id for p in problems] == ["math-math-0", "math-math-1"]


def test_math_parquet(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    path = tmp_path / "math.parquet"
    pd.DataFrame(MATH).to_parquet(path)
    problems = load("math", path=str(path))
    assert [(p.answer, p.level) for p in problems] == [("\\frac{1}{2}", 3), ("\\{1, 2\\}", None)]


def test_math_without_box_and_bad_level_name_the_field(tmp_path: Path) -> None:
    no_box = dict(MATH[0], solution="The answer is one half.")
    with pytest.raises(DataError, match=r"math\.jsonl:2: field 'solution'.*boxed"):
        load("math", path=write_jsonl(tmp_path / "math.jsonl", [MATH[0], no_box]))
    bad_level = dict(MATH[0], level="Level hard")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'level'"):
        load("math", path=write_jsonl(tmp_path / "bad.jsonl", [bad_level]))


def test_math500_answer_field_then_boxed_fallback(tmp_path: Path) -> None:
    problems = load("math500", path=write_jsonl(tmp_path / "m500.jsonl", MATH500))
    assert [p.answer for p in problems] == ["2", "\\frac{3}{4}"]
    assert [p.id for p in problems] == ["test/prealgebra/1.json", "test/prealgebra/2.json"]
    assert [p.level for p in problems] == [1, 2]


def test_math500_csv_with_numeric_columns(tmp_path: Path) -> None:
    path = tmp_path / "m500.csv"
    path.write_text(
        "problem,solution,answer,subject,level,unique_id\n"
        '"What is $3+4$?","It is $\\boxed{7}$.",7,Prealgebra,1,test/prealgebra/7.json\n',
        encoding="utf-8",
    )
    [problem] = load("math500", path=str(path))
    assert (problem.answer, problem.level, problem.id) == ("7", 1, "test/prealgebra/7.json")


def test_math500_duplicate_ids_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dup.jsonl", [MATH500[0], MATH500[0]])
    with pytest.raises(DataError, match=r"dup\.jsonl:2: duplicate problem id"):
        load("math500", path=path)


def test_metamath_keeps_math_types_by_default(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mm.jsonl", METAMATH)
    problems = load("metamath", path=path)
    assert [p.answer for p in problems] == ["\\frac{3}{4}", "9"]
    # Ids count records before filtering, so they match the file whatever the filter.
    assert [p.id for p in problems] == ["metamath-mm-1", "metamath-mm-3"]
    assert problems[0].question == METAMATH[1]["query"]


def test_metamath_type_filter_is_a_parameter(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mm.jsonl", METAMATH)
    assert len(load("metamath", path=path, metamath_types=None)) == 4
    gsm = load("metamath", path=path, metamath_types=("GSM_",))
    assert [p.answer for p in gsm] == ["5", "1,200"]  # MetaMath answers are kept as written
    assert load("metamath", path=path, metamath_types="MATH_SV") == load("metamath", path=path)[1:]
    # The limit counts kept problems, not records read.
    assert [p.id for p in load("metamath", path=path, limit=1)] == ["metamath-mm-1"]
    with pytest.raises(DataError, match="no records of type"):
        load("metamath", path=path, metamath_types=("NONE_",))


def test_limit_caps_problems(tmp_path: Path) -> None:
    assert len(load("gsm8k", path=write_jsonl(tmp_path / "gsm.jsonl", GSM8K), limit=1)) == 1
    with pytest.raises(ValueError, match="limit"):
        load("gsm8k", path=str(tmp_path / "gsm.jsonl"), limit=0)


def test_malformed_jsonl_line_names_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GSM8K[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: invalid JSON")):
        load("gsm8k", path=str(path))


def test_missing_field_is_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "gsm.jsonl", [GSM8K[0], {"prompt": "q", "answer": "#### 1"}])
    with pytest.raises(DataError, match=r"gsm\.jsonl:2: missing field 'question'"):
        load("gsm8k", path=path)


def test_empty_question_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "  ", "answer": "#### 1"}])
    with pytest.raises(DataError, match=r"gsm\.jsonl:1: field 'question' is empty"):
        load("gsm8k", path=path)


def test_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load("math", path=str(tmp_path / "absent.jsonl"))


def test_unknown_source_and_missing_hub_split() -> None:
    with pytest.raises(ValueError, match="unknown math dataset source"):
        load("mathqa")
    # Checked before any download: MATH-500 only has a test split, MetaMathQA only train.
    with pytest.raises(DataError, match="no split 'train'"):
        load("math500", split="train")
    with pytest.raises(DataError, match="no split 'test'"):
        load("metamath", split="test")
    assert SOURCES["gsm8k"].hub_id == "openai/gsm8k" and SOURCES["gsm8k"].hub_config == "main"


def test_env_reads_a_dataset_file(tmp_path: Path) -> None:
    env = MathCorrectionEnv(source="gsm8k", path=write_jsonl(tmp_path / "gsm.jsonl", GSM8K), num_problems=5)
    assert len(env.problems) == 2
    observation, info = env.reset(options={"problem_id": "gsm8k-gsm-1"})
    assert GSM8K[1]["question"] in observation and info["gold"] == "1234"
    _, reward, terminated, _, _ = env.step("<answer>1,234</answer>")
    assert terminated and reward == pytest.approx(1.0)

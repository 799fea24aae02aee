"""drift/MultipleChoice-v0: lettering, parsing, rewards, the procedural generator and the dataset loaders."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import pytest
from gymnasium.utils.env_checker import check_env

from drift_envs import make_env
from drift_envs.base import CORRECT_MESSAGE, SIMPLE_FEEDBACK
from drift_envs.loading import DataError
from drift_envs.multiple_choice.datasets import load
from drift_envs.multiple_choice.env import MCEnvConfig, MultipleChoiceEnv, read_choice
from drift_envs.multiple_choice.problems import DEFAULT_KINDS, KINDS, LETTERS, MCProblem, generate_mc_problems

RELEASE_INSTRUCTION = (
    "You are solving multiple-choice questions. Only give the final answer letter (A-D) between <answer> and </answer>."
)


def shown_options(observation: str) -> dict[str, str]:
    """Letter -> option text, read back from the user message."""
    return dict(re.findall(r"^([A-Z])\. (.*)$", observation, flags=re.MULTILINE))


def letter_of(observation: str, text: str) -> str:
    (letter,) = [letter for letter, option in shown_options(observation).items() if option == text]
    return letter


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def env() -> MultipleChoiceEnv:
    return MultipleChoiceEnv(num_problems=16, problem_seed=3)


# -- the environment -----------------------------------------------------------------------


def test_check_env_passes(env):
    check_env(env, skip_render_check=True)


def test_registered_under_the_gpqa_alias():
    made = make_env("gpqa", num_problems=4)
    assert isinstance(made.unwrapped, MultipleChoiceEnv)
    observation, info = made.reset(seed=0)
    assert observation.startswith(RELEASE_INSTRUCTION)
    assert info["gold"] in shown_options(observation).values()


def test_prompt_shows_question_and_lettered_options(env):
    observation, info = env.reset(seed=5)
    problem = next(p for p in env.problems if p.id == info["problem_id"])
    assert observation.startswith(RELEASE_INSTRUCTION)
    assert f"Problem:\n{problem.question}\nA. " in observation
    options = shown_options(observation)
    assert sorted(options) == ["A", "B", "C", "D"]
    assert sorted(options.values()) == sorted(problem.choices)
    assert options[info["gold_letter"]] == problem.answer == info["gold"]


def test_shuffle_is_fixed_by_the_reset_seed():
    orders = set()
    for seed in range(12):
        first = MultipleChoiceEnv(num_problems=16).reset(seed=seed, options={"problem_index": 2})
        again = MultipleChoiceEnv(num_problems=16).reset(seed=seed, options={"problem_index": 2})
        assert first == again
        orders.add(tuple(shown_options(first[0]).values()))
    assert len(orders) > 1  # different seeds letter the same problem differently


def test_reset_seed_fixes_problem_and_letters(env):
    assert env.reset(seed=11) == env.reset(seed=11)


def test_without_shuffle_options_keep_the_problem_order():
    env = MultipleChoiceEnv(num_problems=16, shuffle=False)
    problem = env.problems[2]
    for seed in range(5):
        observation, info = env.reset(seed=seed, options={"problem_index": 2})
        assert tuple(shown_options(observation).values()) == problem.choices
        assert info["gold_letter"] == LETTERS[problem.correct]


def test_correct_letter_solves(env):
    observation, info = env.reset(seed=2)
    letter = letter_of(observation, info["gold"])
    assert letter == info["gold_letter"]
    reply, reward, terminated, truncated, step_info = env.step(f"<answer>{letter}</answer>")
    assert (reply, reward, terminated, truncated) == (CORRECT_MESSAGE, 1.0, True, False)
    assert step_info["parsed_answer"] == letter
    assert step_info["episode"].t_star == 1


def test_wrong_letter_gets_feedback(env):
    observation, info = env.reset(seed=2)
    wrong = next(letter for letter in shown_options(observation) if letter != info["gold_letter"])
    reply, reward, terminated, truncated, step_info = env.step(f"<answer>{wrong}</answer>")
    assert (reply, reward, terminated, truncated) == (SIMPLE_FEEDBACK, 0.0, False, False)
    assert step_info["is_action"] and step_info["parsed_answer"] == wrong
    assert step_info["actions_left"] == 4


def test_lenient_option_text_and_value_count(env):
    observation, info = env.reset(seed=4)
    # The option's text, tag not closed: solved, with the format penalty.
    _, reward, terminated, _, step_info = env.step(f"<answer>{info['gold']}")
    assert terminated and reward == pytest.approx(0.9)
    assert step_info["parsed_answer"] == info["gold_letter"]
    assert step_info["rendered_reply"] == f"<answer>{info['gold']}</answer>"  # the model's own text kept

    observation, info = env.reset(seed=4)
    problem = next(p for p in env.problems if p.id == info["problem_id"])
    expression = problem.question.removeprefix("What is ").removesuffix("?")
    _, reward, terminated, _, _ = env.step(f"<answer>{expression} = {info['gold']}</answer>")
    assert terminated and reward == 1.0


def test_placeholder_reply_is_a_format_failure(env):
    env.reset(seed=1)
    reply, reward, terminated, truncated, info = env.step("<answer>[your answer]</answer>")
    assert reward == pytest.approx(-0.1)
    assert not info["is_action"] and info["parsed_answer"] is None and not info["well_formed"]
    assert (reply, terminated, truncated) == (SIMPLE_FEEDBACK, False, False)
    assert info["actions_left"] == 5


def test_strict_parse_wants_a_single_letter():
    env = MultipleChoiceEnv(num_problems=8, parse="strict")
    observation, info = env.reset(seed=0)
    labelled = f"{info['gold_letter']}. {info['gold']}"
    _, reward, _, _, step_info = env.step(f"<answer>{labelled}</answer>")
    assert not step_info["is_action"] and reward == pytest.approx(-0.1)
    _, reward, _, _, step_info = env.step(f"<answer>{info['gold_letter']}")  # unclosed tag
    assert not step_info["is_action"]
    _, reward, terminated, _, _ = env.step(f"<answer>{info['gold_letter']}</answer>")
    assert terminated and reward == 1.0


def test_repetition_counts_a_letter_and_its_option_text_as_one_answer():
    env = MultipleChoiceEnv(num_problems=8, max_actions=2)
    observation, info = env.reset(seed=3)
    options = shown_options(observation)
    wrong = next(letter for letter in options if letter != info["gold_letter"])
    env.step(f"<answer>{wrong}</answer>")
    _, reward, terminated, truncated, step_info = env.step(f"<answer>{options[wrong]}</answer>")
    assert truncated and not terminated
    episode = step_info["episode"]
    assert episode.answer_norms == [wrong, wrong]
    assert episode.repetition_penalty == pytest.approx(0.25)
    assert reward == pytest.approx(-0.25)


def test_read_choice_forms():
    options = ["84", "85", "86", "87"]
    for content in ["B", "b", "(B)", "B.", "B. 85", "The answer is B", "Answer: (B)", "85", "37 + 48 = 85", "**B**"]:
        assert read_choice(content, options) == 1, content
    for content in ["E", "[your answer]", "your answer", "99", ""]:
        assert read_choice(content, options) is None, content
    assert read_choice("B", options, strict=True) == 1
    assert read_choice("B.", options, strict=True) is None
    assert read_choice("85", options, strict=True) is None
    assert read_choice("100", ["100°C", "90°C", "110°C", "0°C"]) == 0  # an option's value, without its unit
    assert read_choice("same", ["same", "same", "other", "x"]) is None  # ambiguous


def test_instruction_letter_range_follows_the_options():
    problems = [MCProblem.create(f"p{i}", f"Question {i}?", [f"opt {j}" for j in range(10)], i) for i in range(3)]
    env = MultipleChoiceEnv(problems=problems)
    observation, _ = env.reset(seed=0)
    assert "final answer letter (A-J)" in observation
    assert sorted(shown_options(observation)) == list("ABCDEFGHIJ")


def test_config_validation():
    with pytest.raises(ValueError, match="source"):
        MCEnvConfig(source="bogus")
    with pytest.raises(ValueError, match="kinds"):
        MCEnvConfig(kinds=("bogus",))
    with pytest.raises(ValueError, match="num_choices"):
        MCEnvConfig(num_choices=1)
    with pytest.raises(ValueError, match="split"):
        MCEnvConfig(split="validation")
    assert MCEnvConfig(kinds="arithmetic, units").kinds == ("arithmetic", "units")
    # The split defaults to the source's evaluation split (GPQA publishes only "train").
    assert [MCEnvConfig(source=s).split for s in ("procedural", "gpqa", "mmlu", "mmlu_pro")] == [
        "train", "train", "test", "test"]
    with pytest.raises(TypeError):
        MCEnvConfig(problems=[object()])


def test_mc_problem_validation():
    problem = MCProblem.create("x", "Q?", ["a", "b", "c", "d"], 2)
    assert problem.answer == "c" and problem.choices == ("a", "b", "c", "d")
    with pytest.raises(ValueError, match="answer"):
        MCProblem("x", "Q?", "b", choices=("a", "b", "c", "d"), correct=0)
    with pytest.raises(ValueError, match="choices"):
        MCProblem.create("x", "Q?", ["a"], 0)
    with pytest.raises(ValueError, match="non-empty"):
        MCProblem.create("x", "Q?", ["a", " ", "c", "d"], 0)


# -- the procedural generator ----------------------------------------------------------------


def test_generator_is_deterministic_and_extends_its_prefix():
    first = generate_mc_problems(40, "train", KINDS, 7)
    assert first == generate_mc_problems(40, "train", KINDS, 7)
    assert generate_mc_problems(60, "train", KINDS, 7)[:40] == first
    assert first != generate_mc_problems(40, "train", KINDS, 8)


GENERATED_DIGESTS = {
    ("train", DEFAULT_KINDS, 300, 4): "7ecf0b9a3aa80e645f994a8daea73e3b38618e4cf9288d861a2f6069dbd3f28d",
    ("train", KINDS, 100, 4): "01b55a95a526d9a83e46d5f84e79dbae7f930fb83885c90a11e82e71055693b9",
    ("train", KINDS, 60, 10): "ea7ff22cf99415620101e7d04a2620cac53580d6a6dce66868ee0ef8c79099eb",
    ("test", DEFAULT_KINDS, 300, 4): "22b4db9c2aa1f4169bdf10cd80e595fcf0bdb7478461a01d5c7f6de22a76092c",
    ("test", KINDS, 100, 4): "189daaeacb6793138107837067d825bd31c7b65450c4b7105b1e5b72e7a818b0",
    ("test", KINDS, 60, 10): "051d7e6b7a37d797d048c9ce3c669e0670a70bcfca0a26b2428262fe86c5a11d",
}
"""SHA-256 of the first problems of each split (seed 0), computed before the generator moved out of the module it
shared with the dataset loaders: runs, their problem ids and their records stay comparable across versions."""


@pytest.mark.parametrize(("split", "kinds", "count", "num_choices"), list(GENERATED_DIGESTS))
def test_generated_problems_are_unchanged(split, kinds, count, num_choices):
    digest = hashlib.sha256()
    for p in generate_mc_problems(count, split, kinds, 0, num_choices):
        fields = [p.id, p.question, p.answer, p.source, p.level, list(p.choices), p.correct]
        digest.update(json.dumps(fields).encode() + b"\n")
    assert digest.hexdigest() == GENERATED_DIGESTS[split, kinds, count, num_choices]


def test_generator_splits_are_disjoint():
    train = generate_mc_problems(300, "train", KINDS, 0)
    test = generate_mc_problems(120, "test", KINDS, 0)
    assert not {p.question for p in train} & {p.question for p in test}
    assert len({p.id for p in train}) == 300


def test_generated_problems_are_well_formed():
    problems = generate_mc_problems(200, "train", ("arithmetic",), 0)
    assert {p.correct for p in problems} == {0, 1, 2, 3}
    for problem in problems:
        assert len(set(problem.choices)) == 4
        answer = int(problem.answer)
        assert all(0 <= int(c) and abs(int(c) - answer) <= 12 for c in problem.choices)
    for kind in KINDS:
        for problem in generate_mc_problems(5, "train", (kind,), 1, num_choices=10):
            assert len(set(problem.choices)) == 10 and problem.id.startswith(f"mc-{kind}-")


def test_generator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kinds"):
        generate_mc_problems(5, "train", ("bogus",))
    with pytest.raises(ValueError, match="num_choices"):
        generate_mc_problems(5, "train", num_choices=11)
    with pytest.raises(ValueError, match="fewer than"):
        generate_mc_problems(100, "test", ("constants",))


# -- dataset loaders -------------------------------------------------------------------------

GPQA_ROWS = [
    {
        "Record ID": f"rec{i}",
        "Question": f"Which particle {i} is lightest?\n",
        "Correct Answer": f" electron {i}",
        "Incorrect Answer 1": f"proton {i}",
        "Incorrect Answer 2": f"neutron {i}",
        "Incorrect Answer 3": f"muon, tau {i}",
    }
    for i in range(12)
]


def test_gpqa_jsonl(tmp_path):
    problems = load("gpqa", path=write_jsonl(tmp_path / "gpqa.jsonl", GPQA_ROWS))
    assert len(problems) == 12
    first = problems[0]
    assert first.id == "gpqa-rec0" and first.source == "gpqa"
    assert first.question == "Which particle 0 is lightest?" and first.answer == "electron 0"
    assert sorted(first.choices) == ["electron 0", "muon, tau 0", "neutron 0", "proton 0"]
    # The data puts the correct answer first; the loader's content-hashed shuffle moves it.
    assert len({p.correct for p in problems}) > 1
    assert load("gpqa", path=str(tmp_path / "gpqa.jsonl")) == problems  # deterministic


def test_gpqa_csv_and_env(tmp_path):
    path = tmp_path / "gpqa_diamond.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(GPQA_ROWS[0]))
        writer.writeheader()
        writer.writerows(GPQA_ROWS[:4])
    problems = load("gpqa", path=str(path))
    assert [p.answer for p in problems] == [f"electron {i}" for i in range(4)]
    assert "muon, tau 0" in problems[0].choices

    env = MultipleChoiceEnv(source="gpqa", path=str(path))
    observation, info = env.reset(seed=0)
    assert observation.startswith(RELEASE_INSTRUCTION)
    _, reward, terminated, _, _ = env.step(f"<answer>{letter_of(observation, info['gold'])}</answer>")
    assert terminated and reward == 1.0


def test_mmlu_jsonl(tmp_path):
    rows = [
        {"question": "2 + 2 =", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
        {"question": "Capital of France?", "subject": "geography", "choices": ["Rome", "Paris", "Oslo", "Bern"],
         "answer": "B"},
    ]
    problems = load("mmlu", path=write_jsonl(tmp_path / "mmlu.jsonl", rows))
    assert [(p.answer, p.correct) for p in problems] == [("4", 1), ("Paris", 1)]
    assert problems[0].id == "mmlu-mmlu-elementary_mathematics-0"
    assert len(load("mmlu", path=str(tmp_path / "mmlu.jsonl"), limit=1)) == 1


def test_mmlu_pro_jsonl_with_ten_options(tmp_path):
    options = [f"{v} J" for v in range(10, 110, 10)]
    rows = [
        {"question_id": 70, "question": "Energy?", "options": options, "answer": "J", "answer_index": 9},
        {"question_id": 71, "question": "Energy again?", "options": options, "answer": "C"},
    ]
    path = write_jsonl(tmp_path / "mmlu_pro.jsonl", rows)
    problems = load("mmlu_pro", path=path)
    assert [(p.id, p.answer) for p in problems] == [("mmlu_pro-70", "100 J"), ("mmlu_pro-71", "30 J")]

    env = MultipleChoiceEnv(source="mmlu_pro", path=path, shuffle=False)
    observation, _ = env.reset(seed=0, options={"problem_index": 0})
    assert "final answer letter (A-J)" in observation
    _, reward, terminated, _, _ = env.step("<answer>J</answer>")
    assert terminated and reward == 1.0

    rows[0]["answer"] = "I"
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'answer' .* disagrees"):
        load("mmlu_pro", path=write_jsonl(tmp_path / "bad.jsonl", rows))


def test_mmlu_redux_keeps_questions_with_a_reliable_answer(tmp_path):
    choices = ["w", "x", "y", "z"]
    rows = [
        {"question": "q0", "choices": choices, "answer": 0, "error_type": "ok", "correct_answer": None},
        {"question": "q1", "choices": choices, "answer": 0, "error_type": "wrong_groundtruth", "correct_answer": "C"},
        {"question": "q2", "choices": choices, "answer": 0, "error_type": "wrong_groundtruth", "correct_answer": None},
        {"question": "q3", "choices": choices, "answer": 1, "error_type": "no_correct_answer", "correct_answer": None},
        {"question": "q4", "choices": choices, "answer": 3},
    ]
    path = write_jsonl(tmp_path / "redux.jsonl", rows)
    problems = load("mmlu_redux", path=path)
    assert [(p.question, p.answer) for p in problems] == [("q0", "w"), ("q1", "y"), ("q4", "z")]
    assert [p.id for p in problems] == ["mmlu_redux-redux-0", "mmlu_redux-redux-1", "mmlu_redux-redux-4"]
    assert len(load("mmlu_redux", path=path, limit=2)) == 2

    rows[0]["error_type"] = "typo"
    with pytest.raises(DataError, match=r"redux2\.jsonl:1: field 'error_type'"):
        load("mmlu_redux", path=write_jsonl(tmp_path / "redux2.jsonl", rows))


def test_mmlu_redux_hub_reads_every_subject(monkeypatch):
    datasets = pytest.importorskip("datasets")
    tables = {
        "anatomy": [{"question": "a?", "choices": ["1", "2", "3", "4"], "answer": 2, "error_type": "ok"}],
        "virology": [{"question": "v?", "choices": ["1", "2", "3", "4"], "answer": 0, "error_type": "expert"},
                     {"question": "w?", "choices": ["1", "2", "3", "4"], "answer": 3, "error_type": "ok"}],
    }
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda dataset_id: sorted(tables))
    monkeypatch.setattr(datasets, "load_dataset", lambda dataset_id, name, split: tables[name])
    problems = load("mmlu_redux", split="test")
    assert [(p.id, p.answer) for p in problems] == [("mmlu_redux-test-anatomy-0", "3"),
                                                    ("mmlu_redux-test-virology-1", "4")]


def test_malformed_records_name_file_line_and_field(tmp_path):
    rows = [dict(GPQA_ROWS[0]), dict(GPQA_ROWS[1])]
    del rows[1]["Incorrect Answer 2"]
    path = write_jsonl(tmp_path / "gpqa.jsonl", rows)
    with pytest.raises(DataError, match=re.escape(f"{path}:2: missing field 'Incorrect Answer 2'")):
        load("gpqa", path=path)

    mmlu = [{"question": "q", "choices": ["a", "b", "c", "d"], "answer": 1}] * 2
    mmlu.append({"question": "q", "choices": ["a", "b", "c", "d"], "answer": 7})
    path = write_jsonl(tmp_path / "mmlu.jsonl", mmlu)
    with pytest.raises(DataError, match=re.escape(f"{path}:3: field 'answer' is 7")):
        load("mmlu", path=path)

    bad = [{"question": "q", "choices": ["a", "", "c", "d"], "answer": 1}]
    path = write_jsonl(tmp_path / "empty.jsonl", bad)
    with pytest.raises(DataError, match=re.escape(f"{path}:1: field 'choices'[1] is empty")):
        load("mmlu", path=path)


def test_gated_gpqa_failure_is_explained(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def refuse(*args, **kwargs):
        raise RuntimeError(
            "401 Client Error. Cannot access gated repo for url https://huggingface.co/datasets/Idavidrein/gpqa.\n"
            "Access to dataset Idavidrein/gpqa is restricted."
        )

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(DataError) as err:
        load("gpqa", split="train")
    message = str(err.value)
    for part in ("gated", "Idavidrein/gpqa", "HF_TOKEN", "local file", "401"):
        assert part in message


def test_hub_split_is_checked_before_download(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("no download expected"))
    with pytest.raises(DataError, match="has no split 'test'"):
        load("gpqa", split="test")

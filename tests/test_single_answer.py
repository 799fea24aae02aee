"""Rewards that cannot be gamed: an answer that hedges, lists, negates or pads candidates is wrong.

Online RL optimises whatever the reward lets through. Each case goes through a real environment
step (reward and ``terminated``), so a parser that reads only one of the candidates fails here.
"""

from __future__ import annotations

import gymnasium as gym
import pytest

import drift_envs  # noqa: F401 - registers the environments
from drift_envs import Problem
from drift_envs.multiple_choice.env import MultipleChoiceEnv
from drift_envs.multiple_choice.problems import MCProblem
from drift_envs.verify import math_equal, single_answer

MATH_PROBLEMS = (
    Problem("two", "What is 7 - 5?", "2", "test"),
    Problem("sum", "What is 37 + 48?", "85", "test"),
    Problem("half", "What is 1/4 + 1/4?", "1/2", "test"),
    Problem("thousand", "What is 999 + 1?", "1000", "test"),
)

# (problem id, reply after the "<answer>" prefix, solved?)
MATH_CASES = [
    # hedged
    ("two", "0 or 2</answer>", False),
    ("two", "2 or 0</answer>", False),
    ("two", "either 2 or 3</answer>", False),
    ("two", "maybe 2</answer>", False),
    ("two", "probably 2</answer>", False),
    ("two", "2?</answer>", False),
    ("two", "2 or 2</answer>", False),
    # listed
    ("two", "1, 2, 3, 2</answer>", False),
    ("two", "2, 3</answer>", False),
    ("two", "2; 3</answer>", False),
    ("two", "2 and 3</answer>", False),
    ("two", "1 2 3 2</answer>", False),
    # negated
    ("two", "the answer is not 2</answer>", False),
    ("two", "not 2</answer>", False),
    ("two", "it isn't 2</answer>", False),
    # padded: several numbers, or a false equation before the value
    ("two", "I think 0 but 2</answer>", False),
    ("two", "7 - 5 = 3 = 2</answer>", False),
    ("sum", "37 + 48 = 84 = 85</answer>", False),
    ("sum", "85 86</answer>", False),
    ("sum", "37 + 48</answer>", False),  # the question restated, not evaluated
    # single answers stay correct, in the forms the embedded model and math-verify give
    ("two", "2</answer>", True),
    ("two", "2", True),  # unclosed tag (lenient parse)
    ("two", "7 - 5 = 2</answer>", True),
    ("two", "7 - 5 = 2", True),
    ("two", "x = 2</answer>", True),
    ("two", "The answer is 2.</answer>", True),
    ("two", "\\boxed{2}</answer>", True),
    ("sum", "37 + 48 = 85", True),
    ("sum", "85 = 85</answer>", True),
    ("half", "0.5</answer>", True),
    ("half", "\\frac{1}{2}</answer>", True),
    ("half", "1/2</answer>", True),
    ("half", "1/4 + 1/4 = 1/2</answer>", True),
    ("thousand", "1,000</answer>", True),
    ("thousand", "999 + 1 = 1000</answer>", True),
]


@pytest.mark.parametrize(("problem_id", "reply", "solved"), MATH_CASES)
def test_math_env_accepts_exactly_one_answer(problem_id: str, reply: str, solved: bool) -> None:
    env = gym.make("drift/MathCorrection-v0", problems=MATH_PROBLEMS, max_turns=3, max_actions=3)
    env.reset(options={"problem_id": problem_id})
    _, reward, terminated, _, info = env.step("<answer>" + reply)
    assert (info["success"], terminated) == (solved, solved)
    assert (reward > 0) == solved


def test_gold_lists_allow_list_answers() -> None:
    """A set of roots as gold: the listed prediction is the answer, not a hedge."""
    assert math_equal("2, 3", "2, 3")
    assert not math_equal("2, 3", "2 or 3")
    assert single_answer("-1", "x = -1") == "-1"


# Multiple choice: options 84 / 85 / 86 / 87 in problem order (no shuffle); gold is B (85).
MC_CASES = [
    ("(B) or (C)", False),
    ("(C) or (B)", False),
    ("The answer is B or C", False),
    ("B or C", False),
    ("B, C", False),
    ("B/C", False),
    ("B and C", False),
    ("A B C D", False),
    ("B C", False),
    ("not B", False),
    ("The answer is not B", False),
    ("maybe B", False),
    ("B?", False),
    ("B. 86", False),  # the label and the text disagree
    ("84 or 85", False),
    ("B", True),
    ("(B)", True),
    ("B.", True),
    ("The answer is B", True),
    ("Answer: (B)", True),
    ("B. 85", True),
    ("85", True),
    ("37 + 48 = 85", True),
]


@pytest.mark.parametrize(("reply", "solved"), MC_CASES)
def test_multiple_choice_accepts_exactly_one_option(reply: str, solved: bool) -> None:
    problem = MCProblem("mc", "What is 37 + 48?", "85", "test", choices=("84", "85", "86", "87"), correct=1)
    env = MultipleChoiceEnv(problems=[problem], shuffle=False, max_turns=2, max_actions=2)
    env.reset(options={"problem_index": 0})
    _, reward, terminated, _, info = env.step(f"<answer>{reply}</answer>")
    assert (info["success"], terminated) == (solved, solved)
    assert (reward > 0) == solved


def test_an_option_whose_text_negates_is_still_an_answer() -> None:
    problem = MCProblem("neg", "Which holds?", "None of these is not true", "test",
                        choices=("x > 1", "None of these is not true"), correct=1)
    env = MultipleChoiceEnv(problems=[problem], shuffle=False, max_turns=1, max_actions=1)
    env.reset(options={"problem_index": 0})
    _, _, terminated, _, info = env.step("<answer>None of these is not true</answer>")
    assert info["success"] and terminated


def test_arithmetic_check_refuses_huge_powers_quickly() -> None:
    """The left side of ``=`` is evaluated without eval: a tower of powers is not computed."""
    assert single_answer("2", "9**9**9 = 2") == "2"
    assert not math_equal("2", "9**9**9 = 3")

"""Adversarial model output: each `step` returns promptly with the right reward, whatever the model wrote.

Megabyte replies, unclosed and nested tags, control characters and NUL bytes, answers that imitate the
environment's feedback, numbers of 10,000 digits, thousands of nested ``\\boxed{}``, and the worked form
``37 + 48 = 85`` with huge operands, through a real step of the math and the multiple-choice environment (the code
environment has its own hostile corpus, tests/test_sandbox.py). The time bound is loose for a busy CI machine; on
an idle one each of these steps takes milliseconds (math-verify's checks are capped at 1 s each,
``drift_envs.verify.CHECK_SECONDS``). Rewards with ``max_turns=3``: a correct answer 1.0, a wrong well-formed one
0.0, a reply without a closed ``<answer>`` block adds the format penalty -0.1 (so does one from which no answer
can be read, e.g. a multiple-choice reply that names no option).
"""

from __future__ import annotations

import logging
import signal
import time

import gymnasium as gym
import pytest

import drift_envs  # noqa: F401 - registers the environments
from drift_envs import Problem
from drift_envs.base import CORRECT_MESSAGE, MAX_TEXT_LENGTH, SIMPLE_FEEDBACK
from drift_envs.multiple_choice.problems import MCProblem
from drift_envs.verify import MAX_ANSWER_CHARS

SECONDS = 5.0
"""Loose bound on one step (the target is well under a second)."""
MIB = 1 << 20
ENVS = ("math", "mc")


def make(kind: str) -> gym.Env:
    """"What is 37 + 48?": gold 85 (math), option B of 84/85/86/87 shown in that order (multiple choice)."""
    if kind == "math":
        problems = (Problem("sum", "What is 37 + 48?", "85", "test"),)
        return gym.make("drift/MathCorrection-v0", problems=problems, max_turns=3, max_actions=3,
                        disable_env_checker=True)
    problems = (MCProblem.create("sum", "What is 37 + 48?", ["84", "85", "86", "87"], 1),)
    return gym.make("drift/MultipleChoice-v0", problems=problems, shuffle=False, max_turns=3, max_actions=3,
                    disable_env_checker=True)


@pytest.fixture(scope="module", autouse=True)
def warm() -> None:
    """Import math-verify (sympy and antlr: seconds) before any step is timed."""
    for kind in ENVS:
        env = make(kind)
        env.reset(options={"problem_index": 0})
        assert env.step("<answer>85</answer>")[2]


def timed_step(kind: str, reply: str, caplog: pytest.LogCaptureFixture) -> tuple:
    env = make(kind)
    env.reset(options={"problem_index": 0})
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        start = time.perf_counter()
        result = env.step(reply)
        elapsed = time.perf_counter() - start
    assert elapsed < SECONDS, f"step took {elapsed:.1f} s"
    # No log line quotes the reply whole: what is logged of an answer is capped (a few hundred characters).
    assert all(len(record.getMessage()) < 2 * MAX_ANSWER_CHARS for record in caplog.records)
    return result


BIG_OPERAND = "1" * 150
"""150 digits: past float precision, within the length an equation is checked at (exactly)."""

# (case, reply, {env: (solved, reward)})
CASES = [
    # replies of megabytes
    ("1 MiB of digits in the answer block", "<answer>" + "8" * (MIB - 100) + "</answer>",
     {"math": (False, 0.0), "mc": (False, -0.1)}),
    ("right answer, then a 1 MiB tail", "<answer>85</answer>" + "x" * (MIB - 100),
     {"math": (True, 1.0), "mc": (True, 1.0)}),
    ("1 MiB line without tags", "y" * (MIB - 1), {"math": (False, -0.1), "mc": (False, -0.1)}),
    # nested and unclosed tags
    ("a megabyte of unclosed <think>", "<think>" * (MIB // 8), {"math": (False, -0.1), "mc": (False, -0.1)}),
    ("a megabyte of unclosed <answer>", "<answer>" * (MIB // 9), {"math": (False, -0.1), "mc": (False, -0.1)}),
    ("<answer> nested 1,000 deep", "<answer>" * 1000 + "85" + "</answer>" * 1000,
     {"math": (False, 0.0), "mc": (False, -0.1)}),
    ("<think> nested 1,000 deep, then an answer", "<think>" * 1000 + "x" + "</think>" * 1000 + "<answer>85</answer>",
     {"math": (True, 1.0), "mc": (True, 1.0)}),
    ("unclosed <think> holding the answer", "<think>85", {"math": (False, -0.1), "mc": (False, -0.1)}),
    ("closed answer after an unclosed <think>", "<think>" * 1000 + "<answer>85</answer>",
     {"math": (True, 1.0), "mc": (True, 1.0)}),
    # control characters and NUL bytes: an answer holding one is no answer
    ("NUL inside the number", "<answer>8\x005</answer>", {"math": (False, -0.1), "mc": (False, -0.1)}),
    ("NUL around the number", "<answer>\x0085\x00</answer>", {"math": (False, -0.1), "mc": (False, -0.1)}),
    ("ANSI colour codes", "<answer>\x1b[31m85\x1b[0m</answer>", {"math": (False, -0.1), "mc": (False, -0.1)}),
    ("bell after the number", "<answer>85\x07</answer>", {"math": (False, -0.1), "mc": (False, -0.1)}),
    ("a megabyte of NUL bytes", "<answer>" + "\x00" * (MIB - 100), {"math": (False, -0.1), "mc": (False, -0.1)}),
    ("whitespace controls are whitespace", "<answer>\x0c85\x0b</answer>", {"math": (True, 1.0), "mc": (True, 1.0)}),
    # imitating the feedback
    ("Correct! as the answer", "<answer>Correct!</answer>", {"math": (False, 0.0), "mc": (False, -0.1)}),
    ("Correct! without tags", CORRECT_MESSAGE, {"math": (False, -0.1), "mc": (False, -0.1)}),
    ("the simple feedback", SIMPLE_FEEDBACK, {"math": (False, -0.1), "mc": (False, -0.1)}),
    ("the full-feedback block", "<answer>Reward:\n1.0\nTurn 2:\nState:\nCorrect!\nYou have 2 actions left. Always "
     "output: <answer> [your answer] </answer> with no extra text.</answer>",
     {"math": (False, 0.0), "mc": (False, -0.1)}),
    ("a wrong answer, then a fake Correct!", "<answer>84</answer>\nCorrect!\nReward:\n1.0",
     {"math": (False, 0.0), "mc": (False, 0.0)}),
    # numbers of 10,000 digits
    ("10,000 nines", "<answer>" + "9" * 10_000 + "</answer>", {"math": (False, 0.0), "mc": (False, -0.1)}),
    ("10,000-digit fraction", "<answer>" + "9" * 10_000 + "/" + "9" * 10_000 + "</answer>",
     {"math": (False, 0.0), "mc": (False, -0.1)}),
    # over MAX_ANSWER_CHARS: wrong, though it is 85 (no problem's answer is that long)
    ("85 with 10,000 zero decimals", "<answer>85." + "0" * 10_000 + "</answer>",
     {"math": (False, 0.0), "mc": (False, -0.1)}),
    # deeply nested \boxed{}
    ("\\boxed{} 3,000 deep", "<answer>" + "\\boxed{" * 3000 + "85" + "}" * 3000 + "</answer>",
     {"math": (False, 0.0), "mc": (False, -0.1)}),
    ("\\boxed{} 3,000 deep, unclosed", "<answer>" + "\\boxed{" * 3000 + "85</answer>",
     {"math": (False, 0.0), "mc": (False, -0.1)}),
    ("\\boxed{} twice", "<answer>\\boxed{\\boxed{85}}</answer>", {"math": (True, 1.0), "mc": (False, -0.1)}),
    # the worked form with huge operands: the equation is checked exactly, however long its numbers
    ("false equation, 5,000-digit operands", "<answer>" + "9" * 5000 + " + " + "9" * 5000 + " = 85</answer>",
     {"math": (False, 0.0), "mc": (False, -0.1)}),
    ("false equation, 150-digit operand", f"<answer>{BIG_OPERAND} + 48 = 85</answer>",
     {"math": (False, 0.0), "mc": (False, -0.1)}),
    ("true equation, 150-digit operands", f"<answer>{BIG_OPERAND} + 85 - {BIG_OPERAND} = 85</answer>",
     {"math": (True, 1.0), "mc": (True, 1.0)}),
    ("false equation past float range", "<answer>999999^64 + 48 = 85</answer>",
     {"math": (False, 0.0), "mc": (False, -0.1)}),
    ("division by zero", "<answer>1/0 = 85</answer>", {"math": (False, 0.0), "mc": (False, -0.1)}),
    ("the worked form itself", "<answer>37 + 48 = 85</answer>", {"math": (True, 1.0), "mc": (True, 1.0)}),
]


@pytest.mark.parametrize("kind", ENVS)
@pytest.mark.parametrize(("case", "reply", "expected"), CASES, ids=[c[0] for c in CASES])
def test_step_is_prompt_and_rewards_right(kind: str, case: str, reply: str, expected: dict,
                                          caplog: pytest.LogCaptureFixture) -> None:
    solved, reward = expected[kind]
    observation, got, terminated, truncated, info = timed_step(kind, reply, caplog)
    assert (info["success"], terminated) == (solved, solved)
    assert got == pytest.approx(reward)
    assert not truncated and not info["oversized"]
    assert (observation == CORRECT_MESSAGE) == solved
    if not solved:
        assert observation.endswith(SIMPLE_FEEDBACK)


@pytest.mark.parametrize("kind", ENVS)
def test_a_reply_over_the_action_space_limit_is_malformed(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """A 5 MB reply (the action space holds 1 Mi characters) is not read, even with the right answer first: no
    answer, the format penalty. One at the limit is read."""
    env = make(kind)
    assert env.action_space.max_length == MAX_TEXT_LENGTH == MIB
    answer = "<answer>85</answer>"
    at_limit = answer + " " * (MIB - len(answer))
    assert env.action_space.contains(at_limit) and not env.action_space.contains(at_limit + " ")
    for reply in (at_limit + " ", answer + " " * (5 * MIB)):
        observation, reward, terminated, truncated, info = timed_step(kind, reply, caplog)
        assert info["oversized"] and not info["is_action"] and not info["well_formed"]
        assert not terminated and reward == pytest.approx(-0.1) and observation == SIMPLE_FEEDBACK
        assert info["rendered_reply"] == reply  # the record keeps what the model wrote
    *_, info = timed_step(kind, at_limit, caplog)
    assert info["success"] and not info["oversized"]


@pytest.mark.parametrize("kind", ENVS)
def test_an_episode_of_megabyte_replies_ends_with_its_penalties(kind: str) -> None:
    """Three oversized or unreadable replies: the turn limit ends the episode; the record holds three turns,
    three format penalties and no answers."""
    env = make(kind)
    env.reset(options={"problem_index": 0})
    replies = ["<answer>85</answer>" + " " * (5 * MIB), "<think>" * (MIB // 8), "\x00" * MIB]
    results = [env.step(reply) for reply in replies]
    assert [r[3] for r in results] == [False, False, True]  # truncated at the third
    stats = results[-1][4]["episode"]
    assert stats.num_turns == 3 and stats.num_actions == 0 and stats.format_penalty == pytest.approx(-0.3)
    assert sum(r[1] for r in results) == pytest.approx(-0.3)


def test_math_verify_out_of_time_is_capped_and_logged_short(caplog: pytest.LogCaptureFixture) -> None:
    """An answer math-verify cannot parse in time (nesting it explores for minutes) is unparsable after 1 s, and
    the warning quotes only the start of it (math-verify's own warning quoted the whole text)."""
    answer = "{" * (MAX_ANSWER_CHARS - 10)
    handler = signal.getsignal(signal.SIGALRM)
    observation, reward, terminated, _, info = timed_step("math", f"<answer>{answer}</answer>", caplog)
    assert not terminated and reward == 0.0
    # The time limit is a signal timer: it is cleared and the previous handler is back.
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings and all(r.name == "drift_envs.verify" for r in warnings)
    assert all(answer not in r.getMessage() and len(r.getMessage()) < 400 for r in warnings)

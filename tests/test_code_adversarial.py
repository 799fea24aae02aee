"""``drift/CodeFeedback-v0`` against hostile model output: every step returns in bounded time with the right reward.

Megabyte replies, nested and unclosed fences and tags, control characters and NUL bytes, replies
that imitate the feedback or forge results, 10,000-digit numbers. The bound is loose, for a busy
2-core CI machine (a sandboxed run takes 0.05-0.5 s there); what it guards against is of another
order: the reply parser once took 60 s for a reply of 20,000 unclosed ``<answer>`` tags.
"""

from __future__ import annotations

import sys
import time

import pytest

from drift_envs.base import CORRECT_MESSAGE, SIMPLE_FEEDBACK
from drift_envs.code.env import MAX_CODE_CHARS, CodeFeedbackEnv
from drift_envs.code.problems import CodeProblem, CodeTest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

STEP_BOUND_S = 20.0
"""Loose bound on one step (parsing, judging in the sandbox, feedback)."""
MIB = 1 << 20
RIGHT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"  # passes add(0, 0) == 0 only
FORMAT_PENALTY = -0.1

POWER = CodeProblem(
    id="test/power", question="Write power(n) returning 10 ** n.", answer="def power(n):\n    return 10 ** n\n",
    entry_point="power", tests=(CodeTest("assert power(10000) == 10 ** 10000", "assert power(10000) == 10 ** 10000"),
                                CodeTest("assert power(3) == 1000", "assert power(3) == 1000")),
)


def fenced(code: str) -> str:
    return f"```python\n{code}```"


def timed_step(env: CodeFeedbackEnv, reply: str):
    start = time.monotonic()
    outcome = env.step(reply)
    elapsed = time.monotonic() - start
    assert elapsed < STEP_BOUND_S, f"step took {elapsed:.1f} s"
    return outcome


# (reply, reward, terminated, text the observation must contain, text it must not contain)
CASES = {
    # -- size
    "right code padded to 60 KB with comments": (
        fenced(RIGHT + "# padding\n" * 6000), 1.0, True, CORRECT_MESSAGE, None),
    # Just under the action space's 1 MiB limit (a longer reply is malformed before any code is read).
    "right code padded to 1 MiB with comments": (
        fenced(RIGHT + "# padding\n" * ((MIB - 1024) // 10)), 0.0, False, f"the limit is {MAX_CODE_CHARS}", "Passed"),
    "a 1 MiB list literal": (
        fenced("X = [" + "1," * ((MIB - 1024) // 2) + "]\n" + RIGHT), 0.0, False, "It was not run.", None),
    "right code in a reply over the action space's 1 MiB": (
        fenced(RIGHT + "# padding\n" * (MIB // 10)), FORMAT_PENALTY, False, SIMPLE_FEEDBACK, "Passed"),
    "1 MiB of prose around a right block": (
        "word " * ((MIB - 1024) // 10) + fenced(RIGHT) + " word" * ((MIB - 1024) // 10), 1.0, True, CORRECT_MESSAGE,
        None),
    "170,000 lines of code": (fenced("x = 1\n" * 170_000 + RIGHT), 0.0, False, "characters long", None),
    # -- fences and tags
    "100,000 nested unclosed fences": ("```python\n" * 100_000, FORMAT_PENALTY, False, "It was not run.", None),
    "1,000 nested unclosed fences": ("```python\n" * 1000, FORMAT_PENALTY, False, "syntax error", None),
    "nested fences around right code": (
        "```python\n```python\n" + RIGHT + "```\n```", FORMAT_PENALTY, False, "syntax error", None),
    "a million backticks": ("`" * 1_000_000, FORMAT_PENALTY, False, "It was not run.", None),
    "100,000 unclosed <think> tags": ("<think>" * 100_000, FORMAT_PENALTY, False, SIMPLE_FEEDBACK, "syntax"),
    "100,000 unclosed <answer> tags": ("<answer>" * 100_000, FORMAT_PENALTY, False, "It was not run.", None),
    "5,000 unclosed <answer> tags": ("<answer>" * 5000, FORMAT_PENALTY, False, "syntax error", None),
    "unclosed <answer> tags before right code": ("<answer>" * 50_000 + "\n" + fenced(RIGHT), 1.0, True,
                                                 CORRECT_MESSAGE, None),
    "deeply nested parentheses": (fenced("x = " + "(" * 10_000 + "\n" + RIGHT), 0.0, False, "nested", None),
    # -- characters
    "a NUL byte in the code": (fenced(RIGHT.replace("a + b", "a + b\0")), 0.0, False, "null bytes", None),
    "control characters in strings and comments, CRLF line ends": (
        fenced("def add(a, b):\r\n    '\x1b[31m\x07\x08\x7f\u202e'  # \x0c\x01\r\n    return a + b\r\n"), 1.0, True,
        CORRECT_MESSAGE, None),
    "a lone surrogate in the code": (fenced(RIGHT.replace("a + b", "a + b  # \ud800")), 0.0, False,
                                     "syntax error", None),
    # -- imitation and forgery
    "a reply that says it passed": (
        "Correct!\nPassed 4 of 4 tests.\n" + fenced("print('Correct!')\nprint('Passed 4 of 4 tests.')\n" + WRONG)
        + "\nCorrect!", 0.0, False, "Passed 1 of 4 tests", "Passed 4 of 4"),
    "forged result records on stdout and fd 3": (
        fenced("import os\nfor fd in (1, 2, 3):\n    try:\n"
               "        os.write(fd, b'{\"test\": 1, \"passed\": true}\\n')\n"
               "    except OSError:\n        pass\n" + WRONG), 0.0, False, "Passed 1 of 4 tests", None),
    "feedback text as the whole reply": (
        f"Passed 4 of 4 tests.\n{CORRECT_MESSAGE}\n{SIMPLE_FEEDBACK}", FORMAT_PENALTY, False, "syntax error", None),
    # -- numbers
    "a 10,000-digit literal": (fenced("def add(a, b):\n    return " + "7" * 10_000 + "\n"), 0.0, False,
                               "Incorrect", None),
    "a 10,000-digit result": (fenced("def add(a, b):\n    return 10 ** 10_000\n"), 0.0, False,
                              "Got: <int too large to show>", None),
    "a 10,000-digit number in the prose": ("7" * 10_000 + "\n" + fenced(RIGHT), 1.0, True, CORRECT_MESSAGE, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_reply_is_judged_in_bounded_time(name):
    reply, reward, terminated, shown, hidden = CASES[name]
    env = CodeFeedbackEnv(source="builtin")
    env.reset(options={"problem_id": "builtin/add"})
    observation, got, done, truncated, info = timed_step(env, reply)
    assert got == pytest.approx(reward) and done is terminated and not truncated, (observation[:500], info)
    assert shown in observation, observation[:1000]
    if hidden is not None:
        assert hidden not in observation
    assert len(observation) < 4000  # the feedback stays short whatever the reply
    if not terminated:  # the episode goes on normally afterwards
        observation, got, done, *_ = timed_step(env, fenced(RIGHT))
        assert done and got == pytest.approx(1.0)


def test_10000_digit_values_cross_the_sandbox_exactly():
    env = CodeFeedbackEnv(problems=[POWER])
    env.reset()
    observation, reward, terminated, *_ = timed_step(env, fenced("def power(n):\n    return 10 ** n\n"))
    assert terminated and reward == 1.0, observation
    env.reset()
    observation, reward, terminated, _, info = timed_step(env, fenced("def power(n):\n    return 10 ** n + 1\n"))
    assert not terminated and reward == 0.0 and info["pass_rate"] == 0.0
    assert "Passed 0 of 2 tests" in observation and "Got: <int too large to show>" in observation


def test_a_megabyte_reply_is_recorded_once_normalised_cheaply():
    env = CodeFeedbackEnv(source="builtin", max_turns=2, max_actions=2)
    env.reset(options={"problem_id": "builtin/add"})
    huge = fenced(RIGHT + "# padding\n" * ((MIB - 1024) // 10))
    timed_step(env, huge)
    _, reward, _, truncated, info = timed_step(env, huge)  # the same reply again: a repeat
    assert truncated and info["episode"].repetition_penalty == pytest.approx(0.25)
    assert reward == pytest.approx(0.0 - 0.25)  # no partial credit: code over the limit passes nothing

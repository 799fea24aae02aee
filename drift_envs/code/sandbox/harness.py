"""Test suites: a solution and its test snippets, each test reported; the host side.

:func:`run_suite` runs the suite in one sandboxed run of two processes: the judge
(:mod:`.judge`) runs the trusted code (prelude, setup, tests) and the solution's process
(:mod:`.server`) runs the solution, whose functions the tests call through proxies. Values
cross between them only as plain data (:mod:`.wire`), so no object the solution makes takes
part in a test's comparisons, and the results come back over a channel the solution's process
cannot reach, tagged with a nonce it never holds.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from drift_envs.code.sandbox.config import SandboxConfig, SandboxError, SandboxResult, SandboxStatus
from drift_envs.code.sandbox.host import run_child

GOT_NAME = "_drift_got"
"""Variable an instrumented test assertion binds to the value it checked."""


@dataclass(frozen=True)
class CaseResult:
    """One test snippet's outcome."""

    index: int
    """Position in the list of tests (0-based)."""
    passed: bool
    """It ran to the end without raising."""
    error: str = ""
    """One line: the exception (``AssertionError``, ``NameError: name 'x' is not defined``),
    ``Timeout: ...``, or why it did not run."""
    traceback: str = ""
    """Traceback frames in the prelude, solution and setup code (the test's own frames and
    the harness's are left out); empty when the test itself raised (a failed assertion)."""
    got: str | None = None
    """Short repr of the value the failing assertion checked (``f(x)`` in ``assert f(x) == y``)."""


@dataclass(frozen=True)
class SuiteResult:
    """A solution's run against its tests."""

    cases: tuple[CaseResult, ...]
    """One result per test, in order (tests that never ran are failed with the reason)."""
    load_error: str = ""
    """The prelude, solution or setup raised before the tests (one line), or empty."""
    load_traceback: str = ""
    """Traceback of :attr:`load_error`."""
    load_stage: str = ""
    """Which part raised: ``prelude``, ``solution`` or ``setup``."""
    sandbox: SandboxResult | None = None
    """The underlying run."""

    @property
    def passed(self) -> int:
        return sum(case.passed for case in self.cases)

    @property
    def total(self) -> int:
        return len(self.cases)

    @property
    def score(self) -> float:
        """Fraction of tests passed (0 without tests)."""
        return self.passed / self.total if self.cases else 0.0

    @property
    def all_passed(self) -> bool:
        return bool(self.cases) and self.passed == self.total

    @property
    def first_failure(self) -> CaseResult | None:
        return next((case for case in self.cases if not case.passed), None)


def run_suite(
    solution: str,
    tests: Sequence[str],
    *,
    prelude: str = "",
    setup: str = "",
    test_timeout_s: float = 3.0,
    config: SandboxConfig | None = None,
    instrument: bool = True,
    entry_point: str | None = None,
) -> SuiteResult:
    """Run ``solution`` against each test snippet; a test passes when it runs without raising.

    ``prelude`` is trusted code the solution may rely on (a prompt's imports, helpers and the
    stub to complete): it runs before the solution in the solution's process, and in the judge's
    before ``setup`` (imports, constants the tests use) and the tests. The tests see the
    solution's top-level functions and classes (called in its process; arguments and results
    are copied as plain values), copies of its other top-level values, and the modules it
    imported (imported afresh in the judge). A name the prelude defines stays the prelude's,
    so tests use the trusted helpers, except ``entry_point``, the function the solution writes.

    Each test gets ``test_timeout_s`` (the prelude and the solution as well, to load); tests
    that never ran (the whole run hit a limit, the solution's process died) count as failed.
    """
    if test_timeout_s <= 0:
        raise ValueError(f"test_timeout_s must be > 0, got {test_timeout_s}")
    cfg = config or SandboxConfig()
    tests = list(tests)
    nonce = secrets.token_hex(16)
    timeout = float(test_timeout_s)
    solution_side = {"parts": [("prelude", "prompt.py", prelude), ("solution", "solution.py", solution)],
                     "test_timeout": timeout, "max_bytes": cfg.max_channel_bytes, "entry_point": entry_point}
    judge_side = {"nonce": nonce, "prelude": prelude, "setup": setup, "tests": tests, "test_timeout": timeout,
                  "instrument": bool(instrument), "got_name": GOT_NAME, "entry_point": entry_point,
                  "load_timeout": 2 * timeout + 2.0}
    result = run_child(json.dumps(solution_side), cfg, mode="suite", judge_payload=json.dumps(judge_side))
    if result.status is SandboxStatus.ERROR:
        raise SandboxError(result.message or "the sandbox failed")
    records: dict[int, dict] = {}
    load: dict | None = None
    for line in result.channel.decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or record.get("nonce") != nonce:
            continue
        if "stage" in record and load is None and "error" in record:
            load = record
        elif isinstance(record.get("test"), int) and record["test"] not in records:
            records[record["test"]] = record
    missing = _why_not_run(result, load)
    cases = []
    for index in range(len(tests)):
        record = records.get(index)
        if record is None:
            cases.append(CaseResult(index, False, error=missing))
        else:
            got = record.get("got")
            cases.append(CaseResult(index, bool(record.get("passed")), error=str(record.get("error", "")),
                                    traceback=str(record.get("traceback", "")),
                                    got=got if isinstance(got, str) else None))
    if load is not None:
        return SuiteResult(tuple(cases), load_error=str(load.get("error", "")),
                           load_traceback=str(load.get("traceback", "")), load_stage=str(load.get("stage", "")),
                           sandbox=result)
    return SuiteResult(tuple(cases), sandbox=result)


def _why_not_run(result: SandboxResult, load: dict | None) -> str:
    if load is not None:
        return f"not run: the {load.get('stage', 'solution')} raised {load.get('error', 'an error')}"
    if result.status in (SandboxStatus.TIMEOUT, SandboxStatus.MEMORY_LIMIT, SandboxStatus.CRASHED):
        return f"not run: {result.message}"
    return f"not run: the program exited early (status {result.returncode})"

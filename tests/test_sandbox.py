"""The sandbox against hostile programs: each is contained and the machine is healthy afterwards.

After every test an autouse fixture checks that no sandboxed process is left (by the marker on
their command line and by the sandbox user ids, scanning /proc) and that no per-run directory
is left in the temporary directory. Both checks look only at this test process's sandboxes, so
other processes running sandboxes at the same time cannot fail them.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from drift_envs.code.sandbox import (
    MARKER,
    SANDBOX_UID_BASE,
    SandboxConfig,
    SandboxError,
    SandboxStatus,
    run_python,
    run_suite,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

IS_ROOT = os.geteuid() == 0
ROOT_ONLY = ("needs the user switch, so root (CI runs this file as root); the test_unprivileged_* tests "
             "check what holds for any user")
"""Why a test that relies on the fresh user id skips for other users."""
FAST = dict(wall_time_s=5.0, cpu_time_s=2, memory_bytes=256 << 20, file_size_bytes=1 << 20)
"""Tight limits so the whole file runs in seconds."""


def fast(**overrides) -> SandboxConfig:
    return SandboxConfig(**{**FAST, **overrides})


def run(source: str, **overrides):
    return run_python(textwrap.dedent(source), fast(**overrides))


def _proc(pid: int) -> tuple[str, dict[str, str]] | None:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return cmdline, dict(line.split(":", 1) for line in status.splitlines() if ":" in line)


def _is_sandbox(cmdline: str, fields: dict[str, str]) -> bool:
    return MARKER in cmdline or int(fields["Uid"].split()[0]) >= SANDBOX_UID_BASE


def _ours_or_orphaned(pid: int) -> bool:
    """The sandbox process's first non-sandbox ancestor is this test process, or init (a leaked
    sandbox process is re-parented there). Another live test run's sandboxes are neither."""
    seen = set()
    while pid not in seen:
        seen.add(pid)
        info = _proc(pid)
        if info is None:
            return True  # its parent vanished: it is being re-parented to init
        parent = int(info[1]["PPid"])
        if parent in (0, 1) or parent == os.getpid():
            return True
        parent_info = _proc(parent)
        if parent_info is None:
            return True
        if not _is_sandbox(*parent_info):
            return False
        pid = parent
    return True


def _sandbox_processes() -> list[str]:
    """Processes that carry the sandbox marker or run as a sandbox user id: live ones, and
    dead ones (zombies) that this process has not reaped. A killed grandchild is a zombie
    until init reaps it; that is init's, not ours. Other test runs' sandboxes (concurrent
    pytest processes) are left out."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or (info := _proc(int(name))) is None:
            continue
        cmdline, fields = info
        zombie = fields["State"].split()[0] in ("Z", "X")
        if zombie and int(fields["PPid"]) != os.getpid():
            continue
        if _is_sandbox(cmdline, fields) and _ours_or_orphaned(int(name)):
            uid = int(fields["Uid"].split()[0])
            found.append(f"{name}: uid {uid}: {fields['State'].strip()}: {cmdline[:80]}")
    return found


def _run_dir_prefix() -> str:
    """Run directories carry the host's pid (checked by a test below)."""
    return f"{MARKER}-{os.getpid()}-"


def _run_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith(_run_dir_prefix())}


@pytest.fixture(autouse=True)
def machine_stays_healthy():
    dirs_before = _run_dirs()
    yield
    assert _sandbox_processes() == []
    assert _run_dirs() - dirs_before == set()


# -- ordinary programs -------------------------------------------------------------------------


def test_passing_program_output_and_clean_environment(monkeypatch):
    monkeypatch.setenv("DRIFT_SANDBOX_SECRET", "s3cr3t-value-42")
    result = run("""
        import os
        print("hello")
        print(sorted(os.environ))
        print(os.listdir("."))
        print(repr(os.environ.get("DRIFT_SANDBOX_SECRET")))
    """)
    assert result.status is SandboxStatus.PASSED, result.stderr
    assert result.ok and result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0] == "hello"
    assert "DRIFT_SANDBOX_SECRET" not in lines[1] and "PATH" in lines[1]
    assert lines[2] == "[]"  # an empty working directory
    assert lines[3] == "None"
    assert result.duration_s > 0 and result.cpu_time_s > 0
    assert result.max_rss_bytes is not None and 0 < result.max_rss_bytes <= result.max_rss_bound_bytes


def test_run_directory_names_the_host_and_is_removed():
    result = run("import os\nprint(os.getcwd())\n")
    work = Path(result.stdout.strip())
    assert result.status is SandboxStatus.PASSED, result.stderr
    assert work.name == "work" and work.parent.parent == Path(tempfile.gettempdir())
    assert work.parent.name.startswith(_run_dir_prefix())  # what the fixture's directory check relies on
    assert not work.parent.exists()


def test_peak_memory_is_the_program_s_own_not_the_host_s():
    # A large host (a loaded model): Linux keeps ru_maxrss across execve, so the kernel's
    # figure for the child includes this image; the reported peak must not.
    host = b"\1" * (400 << 20)
    small = run("x = 1\n")
    grown = run("data = b'x' * (40 << 20)\n")
    assert len(host) == 400 << 20  # kept alive (and resident) during both runs
    assert small.status is SandboxStatus.PASSED and grown.status is SandboxStatus.PASSED, small.stderr + grown.stderr
    assert small.max_rss_bound_bytes >= 400 << 20  # the kernel behaviour this test is about
    assert small.max_rss_bytes is not None and 0 < small.max_rss_bytes < 60 << 20
    assert grown.max_rss_bytes is not None and 40 << 20 < grown.max_rss_bytes < small.max_rss_bytes + (60 << 20)


def test_parent_environment_not_readable_through_proc(monkeypatch):
    monkeypatch.setenv("DRIFT_SANDBOX_SECRET", "s3cr3t-value-42")
    result = run("""
        import os
        try:
            print(open(f"/proc/{os.getppid()}/environ", "rb").read())
        except OSError as err:
            print("refused", type(err).__name__)
    """)
    assert "s3cr3t-value-42" not in result.stdout + result.stderr
    if result.uid is None:
        pytest.skip(f"the program runs as this user and may read /proc/<parent>/environ: {ROOT_ONLY}")
    assert "refused PermissionError" in result.stdout


def test_failing_program_reports_the_traceback():
    result = run("""
        def f():
            raise ValueError("boom")
        f()
    """)
    assert result.status is SandboxStatus.FAILED
    assert result.returncode == 1
    assert "ValueError: boom" in result.stderr
    assert 'File "main.py", line 3, in f' in result.stderr


def test_syntax_error():
    result = run("def f(:\n    pass\n")
    assert result.status is SandboxStatus.SYNTAX_ERROR
    assert "SyntaxError" in result.stderr and "main.py" in result.stderr


def test_sys_exit_code_is_kept():
    assert run("import sys; sys.exit(3)").returncode == 3
    assert run("import sys; sys.exit(0)").status is SandboxStatus.PASSED


def test_files_inside_the_working_directory_work():
    result = run("""
        import os, shutil, tempfile
        with open("out.txt", "w") as handle:
            handle.write("data")
        print(open("out.txt").read(), tempfile.mkstemp()[1].startswith(os.getcwd()))
        with tempfile.TemporaryDirectory() as scratch:  # cleaned up with dir_fd-relative calls
            os.makedirs(os.path.join(scratch, "a", "b"))
        os.makedirs("x/y")
        shutil.rmtree("x")
        print(sorted(p for p in os.listdir(".") if not p.startswith("tmp")))
    """)
    assert result.stdout.split("\n")[:2] == ["data True", "['out.txt']"], result.stdout + result.stderr


def test_unremovable_files_and_links_are_cleaned_up_without_following_links(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    result = run(f"""
        import os
        os.makedirs("locked/inner")
        open("locked/inner/f.txt", "w").write("x")
        os.symlink({str(victim)!r}, "link")
        os.symlink({str(tmp_path)!r}, "dirlink")
        os.chmod("locked/inner", 0)
        os.chmod("locked", 0)
    """, guard=False)
    assert result.status is SandboxStatus.PASSED, result.stderr
    assert victim.read_text() == "original"  # the fixture checks the run directory is gone


def test_sandbox_setup_failure_is_an_error_not_a_crash():
    result = run_python("print(1)", fast(python="/nonexistent/python3"))
    assert result.status is SandboxStatus.ERROR and "cannot start" in result.message
    with pytest.raises(SandboxError):
        run_suite("x = 1", ["assert x == 1"], config=fast(python="/nonexistent/python3"))


# -- hostile programs ----------------------------------------------------------------------------


def test_infinite_loop_hits_the_cpu_limit():
    start = time.monotonic()
    result = run("while True:\n    pass\n", cpu_time_s=1, wall_time_s=10)
    assert result.status is SandboxStatus.TIMEOUT
    assert "CPU-time limit" in result.message
    assert result.max_rss_bytes is None and result.max_rss_bound_bytes > 0  # killed: no report, only the bound
    assert time.monotonic() - start < 10  # the wall clock (10 s) would say "wall-clock limit"; loose for busy CI


def test_sleeping_forever_hits_the_wall_clock_limit():
    start = time.monotonic()
    result = run("import time\ntime.sleep(1000)\n", wall_time_s=0.8)
    assert result.status is SandboxStatus.TIMEOUT
    assert "wall-clock limit" in result.message
    assert time.monotonic() - start < 8  # loose: a busy 2-core machine


@pytest.mark.parametrize("program", [
    "x = bytearray(8 << 30)\n",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))\n",
])
def test_memory_bomb_hits_the_memory_limit(program):
    result = run(program, memory_bytes=256 << 20)
    assert result.status is SandboxStatus.MEMORY_LIMIT
    assert result.max_rss_bytes is not None and result.max_rss_bytes < 300 << 20


def test_fork_bomb_is_refused_by_the_guard():
    result = run("import os\nwhile True:\n    os.fork()\n")
    assert result.status is SandboxStatus.FAILED
    assert "PermissionError: sandbox: os.fork is not allowed" in result.stderr


@pytest.mark.parametrize("program", [
    # The guard switched off: only the process limit stands in the way.
    ("import os\nwhile True:\n    os.fork()\n", False),
    ("import subprocess\nsubprocess.Popen(['sleep', '60'])\n", False),
    ("import os\nif os.fork() == 0:\n    os.setsid()\n    import time\n    time.sleep(60)\n", False),
    # The guard bypassed by re-importing the builtin module.
    ("import sys\ndel sys.modules['posix']\nimport posix\nwhile True:\n    posix.fork()\n", True),
])
def test_fork_bomb_is_stopped_by_the_process_limit(program):
    source, guard = program
    if IS_ROOT and not fast().drop_privileges:
        pytest.skip("root without the user switch: the kernel does not enforce RLIMIT_NPROC for root")
    result = run(source, guard=guard)
    assert result.status is SandboxStatus.FAILED
    assert "BlockingIOError" in result.stderr  # EAGAIN from fork()


def test_subprocess_import_is_refused_by_the_guard():
    result = run("import subprocess\nsubprocess.run(['true'])\n")
    assert result.status is SandboxStatus.FAILED
    assert "ModuleNotFoundError" in result.stderr or "ImportError" in result.stderr


def test_processes_started_under_a_looser_limit_are_killed():
    # Up to 3 extra processes may start; they sleep forever and must be gone afterwards
    # (checked by the fixture), both the process group and a process that left it.
    result = run("""
        import os, time
        for _ in range(2):
            if os.fork() == 0:
                os.setsid()
                time.sleep(60)
        time.sleep(60)
    """, guard=False, max_processes=3, wall_time_s=1.0)
    if result.uid is None:
        pytest.skip(f"without a fresh user id the process limit counts all of this user's processes: {ROOT_ONLY}")
    assert result.status is SandboxStatus.TIMEOUT


@pytest.mark.parametrize("guard", [True, False])
def test_writing_outside_the_working_directory_fails(tmp_path, guard):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    new_file = tmp_path / "created.txt"
    result = run(f"""
        for path, mode in (({str(victim)!r}, "w"), ({str(victim)!r}, "a"), ({str(new_file)!r}, "x")):
            try:
                with open(path, mode) as handle:
                    handle.write("pwned")
                print("wrote", path)
            except OSError as err:
                print("refused", type(err).__name__)
    """, guard=guard)
    if not guard and result.uid is None:
        pytest.skip(f"without the guard the program has the test's own permissions: {ROOT_ONLY}")
    assert victim.read_text() == "original"
    assert not new_file.exists()
    assert result.stdout.split().count("refused") == 3, result.stdout + result.stderr


@pytest.mark.parametrize("guard", [True, False])
def test_deleting_files_outside_fails(tmp_path, guard):
    victim = tmp_path / "keep" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("original")
    result = run(f"""
        import os, shutil
        for action in (lambda: os.remove({str(victim)!r}), lambda: shutil.rmtree({str(tmp_path)!r}),
                       lambda: os.rename({str(victim)!r}, "stolen.txt"), lambda: os.chmod({str(victim)!r}, 0)):
            try:
                action()
                print("done")
            except OSError as err:
                print("refused", type(err).__name__)
    """, guard=guard)
    if not guard and result.uid is None:
        pytest.skip(f"without the guard the program has the test's own permissions: {ROOT_ONLY}")
    assert victim.read_text() == "original"
    assert (victim.stat().st_mode & 0o777) != 0
    assert result.stdout.split().count("refused") == 4, result.stdout + result.stderr


def test_network_is_unreachable():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    program = f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"leak")
            print("connected")
        except OSError as err:
            print("refused", err.errno)
    """
    try:
        result = run(program)
        if not result.network_isolated:
            pytest.skip("no network namespace here (needs CAP_SYS_ADMIN or unprivileged user namespaces)")
        assert result.stdout.startswith("refused"), result.stdout + result.stderr
        with pytest.raises(BlockingIOError):
            listener.accept()
        # The same program without the namespace does reach the port: the check above is real.
        open_result = run(program, network="off")
        assert not open_result.network_isolated and open_result.stdout.strip() == "connected"
        listener.setblocking(True)
        listener.settimeout(2)
        listener.accept()[0].close()
    finally:
        listener.close()


def test_required_network_isolation_fails_cleanly_where_impossible():
    result = run("print('ran')", network="require")
    if result.network_isolated:
        assert result.status is SandboxStatus.PASSED and result.stdout == "ran\n"
    else:
        assert result.status is SandboxStatus.ERROR and "network namespace" in result.message
        assert result.stdout == ""


def test_huge_output_is_truncated():
    result = run("import sys\nsys.stdout.write('x' * (5 << 20))\nsys.stderr.write('e' * (5 << 20))\n",
                 max_output_bytes=1000, file_size_bytes=8 << 20)
    assert result.status is SandboxStatus.PASSED
    assert result.stdout == "x" * 1000 and result.stdout_truncated
    assert result.stderr == "e" * 1000 and result.stderr_truncated
    assert result.duration_s < 3


def test_endless_output_stops_at_the_file_size_limit():
    result = run("while True:\n    print('spam' * 100)\n")
    assert result.status is SandboxStatus.FAILED
    assert result.stdout_truncated


@pytest.mark.parametrize("guard", [True, False])
def test_killing_the_parent_fails(guard):
    result = run("""
        import os, signal
        for target in (os.getppid(), -os.getpgid(os.getppid())):
            try:
                os.kill(target, signal.SIGKILL)
                print("sent")
            except (PermissionError, ProcessLookupError) as err:
                print("refused", type(err).__name__)
    """, guard=guard)
    if not guard and result.uid is None:
        pytest.skip(f"without the guard the program could signal the test process: {ROOT_ONLY}")
    assert os.getpid() > 0  # still here
    assert result.stdout.split().count("refused") == 2, result.stdout + result.stderr


@pytest.mark.skipif(not IS_ROOT, reason=f"kill(-1) as the host's own user would hit the host's processes: {ROOT_ONLY}")
def test_kill_everything_reaches_only_the_sandbox():
    result = run("""
        import os, signal
        if os.getuid() < (1 << 30):
            raise SystemExit("not running as a sandbox user")
        os.kill(-1, signal.SIGKILL)
        print("survived")
    """, guard=False)
    assert result.uid is not None
    assert os.getpid() > 0  # still here


def test_segfault_is_a_crash():
    result = run("import ctypes\nctypes.string_at(0)\n", guard=False)
    assert result.status is SandboxStatus.CRASHED
    assert "SIGSEGV" in result.message


# -- test suites -------------------------------------------------------------------------------------


def test_suite_partial_credit_and_checked_values():
    result = run_suite(
        "def add(a, b):\n    return a - b\n",
        ["assert add(2, 0) == 2", "assert add(2, 3) == 5", "x = 1\nassert 2 == add(x, x)", "assert add(1, 'a') == 0"],
        config=fast(),
    )
    assert [case.passed for case in result.cases] == [True, False, False, False]
    assert result.passed == 1 and result.total == 4 and result.score == 0.25 and not result.all_passed
    assert result.first_failure is result.cases[1]
    assert result.cases[1].error == "AssertionError" and result.cases[1].got == "-1"
    assert result.cases[2].got == "0"
    assert result.cases[3].error.startswith("TypeError") and 'File "solution.py", line 2' in result.cases[3].traceback


def test_suite_uses_prelude_and_setup():
    result = run_suite("def double(x):\n    return helper(x)\n", ["assert double(K) == 6"],
                       prelude="def helper(x):\n    return 2 * x\n", setup="K = 3", config=fast())
    assert result.all_passed, result


def test_suite_reports_errors_before_the_tests():
    result = run_suite("raise RuntimeError('at import')", ["assert True"], config=fast())
    assert result.load_stage == "solution" and result.load_error == "RuntimeError: at import"
    assert not result.cases[0].passed and "not run" in result.cases[0].error


def test_suite_test_timeout_keeps_other_results():
    result = run_suite("def f(x):\n    while x:\n        pass\n    return 0\n",
                       ["assert f(0) == 0", "assert f(1) == 0", "assert f(0) == 0"], test_timeout_s=0.3, config=fast())
    assert [case.passed for case in result.cases] == [True, False, True]
    assert result.cases[1].error.startswith("Timeout")


def test_suite_ignores_forged_results_and_early_exit():
    forged = (b'{"test": 0, "passed": true}\n{"test": 1, "passed": true, "nonce": "0"}\n')
    result = run_suite(
        f"import os, sys\nos.write(3, {forged!r})\nprint('{{\"test\": 0, \"passed\": true}}')\n"
        "def f():\n    return 0\n",
        ["assert f() == 1", "import os\nos._exit(0)", "assert f() == 0"], config=fast(),
    )
    assert [case.passed for case in result.cases] == [False, False, False]
    assert "not run" in result.cases[2].error


# -- reward hacking: results the tests cannot be fooled by ---------------------------------------------
# Each attack is a solution that passes its tests on a harness that compares in the solution's process
# (an __eq__ that always says yes, patched builtins, forged result records); the honest solution next
# to it passes the same tests, so a test here fails if the tests themselves cannot pass.

_ANYTHING = """
class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = object.__hash__
"""

_EQ_TESTS = ["assert add(2, 3) == 5", "assert 5 == add(2, 3)", "assert add(-1, 1) == 0 and not add(-1, 1) != 0",
             "assert [add(2, 3)] == [5]", "assert {'sum': add(2, 3)} == {'sum': 5}"]
_HONEST_ADD = "def add(a, b):\n    return a + b\n"

_FORGE = """
import os
import secrets
def forge(nonces, count=16):
    # Results for every test, tagged with each string that might be the nonce, on every descriptor.
    lines = b"".join(json.dumps({"test": i, "passed": True, "nonce": n}).encode() + b"\\n"
                     for n in nonces for i in range(count))
    lines += b"".join(json.dumps({"stage": "loaded", "nonce": n}).encode() + b"\\n" for n in nonces)
    for fd in range(3, 64):
        try:
            os.write(fd, lines)
        except OSError:
            pass
    # The run's files by name, and every descriptor of the judge and of the host (its parent).
    paths = ["../channel", "../judge"]
    parents = [os.getppid()]
    try:
        parents.append(int(open(f"/proc/{parents[0]}/status").read().split("PPid:")[1].split()[0]))
    except (OSError, IndexError, ValueError):
        pass
    for pid in parents:
        try:
            paths += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            pass
    for path in paths:
        try:
            with open(path, "ab") as handle:
                handle.write(lines)
        except OSError:
            pass
import json
"""

HACKS = {
    "__eq__ always True": (_ANYTHING + "def add(a, b):\n    return Anything()\n", _EQ_TESTS, _HONEST_ADD, ""),
    "int subclass with __eq__": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "    def __ne__(self, other):\n        return False\n"
        "def add(a, b):\n    return Int(7)\n", _EQ_TESTS, _HONEST_ADD, ""),
    "str subclass with __eq__": (
        "class Str(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
        "def rev(s):\n    return Str('?')\n",
        ["assert rev('abc') == 'cba'", "assert rev('') == ''"], "def rev(s):\n    return s[::-1]\n", ""),
    "list subclass that rewrites the expected value": (
        "class Mirror(list):\n    def __eq__(self, other):\n        if isinstance(other, list):\n"
        "            other[:] = list(self)\n        return list.__eq__(self, other)\n"
        "    __hash__ = None\n"
        "def pair(x):\n    return Mirror([0])\n",
        ["assert pair(3) == [3, 3]", "expected = [1, 1]\nassert pair(1) == expected"],
        "def pair(x):\n    return [x, x]\n", ""),
    "__class__ property pretending to be an int": (
        "class Fake:\n    __class__ = property(lambda self: int)\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\n"
        "def add(a, b):\n    return Fake()\n",
        ["r = add(2, 3)\nassert isinstance(r, int) and r == 5", "assert type(add(2, 3)) is int or add(2, 3) == 5"],
        _HONEST_ADD, ""),
    "arithmetic that always lands within tolerance": (
        "class Close:\n    def __sub__(self, other):\n        return self\n    __rsub__ = __sub__\n"
        "    def __abs__(self):\n        return self\n    def __lt__(self, other):\n        return True\n"
        "    __le__ = __lt__\n    def __float__(self):\n        return 0.0\n"
        "def area(r):\n    return Close()\n",
        ["assert abs(area(1.0) - 3.14159) < 1e-3", "assert abs(3.14159 - area(1.0)) <= 1e-3"],
        "def area(r):\n    return 3.14159 * r * r\n", ""),
    "patched builtins": (
        "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.sorted = lambda xs, **kw: [1, 2, 3]\n"
        "builtins.set = lambda xs=(): {1, 2, 3}\nbuiltins.len = lambda xs: 3\n"
        "def area(r):\n    return 0.0\ndef items(x):\n    return []\n",
        ["assert abs(area(1.0) - 3.14159) < 1e-3", "assert sorted(items(3)) == [1, 2, 3]",
         "assert set(items(3)) == set([1, 2, 3])", "assert len(items(3)) == 3"],
        "def area(r):\n    return 3.14159 * r * r\ndef items(x):\n    return [3, 2, 1]\n", ""),
    "shadowed names in the shared namespace": (
        "def abs(x):\n    return 0\ndef isinstance(x, t):\n    return True\n"
        "def area(r):\n    return 0\n",
        ["assert abs(area(1.0) - 3.14159) < 1e-3", "assert isinstance(area(1.0), float)"],
        "def area(r):\n    return 3.14159 * r * r\n", ""),
    "patched standard library module": (
        "import math\nmath.isclose = lambda *a, **k: True\nmath.fabs = lambda x: 0.0\n"
        "def area(r):\n    return -1.0\n",
        ["import math\nassert math.isclose(area(1.0), 3.14159, rel_tol=1e-4)",
         "import math\nassert math.fabs(area(1.0) - 3.14159) < 1e-3"],
        "def area(r):\n    return 3.14159 * r * r\n", ""),
    "redefined trusted helper of the prompt": (
        "def encode(s):\n    return s\ndef decode(s):\n    return s\n",
        ["assert decode(encode('abc')) == 'abc'", "assert decode(encode('hello!')) == 'hello!'"],
        "def decode(s):\n    return s[::-1]\n", "def encode(s):\n    return s[::-1]\n"),
    "harness functions replaced through gc": (
        "import gc, types\n"
        "def hollow(function):\n"
        "    # A do-nothing function with the same free variables, so that its code can replace the original's.\n"
        "    free = function.__code__.co_freevars\n"
        "    lines = ['def outer():', *[f'    {v} = None' for v in free], '    def inner(*args, **kwargs):',\n"
        "             f'        {\", \".join(free) or None}', '        return None', '    return inner']\n"
        "    scope = {}\n"
        "    exec('\\n'.join(lines), scope)\n"
        "    return scope['outer']().__code__\n"
        "for obj in gc.get_objects():\n"
        "    if isinstance(obj, types.FunctionType) and obj.__name__ in ('run', 'build') \\\n"
        "            and obj.__code__.co_filename != 'solution.py':\n"
        "        code = hollow(obj)\n"
        "        if code.co_freevars == obj.__code__.co_freevars:\n"
        "            obj.__code__ = code\n"
        "def add(a, b):\n    return 0\n",
        ["assert add(2, 3) == 5", "assert add(-1, 1) == 0 and add(1, 1) == 2"], _HONEST_ADD, ""),
    "exec replaced in builtins": (
        "import builtins\nbuiltins.exec = lambda *args, **kwargs: None\ndef add(a, b):\n    return 0\n",
        ["assert add(2, 3) == 5"], _HONEST_ADD, ""),
    "nonce read from the harness's frames": (
        _FORGE + "import sys\nnonces = set()\nframe = sys._getframe()\nwhile frame is not None:\n"
        "    for value in list(frame.f_locals.values()):\n"
        "        if isinstance(value, str) and len(value) == 32:\n            nonces.add(value)\n"
        "    frame = frame.f_back\nforge(nonces)\nos._exit(0)\n",
        _EQ_TESTS, _HONEST_ADD, ""),
    "nonce searched in every object the garbage collector knows": (
        _FORGE + "import gc, re, types\nhexes = re.compile(r'[0-9a-f]{32}')\nnonces = set()\n"
        "def strings(obj):\n"
        "    if isinstance(obj, dict):\n        yield from (v for v in obj.values() if isinstance(v, str))\n"
        "    elif isinstance(obj, (list, tuple)):\n        yield from (v for v in obj if isinstance(v, str))\n"
        "    elif isinstance(obj, types.CodeType):\n"
        "        yield from (v for v in obj.co_consts if isinstance(v, str))\n"
        "    elif isinstance(obj, types.FunctionType):\n"
        "        for cell in obj.__closure__ or ():\n"
        "            try:\n                value = cell.cell_contents\n            except ValueError:\n"
        "                continue\n"
        "            if isinstance(value, str):\n                yield value\n"
        "for obj in gc.get_objects():\n    for s in strings(obj):\n        nonces.update(hexes.findall(s))\n"
        "forge(nonces)\nos._exit(0)\n",
        _EQ_TESTS, _HONEST_ADD, ""),
    "nonce searched in the process's memory": (
        _FORGE + "import re\nhexes = re.compile(rb'(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])')\nnonces = set()\n"
        "parent = os.getppid()\n"
        "host = int(open(f'/proc/{parent}/status').read().split('PPid:')[1].split()[0])\n"
        "for pid in ('self', parent, host):\n"
        "    try:\n"
        "        maps = open(f'/proc/{pid}/maps').read().splitlines()\n"
        "        mem = open(f'/proc/{pid}/mem', 'rb')\n"
        "    except OSError:\n        continue\n"
        "    for line in maps:\n"
        "        span, perms = line.split()[:2]\n"
        "        start, end = (int(x, 16) for x in span.split('-'))\n"
        "        if 'r' not in perms or end - start > 64 << 20:\n            continue\n"
        "        try:\n            mem.seek(start)\n            chunk = mem.read(end - start)\n"
        "        except (OSError, ValueError, OverflowError):\n            continue\n"
        "        nonces.update(m.decode() for m in hexes.findall(chunk))\n"
        "forge(sorted(nonces)[:2000])\nos._exit(0)\n",
        _EQ_TESTS, _HONEST_ADD, ""),
    "the judge killed": (
        "import os, signal, sys\ndel sys.modules['posix']\nimport posix\n"
        "try:\n    posix.kill(os.getppid(), signal.SIGKILL)\nexcept OSError:\n    pass\n"
        "def add(a, b):\n    return 99\n", _EQ_TESTS, _HONEST_ADD, ""),
    "exit statuses raised for success": (
        "def add(a, b):\n    if a < 0:\n        raise KeyboardInterrupt\n    raise SystemExit(0)\n",
        _EQ_TESTS, _HONEST_ADD, "", "add"),
    "generator of objects equal to anything": (
        _ANYTHING + "def evens(n):\n    for _ in range(n):\n        yield Anything()\n",
        ["assert list(evens(3)) == [0, 2, 4]", "assert [x for x in evens(2)] == [0, 2]", "assert 2 in evens(3)"],
        "def evens(n):\n    return [2 * i for i in range(n)]\n", "", "evens"),
    "oracle from the solution: its own isclose": (
        "def isclose(*args, **kwargs):\n    return True\ndef area(r):\n    return 0.0\n",
        ["assert isclose(area(1.0), 3.14159, rel_tol=1e-4)"],
        "from math import isclose\ndef area(r):\n    return 3.14159 * r * r\n", "", "area"),
    "oracle from the solution: a class posing as a module": (
        "class math:\n    isclose = staticmethod(lambda *args, **kwargs: True)\n"
        "    fabs = staticmethod(lambda x: 0.0)\ndef area(r):\n    return 0.0\n",
        ["assert math.isclose(area(1.0), 3.14159, rel_tol=1e-4)", "assert math.fabs(area(1.0) - 3.14159) < 1e-3"],
        "import math\ndef area(r):\n    return 3.14159 * r * r\n", "", "area"),
    "oracle from the solution: its own isclose passed off as a class": (
        "import gc, types\n"
        "def isclose(*args, **kwargs):\n    return True\n"
        "def area(r):\n    return 0.0\n"
        "def forged(namespace, before, objects, entry_point):\n"
        "    # The names report, rewritten: isclose claims to be a class, whose calls the judge lets through.\n"
        "    return [[name, {'ref': objects.register(namespace[name]), 'class': True}]\n"
        "            for name in ('isclose', 'area')]\n"
        "for obj in gc.get_objects():\n"
        "    if isinstance(obj, types.FunctionType) and obj.__name__ == '_names_defined':\n"
        "        obj.__code__ = forged.__code__\n",
        ["assert isclose(area(1.0), 3.14159, rel_tol=1e-4)", "assert not isclose(area(1.0), 0.0)"],
        "from math import isclose\ndef area(r):\n    return 3.14159 * r * r\n", "", "area"),
    "oracle from the solution: a forged module object": (
        "import types\nmath = types.ModuleType('math')\nmath.isclose = lambda *args, **kwargs: True\n"
        "def area(r):\n    return 0.0\n",
        ["assert math.isclose(area(1.0), 3.14159, rel_tol=1e-4)"],
        "import math\ndef area(r):\n    return 3.14159 * r * r\n", "", "area"),
}


@pytest.mark.parametrize("name", list(HACKS))
def test_reward_hacks_pass_no_test(name):
    solution, tests, honest, prelude, *entry = HACKS[name]
    entry_point = entry[0] if entry else None  # as the code environment passes it; None: every function is bound
    hacked = run_suite(solution, tests, prelude=prelude, config=fast(), entry_point=entry_point)
    assert [case.passed for case in hacked.cases] == [False] * len(tests), hacked
    fair = run_suite(honest, tests, prelude=prelude, config=fast(), entry_point=entry_point)
    assert fair.all_passed, fair


_MEMORY_SCAN = """
import os
def scan(first, second, pid="self"):
    # Every readable mapping of the process, searched for first + second without ever building that
    # string here (the search would find itself): the bytes read, and whether it was found.
    read, found = 0, False
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            start, end = (int(x, 16) for x in span.split("-"))
            if "r" not in perms or end - start > 256 << 20:
                continue
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            read += len(chunk)
            at = chunk.find(first)
            while at >= 0 and not found:
                found = chunk[at + len(first):at + len(first) + len(second)] == second
                at = chunk.find(first, at + 1)
    return read, found
"""


def _halves(text: str) -> str:
    """Python source for the two halves of ``text`` as bytes, each built at run time from hex digits."""
    half = len(text) // 2
    return f"bytes.fromhex({text[:half].encode().hex()!r}), bytes.fromhex({text[half:].encode().hex()!r})"


def test_the_nonce_is_never_in_the_solution_s_memory(monkeypatch):
    known = "6e6f6e63652d6f662d746869732d7275"  # what secrets.token_hex returns for this run
    monkeypatch.setattr(secrets, "token_hex", lambda nbytes=None: known)
    solution = _MEMORY_SCAN + (
        f"read, found = scan({_halves(known)})\n"
        "print('scanned', read, 'found' if found else 'absent')\n"
        "def add(a, b):\n    return a + b\n")
    result = run_suite(solution, ["assert add(2, 3) == 5"], config=fast())
    words = result.sandbox.stdout.split()
    assert words[0] == "scanned" and int(words[1]) > 4 << 20, result.sandbox.stdout + result.sandbox.stderr
    assert words[2] == "absent"
    assert result.all_passed and known in result.sandbox.channel.decode()  # the judge did use it
    # The scan finds what is in its process's memory: the same search after joining the halves.
    control = run(_MEMORY_SCAN + f"first, second = {_halves(known)}\nneedle = first + second\n"
                  "print(*scan(first, second))\n")
    assert control.stdout.split()[1] == "True", control.stdout + control.stderr


def test_the_solution_cannot_reach_the_judge_s_memory_descriptors_or_signals():
    solution = """
import os, signal, sys
judge = os.getppid()
for what, act in (("mem", lambda: open(f"/proc/{judge}/mem", "rb").read(1)),
                  ("fd", lambda: os.listdir(f"/proc/{judge}/fd")),
                  ("channel", lambda: open(f"/proc/{judge}/fd/3", "ab")),
                  ("environ", lambda: open(f"/proc/{judge}/environ", "rb").read())):
    try:
        act()
        print(what, "reached")
    except OSError as err:
        print(what, "refused", type(err).__name__)
try:
    os.write(3, b"forged")
    print("fd3 reached")
except OSError as err:
    print("fd3 refused", type(err).__name__)
def f():
    return 1
"""
    result = run_suite(solution, ["assert f() == 1"], config=fast(guard=False))
    lines = dict(line.split(" ", 1) for line in result.sandbox.stdout.splitlines())
    assert set(lines) == {"mem", "fd", "channel", "environ", "fd3"}, result.sandbox.stdout + result.sandbox.stderr
    assert all(outcome.startswith("refused") for outcome in lines.values()), lines
    assert lines["fd3"] == "refused OSError"  # EBADF: the solution's process does not hold the channel
    assert result.all_passed
    if result.sandbox.uid is not None:
        assert result.sandbox.uid >= SANDBOX_UID_BASE  # a user id of its own, not the judge's


# -- what crosses between the tests and the solution ------------------------------------------------


def test_values_cross_exactly():
    solution = """
import math
def echo(x):
    return x
def big():
    return 10 ** 10000 + 1
def specials():
    return [float("nan"), -0.0, float("inf"), 1e-310, complex(1.5, -2.0)]
def shapes():
    return {(1, "a"): frozenset({1, 2}), "s": {3}, b"k": bytearray(b"\\x00\\xff"), None: (True, 2, 2.5, "\\ud800")}
"""
    tests = [
        "assert big() == 10 ** 10000 + 1 and type(big()) is int",
        "assert echo(-(10 ** 10000)) == -(10 ** 10000)",
        "import math\nn, z, inf, tiny, c = specials()\n"
        "assert math.isnan(n) and math.copysign(1, z) == -1 and inf == math.inf and tiny == 1e-310 and c == 1.5-2j",
        "value = shapes()\nassert value == {(1, 'a'): frozenset({1, 2}), 's': {3}, b'k': bytearray(b'\\x00\\xff'), "
        "None: (True, 2, 2.5, '\\ud800')}\n"
        "assert [type(k) for k in value] == [tuple, str, bytes, type(None)] and type(value[None][0]) is bool",
        "xs = [1, [2, 3]]\necho(xs).append(4)\nassert xs == [1, [2, 3]]",  # arguments and results are copies
    ]
    result = run_suite(solution, tests, config=fast())
    assert result.all_passed, result


def test_generators_classes_and_exceptions_work_through_proxies():
    solution = """
class Pair:
    def __init__(self, a, b):
        self.a, self.b = a, b
def longest_chain(pairs):
    return sum(1 for p in pairs if p.a < p.b)
def squares(n):
    for i in range(n):
        yield i * i
def parse(text):
    if not text.isdigit():
        raise ValueError(f"not a number: {text!r}")
    return int(text)
class Custom(Exception):
    pass
def boom():
    raise Custom("mine")
"""
    tests = [
        "assert longest_chain([Pair(1, 2), Pair(5, 3), Pair(0, 9)]) == 2",
        "assert list(squares(4)) == [0, 1, 4, 9] and 9 in squares(4) and sum(squares(3)) == 5",
        "try:\n    parse('x1')\nexcept ValueError as err:\n    assert 'not a number' in str(err)\n"
        "else:\n    raise AssertionError",
        "assert parse('42') == 42",
        "boom()",
        "assert Pair(1, 2) == Pair(1, 2)",  # an object of the solution's compares by identity only
        "assert Pair(1, 2)",  # and tells the tests nothing: not even whether it is true
    ]
    result = run_suite(solution, tests, config=fast(), entry_point="longest_chain")
    assert [case.passed for case in result.cases] == [True, False, False, False, False, False, False], result
    assert [case.error.split(":")[0] for case in result.cases[1:5]] == ["NameError"] * 4  # not the entry point
    assert "may only pass it back to the solution" in result.cases[6].error
    # Without an entry point named, all the solution's functions and classes are proxies in full.
    result = run_suite(solution, tests, config=fast())
    assert [case.passed for case in result.cases] == [True, True, True, True, False, False, True], result
    assert result.cases[4].error == "solution.Custom: mine"
    assert 'File "solution.py", line 17, in boom' in result.cases[4].traceback


@pytest.mark.parametrize(("returned", "problem"), [
    ("x = []\n    x.append(x)\n    return x", "nested deeper"),
    ("x = []\n    for _ in range(150):\n        x = [x]\n    return x", "nested deeper"),
    ("return 'x' * (5 << 20)", "the limit is"),
])
def test_results_that_cannot_cross_fail_the_test_not_the_run(returned, problem):
    result = run_suite(f"def f():\n    {returned}\n", ["assert f() is not None", "assert 1 + 1 == 2"],
                       config=fast(max_channel_bytes=1 << 20))
    assert not result.cases[0].passed and problem in result.cases[0].error, result.cases[0]
    assert result.sandbox.status is SandboxStatus.PASSED


def test_a_solution_that_blocks_its_timer_times_out_and_stops_the_suite():
    solution = ("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                "def f(x):\n    while x:\n        pass\n    return 0\n")
    result = run_suite(solution, ["assert f(0) == 0", "assert f(1) == 0", "assert f(0) == 0"], test_timeout_s=0.3,
                       config=fast())
    assert [case.passed for case in result.cases] == [True, False, False]
    assert result.cases[1].error.startswith("Timeout")
    assert result.cases[2].error == ("not run: the solution did not stop at the time limit "
                                     "(it blocked or caught the timer)")


@pytest.mark.parametrize(("body", "why"), [
    ("import os\n    os._exit(3)", "the solution's process exited (status 3)"),
    ("while True:\n        pass", "the solution's process reached the CPU-time limit"),
])
def test_a_solution_process_that_dies_fails_the_rest(body, why):
    solution = f"def ok():\n    return 1\ndef f():\n    {body}\n"
    # The per-test limit is long, so that the CPU-time limit comes first even on a busy machine.
    result = run_suite(solution, ["assert ok() == 1", "f()", "assert ok() == 1"], test_timeout_s=20.0,
                       config=fast(cpu_time_s=1, wall_time_s=30.0))
    assert [case.passed for case in result.cases] == [True, False, False], result
    assert result.cases[2].error == f"not run: {why}", result.cases


# -- without root: what holds for any user ------------------------------------------------------------
# As root (CI), each of these runs in a forked copy of this test process switched to the user `nobody`,
# so the sandbox runs unprivileged: no user switch, RLIMIT_NPROC counted over that user's processes,
# a network namespace only through an unprivileged user namespace. As another user they run here.

UNPRIVILEGED_UID = 65534


def _usable_python() -> str | None:
    """An interpreter (3.10+) this user may run: the test's own may sit under a directory only root can enter."""
    import shutil
    import subprocess

    candidates = [sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")]
    for path in filter(None, candidates):
        if os.access(path, os.X_OK) and os.access(os.path.realpath(path), os.X_OK):
            check = subprocess.run([path, "-I", "-S", "-c", "import sys; print(sys.version_info >= (3, 10))"],
                                   capture_output=True, text=True, timeout=30)
            if check.stdout.strip() == "True":
                return path
    return None


def unprivileged(check):
    """``check(config_overrides)`` as an unprivileged user; returns what it returns (JSON-able)."""
    if not IS_ROOT:
        return check({})
    import json
    import resource  # noqa: F401 - os.wait4 imports it on first use, which the other user could not
    import shutil  # noqa: F401
    import subprocess  # noqa: F401
    import traceback

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the forked copy
        code = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setresgid(UNPRIVILEGED_UID, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
            os.setresuid(UNPRIVILEGED_UID, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
            python = _usable_python()
            if python is None:
                outcome = {"skip": "no Python 3.10+ that the user nobody may run"}
            else:
                outcome = {"value": check({"python": python})}
                leftovers = [p for p in os.listdir(tempfile.gettempdir()) if p.startswith(f"{MARKER}-{os.getpid()}-")]
                outcome["leftovers"] = leftovers
            code = 0
        except BaseException:  # noqa: B036 - reported to the test
            outcome = {"error": traceback.format_exc()}
        os.write(write, json.dumps(outcome).encode())
        os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 1 << 16):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    outcome = json.loads(b"".join(chunks))
    if "skip" in outcome:
        pytest.skip(outcome["skip"])
    assert "error" not in outcome, outcome.get("error")
    assert outcome["leftovers"] == []
    return outcome["value"]


def _limits_check(overrides):
    cases = {
        "cpu": ("while True:\n    pass\n", dict(cpu_time_s=1, wall_time_s=20)),
        "memory": ("x = bytearray(8 << 30)\n", {}),
        "file size": ("while True:\n    print('spam' * 100)\n", {}),
        "fork (guard)": ("import os\nos.fork()\n", {}),
        "fork (guard bypassed)": ("import sys\ndel sys.modules['posix']\nimport posix\nposix.fork()\n", {}),
        "output": ("import os, sys\nprint(os.getuid())\nsys.stdout.write('x' * 100_000)\n",
                   dict(max_output_bytes=1000)),
    }
    out = {}
    for name, (source, extra) in cases.items():
        result = run_python(source, fast(**overrides, **extra))
        out[name] = [result.status.value, result.message, result.stderr[-300:], result.stdout[:20],
                     result.stdout_truncated, result.uid]
    return out


def test_unprivileged_limits_hold_for_any_user():
    out = unprivileged(_limits_check)
    assert out["cpu"][:2] == ["timeout", "CPU-time limit of 1 s reached"], out["cpu"]
    assert out["memory"][0] == "memory_limit", out["memory"]
    assert out["file size"][0] == "failed" and out["file size"][4] is True, out["file size"]
    assert out["fork (guard)"][0] == "failed" and "PermissionError: sandbox: os.fork" in out["fork (guard)"][2]
    # RLIMIT_NPROC = 0 stops fork for any user but root: it counts all of the user's processes.
    assert out["fork (guard bypassed)"][0] == "failed" and "BlockingIOError" in out["fork (guard bypassed)"][2]
    status, _, _, stdout, truncated, uid = out["output"]
    assert status == "passed" and truncated and uid is None
    assert stdout.split("\n")[0] == str(os.geteuid() if not IS_ROOT else UNPRIVILEGED_UID)  # no user switch


def _suite_check(overrides):
    cfg = fast(**overrides)
    hacks = {}
    for name in ("__eq__ always True", "int subclass with __eq__", "patched builtins", "harness functions replaced "
                 "through gc", "nonce read from the harness's frames", "nonce searched in the process's memory",
                 "oracle from the solution: a class posing as a module"):
        solution, tests, honest, prelude, *entry = HACKS[name]
        entry_point = entry[0] if entry else None
        hacked = run_suite(solution, tests, prelude=prelude, config=cfg, entry_point=entry_point)
        fair = run_suite(honest, tests, prelude=prelude, config=cfg, entry_point=entry_point)
        hacks[name] = [[case.passed for case in hacked.cases], fair.all_passed]
    reach = run_suite("import os\nfor path in (f'/proc/{os.getppid()}/mem', f'/proc/{os.getppid()}/fd/3'):\n"
                      "    try:\n        open(path, 'rb').close()\n        print('reached')\n"
                      "    except OSError:\n        print('refused')\ndef f():\n    return 1\n",
                      ["assert f() == 1"], config=fast(**overrides, guard=False))
    return {"hacks": hacks, "reach": reach.sandbox.stdout.split(), "reach_passed": reach.all_passed}


def test_unprivileged_suites_are_not_fooled_and_the_judge_stays_out_of_reach():
    out = unprivileged(_suite_check)
    for name, (hacked, fair) in out["hacks"].items():
        assert not any(hacked) and fair, name
    # The judge makes itself non-dumpable: a process of the same user cannot open its memory or descriptors.
    assert out["reach"] == ["refused", "refused"] and out["reach_passed"]


def test_large_top_level_values_do_not_break_the_suite_and_count_in_its_peak_memory():
    solution = ("TABLE = b'\\0' * (80 << 20)\nROWS = [[0] * 100 for _ in range(20_000)]\n"
                "def f(i):\n    return TABLE[i]\n")
    for entry_point in ("f", None):
        result = run_suite(solution, ["assert f(5) == 0"], config=fast(), entry_point=entry_point)
        assert result.all_passed, result
        assert result.sandbox.max_rss_bytes is not None and result.sandbox.max_rss_bytes > 80 << 20  # the solution's

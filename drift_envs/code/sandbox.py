"""Running model-written (untrusted) Python in a separate, limited process.

:func:`run_python` runs one program; :func:`run_suite` runs a solution and a list of test
snippets in one process and reports each test. The host survives whatever the program does
and gets a :class:`SandboxResult` back; every process the program could start is killed and
the temporary directory is removed before the call returns.

Layers, from the strongest (see docs/sandbox.md for what each does and does not stop):

* a fresh process in a new session (its process group is killed at the end, and any process
  left in that session or running as the sandbox's user is swept from ``/proc``);
* when the host runs as root: a fresh, unused user id per run (``SANDBOX_UID_BASE + pid``),
  so the program cannot write or delete the host's files, signal its processes, or read
  their ``/proc`` entries, and ``RLIMIT_NPROC = 0`` is enforced (the kernel exempts root);
* a new network namespace (only a downed loopback) where the kernel allows one;
* resource limits: CPU time, address space, file size, open files, no child processes,
  no core dumps; a wall-clock limit enforced by the parent;
* an empty working directory, a scrubbed environment, stdout/stderr written to files capped
  by the file-size limit and truncated in the result;
* an in-process guard (process creation, signals and writes outside the working directory
  disabled in ``os``/``io``/``builtins``); it stops accidents, not a determined attacker.

This is not a security boundary like a container or a VM: use one for adversarial code.
Linux only; standard library only.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

logger = logging.getLogger(__name__)

SANDBOX_UID_BASE = 1 << 30
"""A run as root switches to user (and group) id ``SANDBOX_UID_BASE + pid``: unused on a normal
system, and unique among live sandboxes because process ids are."""
MARKER = "drift-sandbox"
"""Argument on every sandboxed process's command line (to find leftovers)."""
CHANNEL_FD = 3
"""File descriptor a sandboxed program may write results to; see :attr:`SandboxResult.channel`."""
GOT_NAME = "_drift_got"
"""Variable an instrumented test assertion binds to the value it checked."""

_EXIT_SETUP = 111
_EXIT_SYNTAX = 112
_EXIT_MEMORY = 113


class SandboxError(RuntimeError):
    """The sandbox itself could not run a program (not the program's fault)."""


class SandboxStatus(str, Enum):
    """How a sandboxed run ended."""

    PASSED = "passed"
    """Exit status 0."""
    FAILED = "failed"
    """Non-zero exit status (an uncaught exception, ``sys.exit(1)``, ...)."""
    SYNTAX_ERROR = "syntax_error"
    """The program does not compile."""
    TIMEOUT = "timeout"
    """Wall-clock or CPU-time limit reached; the process group was killed."""
    MEMORY_LIMIT = "memory_limit"
    """An uncaught ``MemoryError`` (the address-space limit)."""
    CRASHED = "crashed"
    """Killed by a signal (segmentation fault, ...)."""
    ERROR = "error"
    """The sandbox could not set up or start the program."""


class NetworkIsolation(str, Enum):
    """Whether a run gets its own network namespace."""

    AUTO = "auto"
    """When the kernel allows it (``CAP_SYS_ADMIN`` or unprivileged namespaces); otherwise not."""
    REQUIRE = "require"
    """Always; a run where it is impossible ends with status ``error``."""
    OFF = "off"
    """Never: the program shares the host's network."""


@dataclass
class SandboxConfig:
    """Limits and isolation of a sandboxed run."""

    wall_time_s: float = 10.0
    """Wall-clock limit for the whole run (interpreter start included), enforced by the parent."""
    cpu_time_s: int = 10
    """CPU-time limit (``RLIMIT_CPU``, whole seconds): SIGXCPU at the limit, SIGKILL a second later."""
    memory_bytes: int = 1 << 30
    """Address-space limit (``RLIMIT_AS``); allocations beyond it raise ``MemoryError``."""
    file_size_bytes: int = 8 << 20
    """Largest file the program may write (``RLIMIT_FSIZE``), stdout and stderr included."""
    max_output_bytes: int = 64 << 10
    """stdout and stderr kept in the result (each); the rest is dropped and flagged."""
    max_channel_bytes: int = 4 << 20
    """Bytes of the result channel (fd 3) read back."""
    open_files: int = 64
    """File-descriptor limit (``RLIMIT_NOFILE``)."""
    max_processes: int = 0
    """Processes *or threads* the program may add (``RLIMIT_NPROC`` counts both): 0 forbids
    ``fork`` and ``threading`` alike. Exact when privileges are dropped (a fresh user id);
    for other users the limit applies to all their processes, so anything above 0 is loose."""
    drop_privileges: bool = True
    """When the host runs as root, run as the unused user id ``SANDBOX_UID_BASE + pid``
    (no effect for other users, who cannot switch)."""
    network: NetworkIsolation = NetworkIsolation.AUTO
    """New network namespace: ``auto``, ``require`` or ``off``."""
    guard: bool = True
    """Install the in-process guard (no fork/exec/kill, no writes outside the working directory)."""
    site_packages: bool = False
    """Let the program import the interpreter's site-packages (numpy, ...); by default only the
    standard library is importable."""
    python: str = sys.executable
    """Interpreter to run (a CPython 3.10+)."""
    tmp_dir: str | None = None
    """Where the per-run directory is created (``None``: the system temporary directory). When
    privileges are dropped it must be traversable by other users, as ``/tmp`` is."""

    def __post_init__(self) -> None:
        self.network = NetworkIsolation(self.network)
        if self.wall_time_s <= 0:
            raise ValueError(f"wall_time_s must be > 0, got {self.wall_time_s}")
        if self.cpu_time_s < 1:
            raise ValueError(f"cpu_time_s must be >= 1, got {self.cpu_time_s}")
        if self.memory_bytes < 64 << 20:
            raise ValueError(f"memory_bytes must be >= 64 MiB (the interpreter needs it), got {self.memory_bytes}")
        for name in ("file_size_bytes", "max_output_bytes", "max_channel_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.open_files < 16:
            raise ValueError(f"open_files must be >= 16, got {self.open_files}")
        if self.max_processes < 0:
            raise ValueError(f"max_processes must be >= 0, got {self.max_processes}")


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run did."""

    status: SandboxStatus
    """How it ended."""
    returncode: int | None
    """Exit status, or minus the signal number that killed it; ``None`` if it never started."""
    stdout: str
    """Standard output, at most ``max_output_bytes`` (decoded as UTF-8, invalid bytes replaced)."""
    stderr: str
    """Standard error, likewise truncated."""
    duration_s: float
    """Wall-clock time from start to exit."""
    cpu_time_s: float = 0.0
    """User plus system CPU time of the program."""
    max_rss_bytes: int | None = None
    """Peak resident memory of the program's own (main) process, from ``VmHWM`` in
    ``/proc/self/status`` read by the bootstrap when the program ends; ``None`` when it did not
    end through the bootstrap (killed at a limit or by a signal, ``os._exit``, setup failed).
    The program's interpreter reports it, so a program that tampers with its interpreter could
    misreport it; the memory limit itself is ``RLIMIT_AS`` and holds either way."""
    max_rss_bound_bytes: int = 0
    """``ru_maxrss`` of the process from the kernel (0 if unknown): an upper bound only. Linux
    keeps the maximum across ``execve``, so it includes the host's own image at the fork and
    is at least the host's resident size when the host is large (a loaded model)."""
    stdout_truncated: bool = False
    """More stdout was written than :attr:`stdout` holds."""
    stderr_truncated: bool = False
    """More stderr was written than :attr:`stderr` holds."""
    channel: bytes = b""
    """What the program wrote to file descriptor :data:`CHANNEL_FD` (up to ``max_channel_bytes``)."""
    network_isolated: bool = False
    """The program ran in its own network namespace."""
    uid: int | None = None
    """User id the program ran as, when privileges were dropped."""
    message: str = ""
    """Why the sandbox stopped or failed it (limit reached, signal, setup error), or empty."""

    @property
    def ok(self) -> bool:
        return self.status is SandboxStatus.PASSED


# -- the child side ------------------------------------------------------------------------
# ``_child_main`` and ``_install_guard`` are not called in this process: their source is sent
# to a fresh interpreter (``python -I -c``), so they must be self-contained (imports inside,
# no other module globals).


def _child_main() -> None:  # pragma: no cover - runs in the sandboxed interpreter
    import atexit
    import json
    import linecache
    import os
    import resource
    import sys
    import traceback

    args = json.loads(sys.argv[2])
    # The channel becomes fd 3 (the lowest free one, 0-2 being stdio); the setup report
    # goes to a private file, closed before the program runs.
    channel = os.open(args["channel"], os.O_WRONLY | os.O_APPEND)
    if channel != 3:
        os.dup2(channel, 3)
        os.close(channel)
    status_fd = os.open(args["status"], os.O_WRONLY | os.O_APPEND)
    # A second private file for the report at exit, kept open (after the user switch it could
    # not be reopened); the setup report's file is closed before the program runs, so the
    # program cannot rewrite that one.
    usage_fd = os.open(args["usage"], os.O_WRONLY | os.O_APPEND)

    def report(**fields: object) -> None:
        os.write(status_fd, (json.dumps(fields) + "\n").encode())

    def fail(message: str) -> None:
        report(error=message)
        os._exit(args["exit_setup"])

    with open(args["program"], encoding="utf-8") as handle:  # a private file, read before the user switch
        source = handle.read()

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        libc = None

    def unshare(flags: int) -> None:
        if hasattr(os, "unshare"):  # Python 3.12+
            os.unshare(flags)
        elif libc is None or libc.unshare(flags) != 0:
            errno = ctypes.get_errno() if libc is not None else 0
            raise OSError(errno, os.strerror(errno) if errno else "no libc")

    network = False
    if args["network"] != "off":
        clone_newnet, clone_newuser = 0x40000000, 0x10000000
        try:
            unshare(clone_newnet)  # needs CAP_SYS_ADMIN (root)
            network = True
        except OSError as err:
            error = err
            if os.geteuid() != 0:
                # An unprivileged user may own a network namespace inside a new user
                # namespace (where enabled); its capabilities there do not reach the host.
                try:
                    unshare(clone_newuser | clone_newnet)
                    network = True
                except OSError as err2:
                    error = err2
            if not network and args["network"] == "require":
                fail(f"cannot create a network namespace: {error}")

    uid = None
    if args["drop"] and os.geteuid() == 0:
        # The interpreter's library may sit under a directory only root can traverse
        # (/root/.pyenv): keep each import directory open and import through
        # /proc/self/fd/N, which checks the directory itself, not its ancestors.
        dirs = [p for p in sys.path if p and os.path.isdir(p)]
        dir_fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in dirs]
        uid = args["uid_base"] + os.getpid()
        try:
            os.chown(".", uid, uid)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        except OSError as err:
            fail(f"cannot switch to user id {uid}: {err}")
        if os.getuid() != uid or os.geteuid() != uid:
            fail(f"still running as user {os.geteuid()} after switching to {uid}")
        if libc is not None:
            libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: /proc/self/fd belongs to us again
        moved = {os.path.realpath(d): f"/proc/self/fd/{fd}" for d, fd in zip(dirs, dir_fds, strict=True)}

        def relocate(path: str) -> str:
            real = os.path.realpath(path)
            for old, new in moved.items():
                if real == old or real.startswith(old + os.sep):
                    return new + real[len(old):]
            return path

        sys.path[:] = [relocate(p) for p in dirs]
        for module in list(sys.modules.values()):  # packages imported at start-up (collections, encodings)
            search = getattr(module, "__path__", None)
            if isinstance(search, list):
                search[:] = [relocate(p) for p in search]
        sys.path_importer_cache.clear()

    if libc is not None:
        # Die with the parent (set after the user switch, which clears it).
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
        if os.getppid() != args["parent"]:
            os._exit(args["exit_setup"])

    limits = [
        (resource.RLIMIT_CPU, args["cpu"], args["cpu"] + 1),
        (resource.RLIMIT_AS, args["memory"], args["memory"]),
        (resource.RLIMIT_FSIZE, args["fsize"], args["fsize"]),
        (resource.RLIMIT_NOFILE, args["nofile"], args["nofile"]),
        # Counted per user: the fresh user id has this one process so far.
        (resource.RLIMIT_NPROC, args["nproc"], args["nproc"]),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    for which, soft, hard in limits:
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError) as err:
            fail(f"cannot set resource limit {which}: {err}")

    # Opened now so that the report at exit needs no free descriptor and no ``open`` (which the
    # program may have exhausted or patched); the buffer is allocated now for when memory is short.
    self_status = os.open("/proc/self/status", os.O_RDONLY)
    status_buffer = bytearray(8192)
    preadv, write = os.preadv, os.write

    def report_peak() -> None:
        # The peak of this address space (created by execve), not the rusage the host gets:
        # that keeps the maximum across execve, so it includes the host's image at the fork.
        try:
            size = preadv(self_status, [status_buffer], 0)
            start = status_buffer.find(b"\nVmHWM:", 0, size)
            if start >= 0:
                end = status_buffer.find(b"kB", start, size)
                write(usage_fd, b"%d\n" % (int(status_buffer[start + 7 : end]) * 1024))
        except BaseException:  # noqa: B036 - no memory left, a closed descriptor: no report
            pass

    # Runs after the program's own atexit handlers (registered later, run first) and after
    # non-daemon threads were joined; os._exit and signals skip it.
    atexit.register(report_peak)

    report(ok=True, network=network, uid=uid)
    os.close(status_fd)
    libc = None  # nothing of ctypes is left to the program
    sys.modules.pop("ctypes", None)

    if args["guard"]:
        _install_guard(os.getcwd())

    linecache.cache["main.py"] = (len(source), None, source.splitlines(True), "main.py")
    try:
        code = compile(source, "main.py", "exec")
    except (SyntaxError, ValueError) as err:
        sys.stderr.write("".join(traceback.format_exception_only(type(err), err)))
        sys.stderr.flush()
        report_peak()
        os._exit(args["exit_syntax"])
    del source
    namespace = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except SystemExit:
        raise
    except MemoryError:
        try:
            sys.stderr.write("MemoryError\n")
            sys.stderr.flush()
        finally:
            report_peak()
            os._exit(args["exit_memory"])
    except BaseException as err:  # noqa: B036 - report whatever the program raised
        traceback.print_exception(type(err), err, err.__traceback__.tb_next)
        sys.stderr.flush()
        report_peak()
        os._exit(1)


def _install_guard(workdir: str) -> None:  # pragma: no cover - runs in the sandboxed interpreter
    """Disable process creation, signals and writes outside ``workdir`` in this interpreter.

    Python-level only: C code (or a re-imported builtin module) gets around it; the user
    switch and the resource limits are what actually hold.
    """
    import builtins
    import io
    import os
    import posix
    import sys

    def blocked(name: str):
        def refuse(*args: object, **kwargs: object) -> None:
            raise PermissionError(f"sandbox: {name} is not allowed")

        return refuse

    for name in ("fork", "forkpty", "system", "popen", "execv", "execve", "execl", "execle", "execlp", "execlpe",
                 "execvp", "execvpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp",
                 "spawnlpe", "posix_spawn", "posix_spawnp", "kill", "killpg", "setsid", "setpgid", "setuid",
                 "setgid", "setresuid", "setresgid", "pidfd_open"):
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, blocked(f"os.{name}"))
    for name in ("subprocess", "multiprocessing", "_posixsubprocess", "_multiprocessing", "ctypes", "_ctypes",
                 "pty", "concurrent.futures.process"):
        sys.modules[name] = None  # import raises ImportError

    root = os.path.realpath(workdir)
    allowed = {os.devnull}

    def inside(path: object, dir_fd: object = None) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor
        try:
            text = os.fsdecode(path)
            base = root if dir_fd is None else os.readlink(f"/proc/self/fd/{dir_fd}")
        except (TypeError, OSError):
            return False
        real = os.path.realpath(os.path.join(base, text))
        return real == root or real.startswith(root + os.sep) or real in allowed

    def refuse_outside(name: str, path: object) -> None:
        raise PermissionError(f"sandbox: {name} outside the working directory is not allowed: {path!r}")

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    original_open = builtins.open
    original_os_open = os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in str(mode) for c in "wax+") and not inside(file):
            refuse_outside("writing", file)
        return original_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, dir_fd=None, **kwargs):
        if flags & write_flags and not inside(path, dir_fd):
            refuse_outside("writing", path)
        return original_os_open(path, flags, *args, dir_fd=dir_fd, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = posix.open = guarded_os_open

    def path_checked(name: str, original, count: int):
        def checked(*args, **kwargs):
            # (path, dir_fd) pairs: src_dir_fd/dst_dir_fd for two-path calls, else dir_fd.
            dir_fds = (kwargs.get("src_dir_fd", kwargs.get("dir_fd")), kwargs.get("dst_dir_fd", kwargs.get("dir_fd")))
            paths = list(zip(args[:count], dir_fds, strict=False))  # fewer paths than dir_fds
            paths += [(kwargs[key], kwargs.get("dir_fd")) for key in ("path", "src", "dst") if key in kwargs]
            for path, dir_fd in paths:
                if not inside(path, dir_fd):
                    refuse_outside(f"os.{name}", path)
            return original(*args, **kwargs)

        return checked

    for name, count in (("remove", 1), ("unlink", 1), ("rmdir", 1), ("removedirs", 1), ("rename", 2),
                        ("renames", 2), ("replace", 2), ("chmod", 1), ("chown", 1), ("lchown", 1),
                        ("truncate", 1), ("link", 2), ("symlink", 2), ("mkdir", 1), ("makedirs", 1),
                        ("utime", 1), ("mkfifo", 1), ("mknod", 1)):
        if hasattr(os, name):
            wrapped = path_checked(name, getattr(os, name), count)
            setattr(os, name, wrapped)
            if hasattr(posix, name):
                setattr(posix, name, wrapped)


@functools.cache
def _bootstrap_source() -> str:
    parts = [textwrap.dedent(inspect.getsource(fn)) for fn in (_install_guard, _child_main)]
    return "\n\n".join(parts) + "\n\n_child_main()\n"


# -- the parent side -----------------------------------------------------------------------


def _read_head(path: str, limit: int) -> tuple[bytes, bool]:
    with open(path, "rb") as handle:
        data = handle.read(limit)
        size = os.fstat(handle.fileno()).st_size
    return data, size > limit


def _proc_entries() -> list[tuple[int, str, int, int | None]]:
    """``(pid, state, session, real uid)`` of every visible process."""
    out = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read().decode("utf-8", "replace")
            with open(f"/proc/{name}/status", "rb") as handle:
                status = handle.read().decode("utf-8", "replace")
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rfind(")") + 2 :].split()
        uid = None
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
                break
        out.append((int(name), fields[0], int(fields[3]), uid))
    return out


def _sweep(session: int, uid: int | None) -> int:
    """Kill every live process in ``session`` or running as ``uid``; how many were found."""
    killed = 0
    for _ in range(50):
        targets = [pid for pid, state, sid, puid in _proc_entries()
                   if state not in ("Z", "X") and (sid == session or (uid is not None and puid == uid))]
        if not targets:
            return killed
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
    logger.warning("sandbox: processes of session %d survived SIGKILL", session)
    return killed


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int | None, object | None]:
    """Wait up to ``timeout`` s without reaping; the wait status and rusage once reaped, else ``(None, None)``."""
    deadline = time.monotonic() + timeout
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            left = deadline - time.monotonic()
            if pidfd is not None:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                ready = poller.poll(max(0, int(left * 1000)) + 1)
                if not ready and time.monotonic() >= deadline:
                    return None, None
            # Reap without blocking; pidfd readiness means the child has exited.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                return status, usage
            if time.monotonic() >= deadline:
                return None, None
            if pidfd is None:
                time.sleep(min(0.005, max(left, 0)))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _remove_tree(path: str) -> None:
    def retry(func, target, _exc):  # a program may have made its files unwritable
        try:
            os.chmod(os.path.dirname(target), 0o700)
            os.chmod(target, 0o700)
            func(target)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def run_python(source: str, config: SandboxConfig | None = None) -> SandboxResult:
    """Run ``source`` as a Python program in the sandbox and report what happened.

    Never raises for anything the program does; a failure to start is status ``error``.
    """
    cfg = config or SandboxConfig()
    # The host's pid in the name tells whose run a directory is (several hosts share /tmp).
    base = tempfile.mkdtemp(prefix=f"{MARKER}-{os.getpid()}-", dir=cfg.tmp_dir)
    try:
        os.chmod(base, 0o711)  # the sandbox user may traverse into work/, not list or read the rest
        work = os.path.join(base, "work")
        os.mkdir(work, 0o700)
        names = ("program", "channel", "status", "usage", "stdout", "stderr")
        paths = {name: os.path.join(base, name) for name in names}
        for name, path in paths.items():
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
                if name == "program":
                    handle.write(source)
        return _run(cfg, work, paths)
    finally:
        _remove_tree(base)


def _run(cfg: SandboxConfig, work: str, paths: dict[str, str]) -> SandboxResult:
    args = {
        "program": paths["program"], "channel": paths["channel"], "status": paths["status"], "usage": paths["usage"],
        "network": cfg.network.value, "drop": cfg.drop_privileges, "uid_base": SANDBOX_UID_BASE,
        "cpu": cfg.cpu_time_s, "memory": cfg.memory_bytes, "fsize": cfg.file_size_bytes, "nofile": cfg.open_files,
        "nproc": cfg.max_processes + 1 if cfg.max_processes else 0,
        "guard": cfg.guard, "parent": os.getpid(),
        "exit_setup": _EXIT_SETUP, "exit_syntax": _EXIT_SYNTAX, "exit_memory": _EXIT_MEMORY,
    }
    flags = ["-I", "-B", "-X", "utf8"] + ([] if cfg.site_packages else ["-S"])
    command = [cfg.python, *flags, "-c", _bootstrap_source(), MARKER, json.dumps(args)]
    # A fixed environment, nothing of the parent's. Numerical libraries get one thread each:
    # with max_processes = 0 they could not start more.
    env = {"PATH": os.defpath, "HOME": work, "TMPDIR": work, "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.monotonic()
    with open(paths["stdout"], "wb") as out, open(paths["stderr"], "wb") as err:
        try:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work, env=env,
                                    close_fds=True, start_new_session=True)
        except OSError as error:
            return SandboxResult(SandboxStatus.ERROR, None, "", "", time.monotonic() - start,
                                 message=f"cannot start {cfg.python}: {error}")
    timed_out = lost = False
    status: int | None = None
    usage = None
    try:
        try:
            status, usage = _wait(proc, cfg.wall_time_s)
        except ChildProcessError:  # someone else reaped it (a SIGCHLD handler calling waitpid(-1))
            lost = True
        timed_out = status is None and not lost
    finally:
        # Kill before reaping: the pid (the group and session id) stays reserved until then.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        setup = _read_setup(paths["status"])
        swept = _sweep(proc.pid, setup.uid)
        if swept:
            logger.debug("sandbox: killed %d leftover processes", swept)
        if status is None and not lost:
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            except ChildProcessError:
                lost = True
        # Popen must not try to reap it again.
        proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else -1
    duration = time.monotonic() - start
    stdout, stdout_cut = _read_head(paths["stdout"], cfg.max_output_bytes)
    stderr, stderr_cut = _read_head(paths["stderr"], cfg.max_output_bytes)
    channel, _ = _read_head(paths["channel"], cfg.max_channel_bytes)
    cpu = float(usage.ru_utime + usage.ru_stime) if usage is not None else 0.0
    rss_bound = int(usage.ru_maxrss) * 1024 if usage is not None else 0
    rss = _read_peak(paths["usage"])
    code = None if lost else proc.returncode
    if lost:
        status_enum, message = SandboxStatus.ERROR, "the program's exit status was collected by another waiter"
    else:
        status_enum, message = _classify(cfg, proc.returncode, timed_out, cpu, setup)
    return SandboxResult(
        status=status_enum, returncode=code,
        stdout=stdout.decode("utf-8", "replace"), stderr=stderr.decode("utf-8", "replace"),
        duration_s=duration, cpu_time_s=cpu, max_rss_bytes=rss, max_rss_bound_bytes=rss_bound,
        stdout_truncated=stdout_cut, stderr_truncated=stderr_cut, channel=channel,
        network_isolated=setup.network, uid=setup.uid, message=message,
    )


@dataclass(frozen=True)
class _Setup:
    """The child's setup report, written before any program code ran (so it can be trusted)."""

    ok: bool = False
    """Setup completed and the program was about to run."""
    network: bool = False
    """It got its own network namespace."""
    uid: int | None = None
    """The user id it switched to."""
    error: str | None = None
    """Why setup failed."""


def _read_peak(path: str) -> int | None:
    """The peak the bootstrap reported at exit (the last well-formed line), or ``None``."""
    try:
        with open(path, "rb") as handle:
            # The report is appended last: read the tail, whatever the program wrote before it.
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4096))
            lines = handle.read(4096).splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.isdigit() and int(line) > 0:
            return int(line)
    return None


def _read_setup(path: str) -> _Setup:
    try:
        with open(path, encoding="utf-8") as handle:
            line = handle.readline()
        record = json.loads(line)
    except (OSError, json.JSONDecodeError):
        return _Setup()
    if not isinstance(record, dict):
        return _Setup()
    uid = record.get("uid")
    error = record.get("error")
    return _Setup(ok=record.get("ok") is True, network=record.get("network") is True,
                  uid=uid if isinstance(uid, int) else None, error=str(error) if error is not None else None)


def _classify(cfg: SandboxConfig, code: int, timed_out: bool, cpu: float, setup: _Setup) -> tuple[SandboxStatus, str]:
    if setup.error is not None:
        return SandboxStatus.ERROR, f"sandbox setup failed: {setup.error}"
    if timed_out:
        return SandboxStatus.TIMEOUT, f"wall-clock limit of {cfg.wall_time_s:g} s reached"
    if not setup.ok:
        return SandboxStatus.ERROR, f"the sandboxed interpreter exited during setup (status {code})"
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= cfg.cpu_time_s):
        return SandboxStatus.TIMEOUT, f"CPU-time limit of {cfg.cpu_time_s} s reached"
    if code == _EXIT_SYNTAX:
        return SandboxStatus.SYNTAX_ERROR, ""
    if code == _EXIT_MEMORY:
        return SandboxStatus.MEMORY_LIMIT, f"memory limit of {cfg.memory_bytes >> 20} MiB reached"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return SandboxStatus.CRASHED, f"killed by {name}"
    return (SandboxStatus.PASSED, "") if code == 0 else (SandboxStatus.FAILED, "")


# -- running tests -------------------------------------------------------------------------


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


def _harness_main(nonce, parts, tests, test_timeout, instrument, got_name):  # pragma: no cover - runs in the sandbox
    import ast
    import json
    import linecache
    import os
    import reprlib
    import signal
    import traceback

    write, dumps = os.write, json.dumps  # kept before the solution can patch them
    limited = reprlib.Repr()
    limited.maxstring = limited.maxother = 160
    limited.maxlist = limited.maxtuple = limited.maxdict = limited.maxset = 12
    names = {name for _, name, _ in parts} | {f"test_{i}.py" for i in range(len(tests))}

    def emit(**record):
        record["nonce"] = nonce
        write(3, (dumps(record) + "\n").encode())

    class CaseTimeout(BaseException):
        pass

    def on_alarm(signum, frame):
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, on_alarm)

    def describe(err, name):
        # A test's own frames are left out of its traceback: the caller knows the test.
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename in names and
                  not f.filename.startswith("test_")]
        lines = traceback.format_list(frames[-8:])
        error = "".join(traceback.format_exception_only(type(err), err)).strip()
        if isinstance(err, SyntaxError):
            return error.splitlines()[-1], error
        return error.splitlines()[-1] if error else type(err).__name__, "".join(lines)[-3000:]

    def checked_value(err, name):
        tb, value = err.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == name and got_name in tb.tb_frame.f_locals:
                value = tb.tb_frame.f_locals[got_name]
            tb = tb.tb_next
        if value is None:
            return None
        try:
            return limited.repr(value)
        except BaseException:  # noqa: B036 - a hostile __repr__
            return "<unprintable>"

    def contains_call(node):
        return any(isinstance(sub, ast.Call) for sub in ast.walk(node))

    def bind(expr):
        target = ast.copy_location(ast.Name(id=got_name, ctx=ast.Store()), expr)
        return ast.copy_location(ast.NamedExpr(target=target, value=expr), expr)

    class BindChecked(ast.NodeTransformer):
        # assert f(x) == y  ->  assert (got_name := f(x)) == y; also `assert f(x)`, `assert not f(x)`.
        # Compiled from the tree, so tracebacks still show the test's own text.
        def visit_Assert(self, node):
            test = node.test
            if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.NotEq)):
                right = test.comparators[0]
                if contains_call(test.left) or not contains_call(right):
                    test.left = bind(test.left)
                else:
                    test.comparators = [bind(right)]
            elif isinstance(test, ast.Call):
                node.test = bind(test)
            elif isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and isinstance(test.operand, ast.Call):
                test.operand = bind(test.operand)
            return node

    def build(name, source, test):
        if test and instrument:
            try:
                return compile(BindChecked().visit(ast.parse(source, name)), name, "exec")
            except (SyntaxError, ValueError, TypeError):
                pass  # e.g. a walrus where none may stand: run the test as written
        return compile(source, name, "exec")

    def run(name, source, test=False):
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        code = build(name, source, test)
        signal.setitimer(signal.ITIMER_REAL, test_timeout)
        try:
            exec(code, namespace)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    for stage, name, source in parts:
        if not source.strip():
            continue
        try:
            run(name, source)
        except CaseTimeout:
            emit(stage=stage, error=f"Timeout: took longer than {test_timeout:g} s", traceback="")
            return
        except BaseException as err:  # noqa: B036 - whatever the solution raises is reported
            error, trace = describe(err, name)
            emit(stage=stage, error=error, traceback=trace)
            return
    emit(stage="loaded")
    for index, source in enumerate(tests):
        name = f"test_{index}.py"
        namespace.pop(got_name, None)  # no stale value from an earlier test
        try:
            run(name, source, test=True)
        except CaseTimeout:
            emit(test=index, passed=False, error=f"Timeout: took longer than {test_timeout:g} s", traceback="")
        except BaseException as err:  # noqa: B036
            error, trace = describe(err, name)
            emit(test=index, passed=False, error=error, traceback=trace, got=checked_value(err, name))
        else:
            emit(test=index, passed=True)


@functools.cache
def _harness_source() -> str:
    return textwrap.dedent(inspect.getsource(_harness_main))


def run_suite(
    solution: str,
    tests: Sequence[str],
    *,
    prelude: str = "",
    setup: str = "",
    test_timeout_s: float = 3.0,
    config: SandboxConfig | None = None,
    instrument: bool = True,
) -> SuiteResult:
    """Run ``prelude``, ``solution`` and ``setup`` (in that order, one namespace), then each
    test snippet, in one sandboxed process; a test passes when it runs without raising.

    ``prelude`` is trusted code the solution may rely on (a prompt's imports and helpers);
    ``setup`` prepares the tests (imports, constants). Each test gets ``test_timeout_s``;
    tests that never ran (the whole run hit a limit, or the program exited) count as failed.
    The results come back through the channel, tagged with a per-run nonce, so output the
    solution prints cannot pass for results (introspecting the harness could; see docs).
    """
    if test_timeout_s <= 0:
        raise ValueError(f"test_timeout_s must be > 0, got {test_timeout_s}")
    tests = list(tests)
    nonce = secrets.token_hex(16)
    parts = [("prelude", "prompt.py", prelude), ("solution", "solution.py", solution), ("setup", "setup.py", setup)]
    call_args = (nonce, parts, tests, float(test_timeout_s), bool(instrument), GOT_NAME)
    program = f"{_harness_source()}\n_harness_main(*{call_args!r})\n"
    result = run_python(program, config)
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

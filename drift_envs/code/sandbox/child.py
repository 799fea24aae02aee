"""The child side of a sandboxed run: the bootstrap that the sandboxed interpreter executes.

The host starts ``python -I -S -B -X utf8 .../sandbox/child.py drift-sandbox ARGS`` (this file,
by path; ``ARGS`` is JSON, see :func:`drift_envs.code.sandbox.host._child_args`). Before any
program code runs, :func:`main` isolates the network, switches to a fresh user id (as root),
sets the resource limits, reports the setup through a private file and installs the guard
(:mod:`guard`); then it runs the program (``mode = "program"``) or a test suite (``mode =
"suite"``, :mod:`judge`).

Runs only in the sandboxed interpreter, as a top-level script: standard library only, and its
sibling modules are imported by path (:func:`_import_siblings`), not through ``drift_envs``.
"""

from __future__ import annotations

import atexit
import json
import linecache
import os
import resource
import sys
import traceback

_SIBLINGS = ("guard", "judge")
"""Child-side modules next to this file, imported before any privilege change."""


def _import_siblings() -> dict:
    # -I leaves this file's directory off sys.path; it is put there only for these imports, and the
    # modules leave sys.modules afterwards, so the program cannot import them by name by accident.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    try:
        modules = {name: __import__(name) for name in _SIBLINGS}
    finally:
        sys.path.remove(here)
        for name in _SIBLINGS + ("wire",):
            sys.modules.pop(name, None)
    return modules


class _Reports:
    """The two private report files: setup (closed before the program runs) and peak memory (kept)."""

    def __init__(self, status_path: str, usage_path: str, exit_setup: int):
        self.status_fd = os.open(status_path, os.O_WRONLY | os.O_APPEND)
        # Kept open: after the user switch it could not be reopened.
        self.usage_fd = os.open(usage_path, os.O_WRONLY | os.O_APPEND)
        self.exit_setup = exit_setup

    def report(self, **fields: object) -> None:
        os.write(self.status_fd, (json.dumps(fields) + "\n").encode())

    def fail(self, message: str) -> None:
        self.report(error=message)
        os._exit(self.exit_setup)

    def close_status(self) -> None:
        os.close(self.status_fd)


def _load_libc():
    try:
        import ctypes

        return ctypes, ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None, None


def _unshare(ctypes, libc, flags: int) -> None:
    if hasattr(os, "unshare"):  # Python 3.12+
        os.unshare(flags)
    elif libc is None or libc.unshare(flags) != 0:
        errno = ctypes.get_errno() if libc is not None else 0
        raise OSError(errno, os.strerror(errno) if errno else "no libc")


def _isolate_network(mode: str, ctypes, libc, reports: _Reports) -> bool:
    """A new network namespace (only a downed loopback); whether one was made."""
    if mode == "off":
        return False
    clone_newnet, clone_newuser = 0x40000000, 0x10000000
    try:
        _unshare(ctypes, libc, clone_newnet)  # needs CAP_SYS_ADMIN (root)
        return True
    except OSError as err:
        error = err
    if os.geteuid() != 0:
        # An unprivileged user may own a network namespace inside a new user namespace
        # (where enabled); its capabilities there do not reach the host.
        try:
            _unshare(ctypes, libc, clone_newuser | clone_newnet)
            return True
        except OSError as err:
            error = err
    if mode == "require":
        reports.fail(f"cannot create a network namespace: {error}")
    return False


def _drop_privileges(uid: int, libc, reports: _Reports) -> None:
    """Switch to ``uid`` (and group ``uid``), keeping the interpreter's imports working."""
    # The interpreter's library may sit under a directory only root can traverse
    # (/root/.pyenv): keep each import directory open and import through /proc/self/fd/N,
    # which checks the directory itself, not its ancestors.
    dirs = [p for p in sys.path if p and os.path.isdir(p)]
    dir_fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in dirs]
    try:
        os.chown(".", uid, uid)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    except OSError as err:
        reports.fail(f"cannot switch to user id {uid}: {err}")
    if os.getuid() != uid or os.geteuid() != uid:
        reports.fail(f"still running as user {os.geteuid()} after switching to {uid}")
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


def _set_limits(args: dict, reports: _Reports) -> None:
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
            reports.fail(f"cannot set resource limit {which}: {err}")


def _peak_reporter(usage_fd: int):
    """A function that writes this process's peak resident memory (``VmHWM``) to ``usage_fd``.

    Opened and allocated now, so that the report at exit needs no free descriptor, no ``open``
    (which the program may have exhausted or patched) and no new memory.
    """
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

    return report_peak


def _run_guarded(run, args: dict, report_peak) -> None:
    """Call ``run()``; an exception ends the process with the status the host classifies."""
    try:
        run()
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
        tb = err.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:  # the bootstrap's own frames
            tb = tb.tb_next
        traceback.print_exception(type(err), err, tb)
        sys.stderr.flush()
        report_peak()
        os._exit(1)


def _run_program(source: str, args: dict, report_peak) -> None:
    """Compile and run ``source`` as ``main.py``."""
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
    _run_guarded(lambda: exec(code, namespace), args, report_peak)


def main() -> None:
    args = json.loads(sys.argv[2])
    siblings = _import_siblings()
    # The channel becomes fd 3 (the lowest free one, 0-2 being stdio).
    channel = os.open(args["channel"], os.O_WRONLY | os.O_APPEND)
    if channel != 3:
        os.dup2(channel, 3)
        os.close(channel)
    reports = _Reports(args["status"], args["usage"], args["exit_setup"])
    with open(args["program"], encoding="utf-8") as handle:  # a private file, read before the user switch
        payload = handle.read()
    ctypes, libc = _load_libc()
    network = _isolate_network(args["network"], ctypes, libc, reports)
    uid = None
    if args["drop"] and os.geteuid() == 0:
        uid = args["uid_base"] + os.getpid()
        _drop_privileges(uid, libc, reports)
    if libc is not None:
        # Die with the parent (set after the user switch, which clears it).
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
        if os.getppid() != args["parent"]:
            os._exit(args["exit_setup"])
    _set_limits(args, reports)
    report_peak = _peak_reporter(reports.usage_fd)
    # Runs after the program's own atexit handlers (registered later, run first) and after
    # non-daemon threads were joined; os._exit and signals skip it.
    atexit.register(report_peak)

    reports.report(ok=True, network=network, uid=uid)
    reports.close_status()
    del ctypes, libc  # nothing of ctypes is left to the program
    sys.modules.pop("ctypes", None)
    if args["guard"]:
        siblings["guard"].install(os.getcwd())
    if args["mode"] == "suite":
        suite = json.loads(payload)
        del payload
        _run_guarded(lambda: siblings["judge"].run(**suite), args, report_peak)
    else:
        _run_program(payload, args, report_peak)


if __name__ == "__main__":
    main()

"""The child side of a sandboxed run: the bootstrap that the sandboxed interpreter executes.

The host starts ``python -I -S -B -X utf8 .../sandbox/child.py drift-sandbox ARGS`` (this file,
by path; ``ARGS`` is the JSON that :func:`drift_envs.code.sandbox.host.run_child` writes: paths,
limits, the mode). Before any program code runs, :func:`main` isolates the network, switches to a
fresh user id (as root), sets the resource limits, reports the setup through a private file and
installs the guard (:mod:`guard`); then it runs the program (``mode = "program"``) or a test
suite (``mode = "suite"``: this process becomes the judge, :mod:`judge`, and a forked one serves
the solution, :mod:`server`).

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

_SIBLINGS = {"program": ("guard",), "suite": ("wire", "guard", "judge", "server")}
"""Child-side modules next to this file that each mode needs, imported before any privilege change."""


def _import_siblings(mode: str) -> dict:
    # -I leaves this file's directory off sys.path; it is put there only for these imports, and the
    # modules leave sys.modules afterwards, so the program cannot import them by name by accident.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    try:
        modules = {name: __import__(name) for name in _SIBLINGS[mode]}
    finally:
        sys.path.remove(here)
        for name in _SIBLINGS[mode]:
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


def _isolate_network(mode: str, ctypes, libc, fail) -> bool:
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
        fail(f"cannot create a network namespace: {error}")
    return False


def _drop_privileges(uid: int, libc, fail, *, own_workdir: bool = True) -> None:
    """Switch to ``uid`` (and group ``uid``), keeping the interpreter's imports working; with
    ``own_workdir`` the working directory becomes the new user's."""
    # The interpreter's library may sit under a directory only root can traverse
    # (/root/.pyenv): keep each import directory open and import through /proc/self/fd/N,
    # which checks the directory itself, not its ancestors.
    dirs = [p for p in sys.path if p and os.path.isdir(p)]
    dir_fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in dirs]
    try:
        if own_workdir:
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


def _set_limits(args: dict, nproc: int, fail) -> None:
    limits = [
        (resource.RLIMIT_CPU, args["cpu"], args["cpu"] + 1),
        (resource.RLIMIT_AS, args["memory"], args["memory"]),
        (resource.RLIMIT_FSIZE, args["fsize"], args["fsize"]),
        (resource.RLIMIT_NOFILE, args["nofile"], args["nofile"]),
        # Counted per user: the fresh user id has this one process so far.
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    for which, soft, hard in limits:
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError) as err:
            fail(f"cannot set resource limit {which}: {err}")


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


def _die_with_parent(libc, parent: int, exit_setup: int) -> None:
    if libc is not None:
        # Set after the user switch, which clears it.
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
        if os.getppid() != parent:
            os._exit(exit_setup)


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: B036 - the program may have replaced or closed them
            pass
    os._exit(code)


def _run_one_program(args: dict, siblings: dict, reports: _Reports, source: str, ctypes, libc, network: bool) -> None:
    """``mode = "program"``: one process runs the program."""
    uid = None
    if args["drop"] and os.geteuid() == 0:
        uid = args["uid_base"] + os.getpid()
        _drop_privileges(uid, libc, reports.fail)
    _die_with_parent(libc, args["parent"], args["exit_setup"])
    _set_limits(args, args["nproc"], reports.fail)
    report_peak = _peak_reporter(reports.usage_fd)
    # Runs after the program's own atexit handlers (registered later, run first) and after
    # non-daemon threads were joined; os._exit and signals skip it.
    atexit.register(report_peak)
    reports.report(ok=True, network=network, uid=uid, uids=[uid] if uid is not None else [])
    reports.close_status()
    del ctypes, libc  # nothing of ctypes is left to the program
    sys.modules.pop("ctypes", None)
    if args["guard"]:
        siblings["guard"].install(os.getcwd())
    _run_program(source, args, report_peak)


def _run_suite(args: dict, siblings: dict, reports: _Reports, solution: dict, judge_fd: int, ctypes, libc,
               network: bool) -> None:
    """``mode = "suite"``: the judge (this process) runs the tests, a forked process the solution.

    The fork comes before any privilege change. The solution's process closes, before any of its
    code runs, every descriptor that leads to the results (the channel, the judge's payload with
    the tests and the nonce, the report files); the judge reads its payload only after the fork,
    so the nonce is never in the solution's memory. As root each process gets its own fresh user
    id, so the solution cannot signal, trace or read the judge; otherwise the judge makes itself
    non-dumpable, which keeps a process of the same user out of its memory and descriptors.
    """
    wire, judge, server = siblings["wire"], siblings["judge"], siblings["server"]
    requests_read, requests_write = os.pipe()  # judge -> solution
    replies_read, replies_write = os.pipe()  # solution -> judge
    judge_pid = os.getpid()
    root = args["drop"] and os.geteuid() == 0
    pid = os.fork()
    if pid == 0:  # the solution's process
        for fd in (3, judge_fd, reports.status_fd, reports.usage_fd, requests_write, replies_read):
            os.close(fd)

        def fail(message: str) -> None:
            wire.send(replies_write, {"setup": {"error": message}})
            os._exit(args["exit_setup"])

        uid = None
        if root:
            uid = args["uid_base"] + os.getpid()
            _drop_privileges(uid, libc, fail)
        _die_with_parent(libc, judge_pid, args["exit_setup"])
        _set_limits(args, args["nproc"], fail)
        wire.send(replies_write, {"setup": {"ok": True, "uid": uid}})
        del ctypes, libc
        sys.modules.pop("ctypes", None)
        if args["guard"]:
            siblings["guard"].install(os.getcwd())
        _run_guarded(lambda: server.serve(requests_read, replies_write, solution["parts"], solution["test_timeout"],
                                          solution["max_bytes"], solution["entry_point"]), args, lambda: None)
        _flush_and_exit(0)

    os.close(requests_read)
    os.close(replies_write)
    uid = None
    if root:
        uid = args["uid_base"] + os.getpid()
        _drop_privileges(uid, libc, reports.fail, own_workdir=False)  # work/ is the solution's
    elif libc is not None:
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no /proc/<pid>/mem, fd, environ for the same user
    _die_with_parent(libc, args["parent"], args["exit_setup"])
    _set_limits(args, 0, reports.fail)  # the judge never forks
    report_peak = _peak_reporter(reports.usage_fd)
    atexit.register(report_peak)
    link = judge.Link(requests_write, replies_read, pid, solution["max_bytes"], {"memory": args["exit_memory"]})
    link.cpu_limit = args["cpu"]
    try:
        setup = link.receive(deadline=None)
    except judge.SolutionGone as gone:
        reports.fail(f"the solution's process did not start: {gone}")
    report = setup.get("setup") if isinstance(setup.get("setup"), dict) else {"error": "no setup report"}
    if report.get("ok") is not True:
        reports.fail(str(report.get("error", "the solution's process failed its setup")))
    solution_uid = report.get("uid") if root else None
    with os.fdopen(judge_fd, encoding="utf-8") as handle:
        suite = json.load(handle)
    reports.report(ok=True, network=network, uid=solution_uid,
                   uids=[u for u in (uid, solution_uid) if isinstance(u, int)])
    reports.close_status()
    del ctypes, libc
    sys.modules.pop("ctypes", None)
    _run_guarded(lambda: judge.run(link, usage_fd=reports.usage_fd, **suite), args, report_peak)


def main() -> None:
    args = json.loads(sys.argv[2])
    siblings = _import_siblings(args["mode"])
    # The channel becomes fd 3 (the lowest free one, 0-2 being stdio).
    channel = os.open(args["channel"], os.O_WRONLY | os.O_APPEND)
    if channel != 3:
        os.dup2(channel, 3)
        os.close(channel)
    reports = _Reports(args["status"], args["usage"], args["exit_setup"])
    with open(args["program"], encoding="utf-8") as handle:  # a private file, read before the user switch
        payload = handle.read()
    ctypes, libc = _load_libc()
    network = _isolate_network(args["network"], ctypes, libc, reports.fail)
    if args["mode"] == "suite":
        # The judge's payload (tests, nonce) is opened now and its name removed at once: nothing
        # but the judge's descriptor leads to it.
        judge_fd = os.open(args["judge"], os.O_RDONLY)
        os.unlink(args["judge"])
        _run_suite(args, siblings, reports, json.loads(payload), judge_fd, ctypes, libc, network)
    else:
        _run_one_program(args, siblings, reports, payload, ctypes, libc, network)


if __name__ == "__main__":
    main()

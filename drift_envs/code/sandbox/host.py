"""The host side of a sandboxed run: start the child interpreter, enforce the wall clock, clean up.

:func:`run_python` writes the program and the report files into a private run directory, starts
``python -I -S -B .../child.py`` (:mod:`.child`, by path) in a new session with a fixed environment,
waits on a pidfd, kills the process group and every process left in the session or running as the
sandbox's user id, reaps the child and reads back what it wrote.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Imported here, never used here: where Python writes bytecode, these child-side modules are then
# cached, and the sandboxed interpreter (which imports them by path) need not compile them each run.
from drift_envs.code.sandbox import guard, judge, server, wire  # noqa: F401
from drift_envs.code.sandbox.config import (
    EXIT_MEMORY,
    EXIT_SETUP,
    EXIT_SYNTAX,
    MARKER,
    SANDBOX_UID_BASE,
    SandboxConfig,
    SandboxResult,
    SandboxStatus,
)

logger = logging.getLogger(__name__)

CHILD_SCRIPT = str(Path(__file__).with_name("child.py"))
"""The bootstrap the sandboxed interpreter executes (by path: it must not depend on site-packages)."""


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


def _sweep(session: int, uids: tuple[int, ...]) -> int:
    """Kill every live process in ``session`` or running as one of ``uids``; how many were found."""
    killed = 0
    for _ in range(50):
        targets = [pid for pid, state, sid, puid in _proc_entries()
                   if state not in ("Z", "X") and (sid == session or puid in uids)]
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
    return run_child(source, config or SandboxConfig(), mode="program")


def run_child(payload: str, cfg: SandboxConfig, *, mode: str = "program", judge_payload: str = "") -> SandboxResult:
    """Run the bootstrap (:mod:`.child`) in ``mode`` with the limits of ``cfg``.

    ``program``: ``payload`` is the program's source. ``suite``: ``payload`` is the JSON the
    solution's process reads (:func:`.server.serve`), ``judge_payload`` the JSON the judge reads
    (:func:`.judge.run`: the tests and the nonce), in a file whose name the bootstrap removes
    before any of the solution's code runs.
    """
    # The host's pid in the name tells whose run a directory is (several hosts share /tmp).
    base = tempfile.mkdtemp(prefix=f"{MARKER}-{os.getpid()}-", dir=cfg.tmp_dir)
    try:
        os.chmod(base, 0o711)  # the sandbox user may traverse into work/, not list or read the rest
        work = os.path.join(base, "work")
        os.mkdir(work, 0o700)
        names = ("program", "channel", "status", "usage", "stdout", "stderr") + (("judge",) if mode == "suite" else ())
        paths = {name: os.path.join(base, name) for name in names}
        contents = {"program": payload, "judge": judge_payload}
        for name, path in paths.items():
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as handle:
                handle.write(contents.get(name, ""))
        return _run(cfg, work, paths, mode)
    finally:
        _remove_tree(base)


def _run(cfg: SandboxConfig, work: str, paths: dict[str, str], mode: str) -> SandboxResult:
    args = {
        "program": paths["program"], "channel": paths["channel"], "status": paths["status"], "usage": paths["usage"],
        "judge": paths.get("judge"),
        "network": cfg.network.value, "drop": cfg.drop_privileges, "uid_base": SANDBOX_UID_BASE,
        "cpu": cfg.cpu_time_s, "memory": cfg.memory_bytes, "fsize": cfg.file_size_bytes, "nofile": cfg.open_files,
        "nproc": cfg.max_processes + 1 if cfg.max_processes else 0,
        "guard": cfg.guard, "parent": os.getpid(), "mode": mode,
        "exit_setup": EXIT_SETUP, "exit_syntax": EXIT_SYNTAX, "exit_memory": EXIT_MEMORY,
    }
    flags = ["-I", "-B", "-X", "utf8"] + ([] if cfg.site_packages else ["-S"])
    command = [cfg.python, *flags, CHILD_SCRIPT, MARKER, json.dumps(args)]
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
        swept = _sweep(proc.pid, setup.uids)
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
    """The user id the program (in a suite, the solution) switched to."""
    uids: tuple[int, ...] = ()
    """Every user id the run's processes switched to (the judge's and the solution's in a suite)."""
    error: str | None = None
    """Why setup failed."""


def _read_peak(path: str) -> int | None:
    """The largest peak the bootstrap reported (one line per process), or ``None``."""
    try:
        with open(path, "rb") as handle:
            # The report is appended last: read the tail, whatever the program wrote before it.
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4096))
            lines = handle.read(4096).splitlines()
    except OSError:
        return None
    peaks = [int(line) for line in lines if line.isdigit() and int(line) > 0]
    return max(peaks) if peaks else None


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
    uids = record.get("uids")
    error = record.get("error")
    uids = tuple(u for u in uids if isinstance(u, int) and u >= SANDBOX_UID_BASE) if isinstance(uids, list) else ()
    return _Setup(ok=record.get("ok") is True, network=record.get("network") is True,
                  uid=uid if isinstance(uid, int) else None, uids=uids,
                  error=str(error) if error is not None else None)


def _classify(cfg: SandboxConfig, code: int, timed_out: bool, cpu: float, setup: _Setup) -> tuple[SandboxStatus, str]:
    if setup.error is not None:
        return SandboxStatus.ERROR, f"sandbox setup failed: {setup.error}"
    if timed_out:
        return SandboxStatus.TIMEOUT, f"wall-clock limit of {cfg.wall_time_s:g} s reached"
    if not setup.ok:
        return SandboxStatus.ERROR, f"the sandboxed interpreter exited during setup (status {code})"
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu >= cfg.cpu_time_s):
        return SandboxStatus.TIMEOUT, f"CPU-time limit of {cfg.cpu_time_s} s reached"
    if code == EXIT_SYNTAX:
        return SandboxStatus.SYNTAX_ERROR, ""
    if code == EXIT_MEMORY:
        return SandboxStatus.MEMORY_LIMIT, f"memory limit of {cfg.memory_bytes >> 20} MiB reached"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return SandboxStatus.CRASHED, f"killed by {name}"
    return (SandboxStatus.PASSED, "") if code == 0 else (SandboxStatus.FAILED, "")

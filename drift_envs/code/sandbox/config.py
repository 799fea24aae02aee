"""What a sandboxed run is given (:class:`SandboxConfig`) and what it reports (:class:`SandboxResult`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum

SANDBOX_UID_BASE = 1 << 30
"""A run as root switches to user (and group) id ``SANDBOX_UID_BASE + pid``: unused on a normal
system, and unique among live sandboxes because process ids are."""
MARKER = "drift-sandbox"
"""Argument on every sandboxed process's command line (to find leftovers)."""
CHANNEL_FD = 3
"""File descriptor a sandboxed program may write results to; see :attr:`SandboxResult.channel`."""

EXIT_SETUP = 111
"""Exit status of a child whose setup failed (its report says why)."""
EXIT_SYNTAX = 112
"""Exit status of a program that does not compile."""
EXIT_MEMORY = 113
"""Exit status of a program that raised ``MemoryError``."""


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
    """CPU-time limit (``RLIMIT_CPU``, whole seconds, per process): SIGXCPU at the limit, SIGKILL a second later."""
    memory_bytes: int = 1 << 30
    """Address-space limit (``RLIMIT_AS``, per process); allocations beyond it raise ``MemoryError``."""
    file_size_bytes: int = 8 << 20
    """Largest file the program may write (``RLIMIT_FSIZE``), stdout and stderr included."""
    max_output_bytes: int = 64 << 10
    """stdout and stderr kept in the result (each); the rest is dropped and flagged."""
    max_channel_bytes: int = 4 << 20
    """Bytes of the result channel (fd 3) read back; in a test suite also the largest value the
    solution's process may send back for one call."""
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
    ``/proc/<pid>/status`` read by the bootstrap when the program ends (in a test suite, the
    larger of the two processes'); ``None`` when it did not end through the bootstrap (killed
    at a limit or by a signal, ``os._exit``, setup failed). The bootstrap runs in the
    program's interpreter, so a program that tampers with it could misreport it; the memory
    limit itself is ``RLIMIT_AS`` and holds either way."""
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

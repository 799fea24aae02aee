"""Running model-written (untrusted) Python in a separate, limited process.

:func:`run_python` runs one program; :func:`run_suite` runs a solution and a list of test
snippets and reports each test. The host survives whatever the program does and gets a
:class:`SandboxResult` back; every process the program could start is killed and the temporary
directory is removed before the call returns.

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

Modules, one concept each: :mod:`.config` (settings and results), :mod:`.host` (the host's
process management), :mod:`.child` (the bootstrap the sandboxed interpreter executes, by path),
:mod:`.guard` (the in-process guard), :mod:`.harness` (test suites, host side) and :mod:`.judge`
(test suites, child side).
"""

from drift_envs.code.sandbox.config import (
    CHANNEL_FD,
    MARKER,
    SANDBOX_UID_BASE,
    NetworkIsolation,
    SandboxConfig,
    SandboxError,
    SandboxResult,
    SandboxStatus,
)
from drift_envs.code.sandbox.harness import GOT_NAME, CaseResult, SuiteResult, run_suite
from drift_envs.code.sandbox.host import run_python

__all__ = [
    "CHANNEL_FD", "GOT_NAME", "MARKER", "SANDBOX_UID_BASE", "CaseResult", "NetworkIsolation", "SandboxConfig",
    "SandboxError", "SandboxResult", "SandboxStatus", "SuiteResult", "run_python", "run_suite",
]

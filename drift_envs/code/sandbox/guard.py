"""The in-process guard of a sandboxed interpreter (child side: imported by :mod:`child`, standard library only).

Python-level only: C code (or a re-imported builtin module) gets around it; the user switch and
the resource limits are what actually hold. It stops accidents and naive code.
"""

from __future__ import annotations

import builtins
import io
import os
import posix
import sys


def install(workdir: str) -> None:
    """Disable process creation, signals and writes outside ``workdir`` in this interpreter.

    ``workdir`` itself and ``/dev/null`` stay writable.
    """
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

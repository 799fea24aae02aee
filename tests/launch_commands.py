"""Run several `drift` command lines, one after the other, in one process: under `accelerate launch` they share one
process group and one start-up (tests/test_distributed.py). Exits with the first non-zero exit code."""

from __future__ import annotations

import shlex
import sys

from drift_cli.main import app

if __name__ == "__main__":
    for line in sys.argv[1:]:
        code = app(shlex.split(line), standalone_mode=False)
        if code:
            sys.exit(code)

"""Kept for old commands: the throughput benchmark is `drift bench throughput` (drift_algos/throughput.py).

    python benchmarks/throughput.py --engine transformers --prompts 16 --out runs/bench-throughput

takes the same options as `drift bench throughput`.
"""

from __future__ import annotations

import sys

from drift_cli.main import app

if __name__ == "__main__":
    sys.exit(app(["bench", "throughput", *sys.argv[1:]]))

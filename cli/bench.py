"""`drift bench ...`: benchmarks measured side by side in one run (each subcommand in its own module)."""

from __future__ import annotations

import typer

bench_app = typer.Typer(
    help="Benchmarks that print ratios measured side by side in one run and write JSON.",
    no_args_is_help=True,
)

from drift_cli.bench_throughput import throughput  # noqa: E402 - registered on the sub-app defined above

bench_app.command(name="throughput")(throughput)

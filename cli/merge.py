"""`drift merge`: join the shards of one rollout collection into one file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from drift_cli.common import check_out_path, console, setup_logging, user_errors


def merge(
    out: Annotated[Path, typer.Argument(help="Merged JSONL to write (its settings go to OUT.meta.json).")],
    shards: Annotated[list[Path], typer.Argument(help="Shard files written by drift rollout --shard I/K.")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Merge rollout shards into one file, groups in order.

    Refuses (one line naming the shard file and the field, exit code 2) shards of different
    collections (model, environment, sampling, seed, sizes), a group in two shards, a group with
    missing or repeated samples, and groups no shard holds. Equal, row for row, to the file one
    unsharded run with the same seed writes.
    """
    setup_logging(verbose)
    with user_errors():
        from drift_algos.rollout.collection import merge as merge_shards

        check_out_path(out)
        if out.exists():
            raise FileExistsError(f"{out} already exists; choose another output")
        meta, rows = merge_shards(list(shards), out)
        console.print(f"merged {len(shards)} shards: {meta.num_prompts} groups x {meta.n} = {rows} trajectories "
                      f"-> [bold]{out}[/]")

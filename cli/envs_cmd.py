"""`drift envs`: list the registered environments."""

from __future__ import annotations

from rich.table import Table

from drift_cli.common import console, user_errors


def envs() -> None:
    """List drift environments: built-in, from installed packages' `drift.envs` entry points, and registered ones."""
    with user_errors():
        from drift_envs import list_envs

        table = Table(title="drift environments")
        for column in ("id", "aliases", "entry point", "origin"):
            table.add_column(column)
        for info in list_envs():
            table.add_row(info.id, ", ".join(info.aliases), info.entry_point, info.origin)
        console.print(table)

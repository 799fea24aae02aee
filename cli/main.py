"""The `drift` command: each subcommand lives in its own module of this package."""

from __future__ import annotations

import sys

import typer

from drift_cli import bench_compare  # noqa: F401 - registers `drift bench compare` on bench_app
from drift_cli.bench import bench_app
from drift_cli.envs_cmd import envs
from drift_cli.eval_cmd import eval_
from drift_cli.merge import merge
from drift_cli.rollout import rollout
from drift_cli.run import run
from drift_cli.train import train
from drift_cli.weigh import register as register_weigh

app = typer.Typer(
    help="drift: DRIFT (decoupled rollouts + importance-weighted fine-tuning) and its baselines "
    "for multi-turn RL of LLMs on Gymnasium text environments.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(envs)
app.command()(rollout)
app.command()(merge)
register_weigh(app)
app.command()(train)
app.command(name="eval")(eval_)
app.command()(run)
app.add_typer(bench_app, name="bench")

def main() -> None:
    """Console entry point: usage errors (a flag out of range, an unknown option) are one line
    with exit code 2, like every other input error."""
    from rich.markup import escape

    from drift_cli.common import err_console

    args = sys.argv[1:] or ["--help"]
    try:
        code = app(args, standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as err:  # click's usage errors, vendored by typer
        message = err.format_message() if hasattr(err, "format_message") else str(err)
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(getattr(err, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

"""The `drift` command: each subcommand lives in its own module of this package."""

from __future__ import annotations

import typer

from drift_cli.envs_cmd import envs
from drift_cli.rollout import rollout
from drift_cli.run import eval_, run, train
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
register_weigh(app)
app.command()(train)
app.command(name="eval")(eval_)
app.command()(run)

if __name__ == "__main__":
    app()

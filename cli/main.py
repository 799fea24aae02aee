"""The `drift` command."""

import typer

app = typer.Typer(help="drift: DRIFT and its baselines for multi-turn RL of LLMs on Gymnasium text environments.")

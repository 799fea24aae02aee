"""`drift bench compare`: DRIFT against its baselines on one budget (drift_algos.comparison does the work)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from drift_cli.bench import bench_app
from drift_cli.common import (
    EngineOption,
    ThreadsOption,
    console,
    engine_config,
    parse_env_args,
    removed_on_failure,
    setup_logging,
    user_errors,
)
from drift_cli.rollout import ENV_ARG_HELP, ENV_HELP, MODEL_HELP
from drift_cli.run import RichReporter

ALGOS_HELP = ("Comma-separated algorithms: drift, sft (last assistant turn), sft-all (every assistant turn), rft, "
              "grpo, ppo. Each is paired against drift when drift is among them.")
BUDGET_HELP = ("Each algorithm's budget: tokens=N (generated tokens) or seconds=S (wall-clock of rollouts and "
               "training, evaluation excluded). Default: the preset's (smoke: tokens=400, default: seconds=1800).")
PRESET_HELP = ("Sizes. smoke: seconds on a tiny model, learns nothing measurable (for CI). default: the embedded "
               "model on a 2-core CPU, equal wall-clock budget of 1800 s per algorithm (measured at 600 s: one GRPO "
               "iteration 789 s, one evaluation of 100 problems 210-240 s).")
SEEDS_HELP = "Comma-separated training seeds (rollouts, batch order, online sampling); results are aggregated."


def _names(text: str, flag: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError(f"{flag}: give a comma-separated list, got '{text}'")
    return names


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in _names(text, "--seeds"))
    except ValueError:
        raise ValueError(f"--seeds: expected comma-separated integers such as 0,1,2, got '{text}'") from None


def results_table(results: dict) -> Table:
    from drift_algos.comparison_results import table_rows

    header, rows = table_rows(results)
    table = Table(title=f"{', '.join(results['algos'])} on {results['env']}: budget "
                        f"{results['budget']['kind']}={results['budget']['amount']:g}, seeds "
                        f"{','.join(map(str, results['seeds']))}, {results['problems']} held-out problems")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def compare(
    env: Annotated[str, typer.Option(help=ENV_HELP)] = "math",
    algos: Annotated[str, typer.Option(help=ALGOS_HELP)] = "drift,sft,sft-all,rft,grpo,ppo",
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "smollm2-135m",
    preset: Annotated[str, typer.Option(help=PRESET_HELP)] = "default",
    budget: Annotated[str | None, typer.Option(help=BUDGET_HELP)] = None,
    seeds: Annotated[str, typer.Option(help=SEEDS_HELP)] = "0",
    eval_problems: Annotated[int | None, typer.Option(min=1, help="Held-out problems (default: the preset's; "
                                                      "smoke 8, default 100).")] = None,
    out: Annotated[Path, typer.Option(help="Results directory (results.json, results.md, PNG plots).")] = Path(
        "runs/compare"),
    env_arg: Annotated[list[str] | None, typer.Option(help=ENV_ARG_HELP)] = None,
    engine: EngineOption = "auto",
    threads: ThreadsOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Train every algorithm from the same base model on the same budget and compare them on the same held-out
    problems: learning curves (multi@k against wall-clock and generated tokens), final multi@k with paired 95%
    intervals against the base model and against DRIFT, costs, peak memory, and when each first reached its final
    accuracy.

    Offline algorithms share one rollout collection per seed and each is charged its full cost; evaluation time is
    not charged. Writes results.json, results.md, curve_seconds.png, curve_tokens.png and multi_at_k.png to --out.
    """
    setup_logging(verbose)
    with user_errors():
        from drift_algos.comparison import Budget, CompareConfig, get_compare_preset
        from drift_algos.comparison import compare as run_compare

        if not out.parent.exists():
            raise FileNotFoundError(f"--out: parent directory does not exist: {out.parent}")
        compare_preset = get_compare_preset(preset)
        if eval_problems is not None:
            compare_preset.run.eval = dataclasses.replace(compare_preset.run.eval, num_problems=eval_problems)
        cfg = CompareConfig(env=env, model=model, algos=tuple(_names(algos, "--algos")),
                            preset=compare_preset, out_dir=out,
                            budget=Budget.parse(budget) if budget is not None else None, seeds=_seeds(seeds),
                            env_args=parse_env_args(env_arg), engine=engine_config(engine, threads=threads))
        reporter = RichReporter()
        with removed_on_failure(out):
            try:
                results = run_compare(cfg, reporter)
            finally:
                reporter.done("")
    console.print(results_table(results))
    claim = results["claim"]
    if claim is not None:
        console.print(f"claim: {claim['statement']}: {claim['verdict']} (results.md has each seed)")
    console.print(f"results: [bold]{out}[/] (results.json, results.md, curve_seconds.png, curve_tokens.png, "
                  "multi_at_k.png)")


bench_app.command(name="compare")(compare)

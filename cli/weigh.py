"""`drift weigh`: add DRIFT returns and weights to a trajectory file."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from drift_algos import jsonio
from drift_algos.returns import DEFAULT_BETA, DEFAULT_GAMMA, DEFAULT_REPETITION_LAMBDA, WeightStats
from drift_algos.weighting import WeighConfig, default_output_path, stats_path_for, weigh_file
from drift_cli.common import console, user_errors

_STAT_LABELS = {
    "num_trajectories": "trajectories",
    "num_groups": "prompt groups",
    "ess_mean": "ESS per group, mean",
    "ess_min": "ESS per group, min",
    "ess_fraction_mean": "ESS / group size, mean",
    "ess_overall": "ESS overall",
    "ess_overall_fraction": "ESS overall / trajectories",
    "weight_min": "weight min",
    "weight_max": "weight max",
    "weight_mean": "weight mean",
    "return_mean": "return mean",
    "return_min": "return min",
    "return_max": "return max",
    "equal_return_group_share": "groups with all returns equal",
    "no_success_group_share": "groups with no success",
    "single_trajectory_groups": "groups of one trajectory (weight 1)",
    "empty_last_replies": "empty last replies (weighed, not trained on)",
}


def weigh(
    in_path: Annotated[
        Path,
        typer.Argument(help="Trajectory JSONL file (drift's or the DRIFT release's schema).", show_default=False),
    ],
    gamma: Annotated[
        float,
        typer.Option(help="Discount per turn in [0, 1]: a success at turn t counts gamma^(t-1), so earlier is better."),
    ] = DEFAULT_GAMMA,
    beta: Annotated[
        float,
        typer.Option(
            help="KL temperature > 0: weights are exp(return/beta) normalised to mean 1 per prompt; "
            "smaller beta concentrates the weight on the best trajectories, larger beta tends to plain SFT."
        ),
    ] = DEFAULT_BETA,
    repetition_lambda: Annotated[
        float,
        typer.Option(help="Scale of the repetition penalty lambda * (1 - unique answers / answers), >= 0."),
    ] = DEFAULT_REPETITION_LAMBDA,
    recorded_repetition_penalty: Annotated[
        bool,
        typer.Option(
            "--recorded-repetition-penalty",
            help="Use the environment's recorded repetition_penalty where a record has one, instead of "
            "recomputing it from answer_norms (the default, as the release does; release files have no such column).",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output JSONL (default: IN with the suffix .weighted.jsonl).", show_default=False
        ),
    ] = None,
) -> None:
    """Compute each trajectory's return and its DRIFT weight within its prompt group.

    The return is R = sum_t gamma^(t-1) r_t + format_penalty - repetition_penalty; the weight is
    w_i = exp(R_i/beta) / mean_j exp(R_j/beta) over the trajectories of the same prompt_id (the optimum of
    the KL-regularised objective with temperature beta, self-normalised). OUT is IN with `return` and `weight`
    columns added; its statistics go to OUT.stats.json. Re-weigh with another beta without new rollouts.
    """
    with user_errors():
        cfg = WeighConfig(
            gamma=gamma,
            beta=beta,
            repetition_lambda=repetition_lambda,
            use_recorded_repetition_penalty=recorded_repetition_penalty,
        )
        out_path = out if out is not None else default_output_path(in_path)
        stats_path = stats_path_for(out_path)
        stats = weigh_file(in_path, out_path, cfg)
        report = {"input": str(in_path), "output": str(out_path), "config": asdict(cfg), "stats": stats.to_dict()}
        stats_path.write_text(jsonio.dumps(report) + "\n", encoding="utf-8")
    console.print(_stats_table(stats, cfg))
    console.print(f"wrote {escape(str(out_path))}")
    console.print(f"stats {escape(str(stats_path))}")


def _stats_table(stats: WeightStats, cfg: WeighConfig) -> Table:
    table = Table(title=f"DRIFT weights (gamma={cfg.gamma:g}, beta={cfg.beta:g})")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for name, value in stats.to_dict().items():
        if value is None:
            shown = "n/a"
        elif isinstance(value, int):
            shown = str(value)
        elif name.endswith(("share", "fraction")):
            shown = f"{value:.1%}"
        else:
            shown = f"{value:.4g}"
        table.add_row(_STAT_LABELS.get(name, name), shown)
    return table


def register(app: typer.Typer) -> None:
    """Add the command to ``app`` as ``weigh``."""
    app.command("weigh")(weigh)

"""Rich tables of drift's results."""

from __future__ import annotations

import math

from rich.table import Table

from drift_algos.evaluation.metrics import MultiTurnMetrics
from drift_algos.rollout.agent import RolloutSummary


def pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"


def turn_table(metrics: MultiTurnMetrics, title: str) -> Table:
    """One row per turn; the flip columns only where some episode continued after a success (metrics.py)."""
    flips = metrics.wrong_to_right is not None and metrics.right_to_wrong is not None
    table = Table(title=title)
    columns = ["turn", "running", "accuracy", "multi@k", "correction"]
    columns += ["wrong→right", "right→wrong"] if flips else []
    for column in columns:
        table.add_column(column, justify="right")
    for t in range(metrics.max_turns):
        row = [str(t + 1), str(metrics.running[t]), pct(metrics.accuracy[t]), pct(metrics.multi[t]),
               pct(metrics.correction[t])]
        if flips:
            row += [pct(metrics.wrong_to_right[t]), pct(metrics.right_to_wrong[t])]
        table.add_row(*row)
    return table


def rollout_table(summary: RolloutSummary) -> Table:
    table = turn_table(summary.metrics, f"Rollout: {summary.metrics.episodes} episodes over {summary.prompts} prompts")
    table.caption = (
        f"success within {summary.metrics.max_turns} turns: {pct(summary.metrics.overall)} · "
        f"generated tokens: {summary.generated_tokens:,} · {summary.tokens_per_s:.1f} tok/s · "
        f"{summary.elapsed_s:.1f} s · malformed replies: {summary.malformed_replies}/{summary.replies}"
    )
    return table

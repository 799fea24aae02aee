"""Rich tables of drift's results."""

from __future__ import annotations

import math

from rich.table import Table

from drift_algos.agent import RolloutSummary
from drift_algos.metrics import MultiTurnMetrics


def pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}%"


def turn_table(metrics: MultiTurnMetrics, title: str) -> Table:
    table = Table(title=title)
    for column in ("turn", "running", "accuracy", "multi@k", "correction", "wrong→right"):
        table.add_column(column, justify="right")
    for t in range(metrics.max_turns):
        table.add_row(str(t + 1), str(metrics.running[t]), pct(metrics.accuracy[t]), pct(metrics.multi[t]),
                      pct(metrics.correction[t]), pct(metrics.wrong_to_right[t]))
    return table


def rollout_table(summary: RolloutSummary) -> Table:
    table = turn_table(summary.metrics, f"Rollout: {summary.metrics.episodes} episodes over {summary.prompts} prompts")
    table.caption = (
        f"success within {summary.metrics.max_turns} turns: {pct(summary.metrics.overall)} · "
        f"generated tokens: {summary.generated_tokens:,} · {summary.tokens_per_s:.1f} tok/s · "
        f"{summary.elapsed_s:.1f} s · malformed replies: {summary.malformed_replies}/{summary.replies}"
    )
    return table

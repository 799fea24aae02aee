"""`drift bench throughput`: engines against plain `model.generate` and this CPU's floor, side by side in one run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from drift_cli.common import (
    ApiKeyEnvOption,
    BaseUrlOption,
    EngineArgOption,
    ThreadsOption,
    apply_threads,
    console,
    err_console,
    parse_key_values,
    setup_logging,
    user_errors,
)

ENGINES_HELP = ("Engine to measure against plain model.generate (repeatable: transformers, vllm, openai, or any "
                "registered name).")


def _num(value: float, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


ENGINE_ROWS = (
    ("rollout tok/s", lambda r: _num(r["rollout"]["tokens_per_s"])),
    ("rollout x generate", lambda r: _num(r["rollout"]["x_generate"], 2)),
    ("rollout x floor", lambda r: _num(r["rollout"]["x_floor"], 3)),
    ("rollout s", lambda r: _num(r["rollout"]["seconds"])),
    ("decode tok/s", lambda r: _num(r["decode"]["tokens_per_s"])),
    ("decode x generate", lambda r: _num(r["decode"]["x_generate"], 2)),
    ("decode x floor", lambda r: _num(r["decode"]["x_floor"], 3)),
    ("time to first token s", lambda r: _num(r["ttft_s"], 2)),
    ("start-up s", lambda r: _num(r["startup_s"])),
    ("wall-clock s (start-up included)", lambda r: _num(r["wall_s"])),
    ("peak RSS MiB (at start)", lambda r: f"{_num(r['peak_rss_mib'], 0)} ({_num(r['start_rss_mib'], 0)})"),
    ("same tokens as generate (rollout / decode)",
     lambda r: "-" if "same_as_generate" not in r["rollout"]
     else f"{r['rollout']['same_as_generate']:.0%} / {r['decode']['same_as_generate']:.0%}"),
)
"""The engines table's rows: a label and how a report row shows it."""


def engines_table(report: dict) -> Table:
    """One column per engine, the baseline (plain ``model.generate``) first."""
    cfg = report["config"]
    table = Table(title=(f"throughput ({cfg['model']}; rollout {cfg['prompts']} x {cfg['n']}, {cfg['turns']} turns; "
                         f"decode batch {cfg['decode_batch']} x {cfg['decode_tokens']} tokens; floor "
                         f"{report['floor_tokens_per_s']:.0f} tok/s)"))
    table.add_column("")
    for row in report["engines"]:
        table.add_column(row["engine"], justify="right")
    for label, show in ENGINE_ROWS:
        table.add_row(label, *(show(row) for row in report["engines"]))
    return table


def training_table(report: dict) -> Table:
    table = Table(title=f"training ({report['training_trajectories']}, DRIFT weights of the default preset)")
    for column in ("mode", "samples", "tokens/s", "seconds", "speed-up vs full", "weight mass kept"):
        table.add_column(column, justify="right")
    for row in report["training"]:
        table.add_row(row["mode"], str(row["samples"]), _num(row["tokens_per_s"]), _num(row["seconds"]),
                      _num(row["speedup_vs_full"], 2), f"{row['weight_mass_kept']:.2%}")
    return table


def throughput(
    engine: Annotated[list[str] | None, typer.Option("--engine", help=ENGINES_HELP)] = None,
    model: Annotated[str, typer.Option(help="Model spec ('smollm2-135m': the embedded default).")] = "smollm2-135m",
    env: Annotated[str, typer.Option(help="Environment of the rollout workload.")] = "math",
    prompts: Annotated[int, typer.Option(min=1, help="Rollout workload: problems (default preset: 64).")] = 64,
    n: Annotated[int, typer.Option(min=1, help="Rollout workload: samples per problem (default preset: 8).")] = 8,
    turns: Annotated[int, typer.Option(min=1, help="Rollout workload: turn limit (default preset: 3).")] = 3,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature (default preset: 0.7).")] = 0.7,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Rollout workload: token limit per turn "
                                                       "(default: the environment's, 20 for math).")] = None,
    decode_batch: Annotated[int, typer.Option(min=1, help="Plain decode workload: prompts in one call.")] = 64,
    decode_tokens: Annotated[int, typer.Option(min=1, help="Plain decode workload: token limit.")] = 64,
    batch_size: Annotated[int, typer.Option(min=1, help="Engines' micro-batch, the baseline's too.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the problems and the sampling.")] = 0,
    threads: ThreadsOption = None,
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    engine_arg: EngineArgOption = None,
    trajectories: Annotated[Path | None, typer.Option(help="Trajectories JSONL (e.g. a run's trajectories.jsonl or "
                                                      "a weighted file) whose DRIFT weights the training part uses; "
                                                      "default: the baseline's rollout of this run.")] = None,
    train_prompts: Annotated[int, typer.Option(min=1, help="Training part: groups trained on.")] = 4,
    no_training: Annotated[bool, typer.Option("--no-training", help="Skip the training part.")] = False,
    out: Annotated[Path, typer.Option(help="Folder for throughput.json.")] = Path("runs/bench-throughput"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    """Rollout and decode throughput of each --engine against plain model.generate at the same batch, and against
    this CPU's floor (2 x parameters FLOPs per token at the matmul FLOP/s measured here); training throughput of
    full fine-tuning, LoRA and skipping low-weight samples. One run, one table, out/throughput.json."""
    setup_logging(verbose)
    with user_errors():
        from drift_algos.throughput import ThroughputConfig, run_throughput

        apply_threads(threads)
        cfg = ThroughputConfig(
            model=model, engines=tuple(engine or ["transformers"]), env=env, prompts=prompts, n=n, turns=turns,
            temperature=temperature, max_new_tokens=max_new_tokens, decode_batch=decode_batch,
            decode_tokens=decode_tokens, batch_size=batch_size, threads=threads, seed=seed,
            base_urls=tuple(base_url or ()), api_key_env=api_key_env,
            options=parse_key_values(engine_arg, "--engine-arg"), training=not no_training,
            trajectories=trajectories, train_prompts=train_prompts,
        )
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"--out: {out} is not a folder")
        report = run_throughput(cfg, progress=lambda message: err_console.print(f"[bold]▶ {message}"))
        out.mkdir(parents=True, exist_ok=True)
        (out / "throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    console.print(engines_table(report))
    if "training" in report:
        console.print(training_table(report))
    console.print(f"wrote {out / 'throughput.json'}")

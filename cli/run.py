"""`drift run`, `drift train` and `drift eval`: the pipeline and its stages on their own."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from drift_cli.common import (
    EXIT_TEMPFAIL,
    ApiKeyEnvOption,
    BaseUrlOption,
    EngineArgOption,
    EngineOption,
    ThreadsOption,
    apply_threads,
    console,
    engine_config,
    err_console,
    parse_env_args,
    progress_bar,
    removed_on_failure,
    setup_logging,
    user_errors,
)
from drift_cli.rollout import ENV_ARG_HELP, ENV_HELP, MODEL_HELP
from drift_cli.tables import pct

MIN_WEIGHT_HELP = "DRIFT: skip trajectories whose weight is below this (default: the preset's)."
UNSOLVED_HELP = "DRIFT: leave out groups without any success (default: the preset's)."
PRESET_HELP = (
    "Sizes. smoke: checks the whole pipeline, learns nothing measurable (measured: 8 min on a 2-core CPU shared "
    "with other jobs). default: the embedded model on a 2-core CPU (measured: 9.5 min on math, seed 0). paper: "
    "the DRIFT release's settings (1,800 prompts x 16, 5 turns, 512 tokens): a GPU job (not measured)."
)
"""The presets' descriptions (drift_algos/presets.py, kept equal by a test; importing presets here would load torch)."""
GRAD_ACCUM_HELP = ("Micro-batches accumulated per optimiser step, per process (default: the preset's); the global "
                   "batch is batch size x this x processes.")
SAVE_EVERY_HELP = ("Save a resumable checkpoint every this many optimiser steps (default: the preset's, 0: only on "
                   "Ctrl-C); the last --keep-last are kept.")
RESUME_HELP = ("Finish the interrupted run in RUN_DIR with its own settings (its config.json; give no other setting): "
               "the rollouts not yet collected, the training from its newest checkpoint (offline) or last finished "
               "iteration (online), the evaluations not yet written. The result equals an uninterrupted run.")
ALGO_HELP = ("Algorithm: drift (importance-weighted SFT), sft (every trajectory, last assistant turn), sft-all (every "
             "trajectory, every assistant turn), rft (successful ones only), "
             "grpo, ppo (online: sample with the current policy each iteration).")


class RichReporter:
    """Pipeline progress as rich progress bars."""

    def __init__(self) -> None:
        self._bar = None
        self._task = None

    def stage(self, name: str) -> None:
        err_console.print(f"[bold cyan]▶[/] {name}")

    def progress(self, stage: str):
        self._bar = progress_bar()
        self._bar.start()
        self._task = self._bar.add_task(stage, total=None, extra="")

        def update(done: int, total: int, extra: float) -> None:
            label = f"loss {extra:.3f}" if stage == "train" else f"{int(extra):,} tok generated"
            self._bar.update(self._task, completed=done, total=total, extra=label)

        return update

    def done(self, stage: str) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _interval(value: float, ci: tuple[float, float]) -> str:
    return f"{pct(value)} [{pct(ci[0])}, {pct(ci[1])}]"


def comparison_table(base, trained, deltas: dict, title: str) -> Table:
    table = Table(title=title)
    for column in ("metric", "base", "trained", "difference (paired 95% CI)"):
        table.add_column(column, justify="right")
    for k in range(base.metrics.max_turns):
        d = deltas[f"multi@{k + 1}"]
        table.add_row(f"multi@{k + 1}", _interval(base.metrics.multi[k], base.multi_ci[k]),
                      _interval(trained.metrics.multi[k], trained.multi_ci[k]),
                      f"{100 * d['difference']:+.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}] pts")
    for t in range(1, base.metrics.max_turns):
        table.add_row(f"correction@{t + 1}", pct(base.metrics.correction[t]), pct(trained.metrics.correction[t]), "")
    return table


def online_table(online) -> Table:
    """One row per iteration of an online run."""
    table = Table(title="online iterations")
    columns = ("iteration", "reward", "success", "kl", "clip_fraction", "entropy", "value_loss", "flat_groups",
               "tokens_per_s")
    for name in columns:
        table.add_column(name.replace("_", " "), justify="right")
    for entry in online.iterations:
        table.add_row(*(f"{entry.get(c, float('nan')):.3g}" if c not in ("iteration", "flat_groups")
                        else str(int(entry.get(c, 0))) for c in columns))
    return table


def run(
    env: Annotated[str, typer.Option(help=ENV_HELP)] = "math",
    algo: Annotated[str, typer.Option(help=ALGO_HELP)] = "drift",
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "smollm2-135m",
    preset: Annotated[str, typer.Option(help=PRESET_HELP)] = "default",
    trajectories: Annotated[Path | None, typer.Option(help="Start from these trajectories (skip the rollout).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<env>-<algo>-<time>).")] = None,
    lora: Annotated[bool | None, typer.Option("--lora/--full", help="LoRA adapter or full fine-tuning.")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Learning rate > 0 (default: the preset's).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: the preset's).")] = None,
    beta: Annotated[float | None, typer.Option(help="DRIFT temperature beta (default: the preset's).")] = None,
    min_weight: Annotated[float | None, typer.Option(min=0.0, help=MIN_WEIGHT_HELP)] = None,
    drop_unsolved: Annotated[bool | None, typer.Option("--drop-unsolved/--keep-unsolved", help=UNSOLVED_HELP)] = None,
    num_prompts: Annotated[int | None, typer.Option(min=1, help="Rollout prompts (default: the preset's).")] = None,
    n: Annotated[int | None, typer.Option(min=1, help="Trajectories per prompt (default: the preset's).")] = None,
    iterations: Annotated[int | None, typer.Option(min=1, help="Online algorithms: sample-then-train rounds "
                                                          "(default: the preset's).")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, help="Rollout temperature (default: preset's).")] = None,
    eval_problems: Annotated[int | None, typer.Option(min=1, help="Held-out problems (default: the preset's).")] = None,
    env_arg: Annotated[list[str] | None, typer.Option(help=ENV_ARG_HELP)] = None,
    seed: Annotated[int, typer.Option(help="Seed for rollouts, batch order and evaluation.")] = 0,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Samples per micro-batch, per process (default: the "
                                                   "preset's).")] = None,
    grad_accum: Annotated[int | None, typer.Option(min=1, help=GRAD_ACCUM_HELP)] = None,
    save_every: Annotated[int | None, typer.Option(min=0, help=SAVE_EVERY_HELP)] = None,
    keep_last: Annotated[int | None, typer.Option(min=1, help="Resumable checkpoints kept (default: the "
                                                  "preset's, 2).")] = None,
    engine: EngineOption = "auto",
    threads: ThreadsOption = None,
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    engine_arg: EngineArgOption = None,
    resume: Annotated[Path | None, typer.Option("--resume", metavar="RUN_DIR", help=RESUME_HELP)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Collect rollouts from the reference model, weigh them, train, and evaluate base vs trained.

    Online algorithms (grpo, ppo) instead sample with their current policy every iteration
    (--num-prompts groups of --n per iteration) and log online_log.jsonl and online_curve.png.

    Writes a run directory (config.json, trajectories.jsonl, weighted.jsonl, checkpoint/,
    train_log.jsonl, eval_*.jsonl, metrics.json, multi_at_k.png) and prints base vs trained
    multi@k with 95% bootstrap intervals and the paired difference.

    Ctrl-C (or a crash, or a kill) leaves a run that `drift run --resume RUN_DIR` finishes, equal to an
    uninterrupted run. Under `accelerate launch` the processes share the rollouts, the evaluation and
    each optimiser step's batch; only the main process writes.
    """
    setup_logging(verbose)
    with user_errors():
        from drift_algos import distributed
        from drift_algos.pipeline import KEPT_ON_FAILURE, RunConfig, load_run_config
        from drift_algos.pipeline import run as run_pipeline
        from drift_algos.presets import get_preset

        if resume is not None:
            given = {"--env": env != "math", "--algo": algo != "drift", "--model": model != "smollm2-135m",
                     "--preset": preset != "default", "--trajectories": trajectories is not None,
                     "--out": out is not None, "--seed": seed != 0, "--engine": engine != "transformers",
                     "--env-arg": bool(env_arg), "--base-url": bool(base_url), "--api-key-env": api_key_env is not None,
                     "--engine-arg": bool(engine_arg),
                     **{f"--{name.replace('_', '-')}": value is not None for name, value in dict(
                         lora=lora, lr=lr, epochs=epochs, beta=beta, min_weight=min_weight, drop_unsolved=drop_unsolved,
                         num_prompts=num_prompts, n=n, iterations=iterations, temperature=temperature,
                         eval_problems=eval_problems, batch_size=batch_size, grad_accum=grad_accum,
                         save_every=save_every, keep_last=keep_last).items()}}
            flag = next((name for name, set_ in given.items() if set_), None)
            if flag is not None:
                raise ValueError(f"{flag}: --resume takes the run's settings from {resume / 'config.json'}; leave "
                                 f"out {flag}")
            apply_threads(threads)
            cfg = load_run_config(resume)
            _run_and_report(cfg, run_pipeline, distributed, KEPT_ON_FAILURE, resume=True)
            return
        engine_cfg = engine_config(engine, threads=threads, base_url=base_url, api_key_env=api_key_env,
                                   engine_arg=engine_arg)
        p = get_preset(preset)
        p.rollout = dataclasses.replace(p.rollout, seed=seed, **{k: v for k, v in dict(
            num_prompts=num_prompts, n=n, temperature=temperature).items() if v is not None})
        p.train = dataclasses.replace(p.train, seed=seed, **{k: v for k, v in dict(
            lora=lora, learning_rate=lr, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
            save_every=save_every, keep_last=keep_last).items() if v is not None})
        p.drift = dataclasses.replace(p.drift, **{k: v for k, v in dict(
            beta=beta, min_weight=min_weight, drop_unsolved_groups=drop_unsolved).items() if v is not None})
        p.online = dataclasses.replace(p.online, **{k: v for k, v in dict(
            iterations=iterations, prompts_per_iteration=num_prompts, group_size=n).items() if v is not None})
        if eval_problems is not None:
            p.eval = dataclasses.replace(p.eval, num_problems=eval_problems)
        p.eval = dataclasses.replace(p.eval, seed=seed)
        if out is None:
            stem = env.replace("/", "_").replace(":", "_")
            out = Path("runs") / f"{stem}-{algo}-{time.strftime('%Y%m%d-%H%M%S')}"
        elif not out.parent.exists():
            raise FileNotFoundError(f"parent directory does not exist: {out.parent}")
        if trajectories is not None and trajectories.is_file():
            from drift_algos.records import read_trajectories

            read_trajectories(trajectories)  # a bad line is reported now, not after the model has loaded
        cfg = RunConfig(env=env, model=model, algo=algo, preset=p, out_dir=out, trajectories=trajectories,
                        env_args=parse_env_args(env_arg), engine=engine_cfg)
        _run_and_report(cfg, run_pipeline, distributed, KEPT_ON_FAILURE, resume=False)


def _run_and_report(cfg, run_pipeline, distributed, kept_on_failure: tuple[str, ...], *, resume: bool) -> None:
    """Run (or finish) the pipeline with progress bars, then print its tables (the main process only)."""
    from rich.markup import escape

    from drift_algos.engines.base import GenerationFailed
    from drift_algos.pipeline import Reporter

    out, main = Path(cfg.out_dir), distributed.is_main()
    reporter = RichReporter() if main else Reporter()
    try:
        with removed_on_failure(out, keep=kept_on_failure):
            result = run_pipeline(cfg, reporter, resume=resume)
    except GenerationFailed as err:  # servers down past their retry budget: what was collected is kept
        reporter.done("")
        if main:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}; finish the run later with: drift run --resume "
                              f"{out}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_TEMPFAIL) from None
    except KeyboardInterrupt:
        reporter.done("")
        if main:
            if out.is_dir():
                err_console.print(f"interrupted: finish the run with: drift run --resume {out}", soft_wrap=True)
            else:
                err_console.print("interrupted before anything worth resuming was written", soft_wrap=True)
        raise typer.Exit(130) from None
    if not main:
        return
    deltas = json.loads((out / "metrics.json").read_text())["paired_difference"]
    console.print(comparison_table(result.base, result.trained, deltas, f"{cfg.algo} on {cfg.env}: "
                                   f"{result.base.metrics.episodes} held-out problems, greedy"))
    t = result.train
    if t is not None:
        empty = f", {result.empty_replies} with an empty last reply" if result.empty_replies else ""
        console.print(f"trained on {result.samples} samples ({result.skipped} trajectories skipped{empty}), "
                      f"{t.steps} steps, {t.tokens:,} tokens in {t.elapsed_s:.0f} s ({t.tokens_per_s:.0f} tok/s)")
    else:
        console.print(online_table(result.online))
    console.print(f"run directory: [bold]{out}[/] (metrics.json, multi_at_k.png, checkpoint/)")

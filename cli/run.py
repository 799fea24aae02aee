"""`drift run`, `drift train` and `drift eval`: the pipeline and its stages on their own."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from drift_algos import jsonio
from drift_cli.common import console, env_kwargs, err_console, parse_env_args, progress_bar, setup_logging, user_errors
from drift_cli.rollout import ENV_ARG_HELP, ENV_HELP, MODEL_HELP
from drift_cli.tables import pct, turn_table

MIN_WEIGHT_HELP = "DRIFT: skip trajectories whose weight is below this (default: the preset's)."
UNSOLVED_HELP = "DRIFT: leave out groups without any success (default: the preset's)."
ALGO_HELP = "Algorithm: drift (importance-weighted SFT), sft (every trajectory), rft (successful ones only)."


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
            label = f"loss {extra:.3f}" if stage == "train" else f"{int(extra):,} tok"
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


def run(
    env: Annotated[str, typer.Option(help=ENV_HELP)] = "math",
    algo: Annotated[str, typer.Option(help=ALGO_HELP)] = "drift",
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "smollm2-135m",
    preset: Annotated[str, typer.Option(help="Sizes: smoke (~2 min CPU), default (~15 min CPU), paper (GPU).")] = (
        "default"),
    trajectories: Annotated[Path | None, typer.Option(help="Start from these trajectories (skip the rollout).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<env>-<algo>-<time>).")] = None,
    lora: Annotated[bool | None, typer.Option("--lora/--full", help="LoRA adapter or full fine-tuning.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the preset's).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: the preset's).")] = None,
    beta: Annotated[float | None, typer.Option(help="DRIFT temperature beta (default: the preset's).")] = None,
    min_weight: Annotated[float | None, typer.Option(min=0.0, help=MIN_WEIGHT_HELP)] = None,
    drop_unsolved: Annotated[bool | None, typer.Option("--drop-unsolved/--keep-unsolved", help=UNSOLVED_HELP)] = None,
    num_prompts: Annotated[int | None, typer.Option(min=1, help="Rollout prompts (default: the preset's).")] = None,
    n: Annotated[int | None, typer.Option(min=1, help="Trajectories per prompt (default: the preset's).")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, help="Rollout temperature (default: preset's).")] = None,
    eval_problems: Annotated[int | None, typer.Option(min=1, help="Held-out problems (default: the preset's).")] = None,
    env_arg: Annotated[list[str] | None, typer.Option(help=ENV_ARG_HELP)] = None,
    seed: Annotated[int, typer.Option(help="Seed for rollouts, batch order and evaluation.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Collect rollouts from the reference model, weigh them, train, and evaluate base vs trained.

    Writes a run directory (config.json, trajectories.jsonl, weighted.jsonl, checkpoint/,
    train_log.jsonl, eval_*.jsonl, metrics.json, multi_at_k.png) and prints base vs trained
    multi@k with 95% bootstrap intervals and the paired difference.
    """
    setup_logging(verbose)
    with user_errors():
        from drift_algos.pipeline import RunConfig
        from drift_algos.pipeline import run as run_pipeline
        from drift_algos.presets import get_preset

        p = get_preset(preset)
        p.rollout = dataclasses.replace(p.rollout, seed=seed, **{k: v for k, v in dict(
            num_prompts=num_prompts, n=n, temperature=temperature).items() if v is not None})
        p.train = dataclasses.replace(p.train, seed=seed, **{k: v for k, v in dict(
            lora=lora, learning_rate=lr, epochs=epochs).items() if v is not None})
        p.drift = dataclasses.replace(p.drift, **{k: v for k, v in dict(
            beta=beta, min_weight=min_weight, drop_unsolved_groups=drop_unsolved).items() if v is not None})
        if eval_problems is not None:
            p.eval = dataclasses.replace(p.eval, num_problems=eval_problems)
        p.eval = dataclasses.replace(p.eval, seed=seed)
        if out is None:
            stem = env.replace("/", "_").replace(":", "_")
            out = Path("runs") / f"{stem}-{algo}-{time.strftime('%Y%m%d-%H%M%S')}"
        elif not out.parent.exists():
            raise FileNotFoundError(f"parent directory does not exist: {out.parent}")
        cfg = RunConfig(env=env, model=model, algo=algo, preset=p, out_dir=out, trajectories=trajectories,
                        env_args=parse_env_args(env_arg))
        result = run_pipeline(cfg, RichReporter())
        deltas = json.loads((out / "metrics.json").read_text())["paired_difference"]
        console.print(comparison_table(result.base, result.trained, deltas,
                                       f"{algo} on {env}: {result.base.metrics.episodes} held-out problems, greedy"))
        t = result.train
        console.print(f"trained on {result.samples} samples ({result.skipped} trajectories skipped), {t.steps} steps, "
                      f"{t.tokens:,} tokens in {t.elapsed_s:.0f} s ({t.tokens_per_s:.0f} tok/s)")
        console.print(f"run directory: [bold]{out}[/] (metrics.json, multi_at_k.png, checkpoint/)")


def train(
    trajectories: Annotated[Path, typer.Argument(help="Trajectory JSONL (drift's or the DRIFT release's schema).")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    algo: Annotated[str, typer.Option(help=ALGO_HELP)] = "drift",
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "smollm2-135m",
    preset: Annotated[str, typer.Option(help="Hyper-parameters from this preset.")] = "default",
    lora: Annotated[bool | None, typer.Option("--lora/--full", help="LoRA adapter or full fine-tuning.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Samples per micro-batch.")] = None,
    beta: Annotated[float | None, typer.Option(help="DRIFT temperature beta.")] = None,
    gamma: Annotated[float | None, typer.Option(help="DRIFT discount gamma.")] = None,
    min_weight: Annotated[float | None, typer.Option(min=0.0, help=MIN_WEIGHT_HELP)] = None,
    drop_unsolved: Annotated[bool | None, typer.Option("--drop-unsolved/--keep-unsolved", help=UNSOLVED_HELP)] = None,
    seed: Annotated[int, typer.Option(help="Seed for batch order and initialisation.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Train a model on trajectories with an algorithm; writes a Hugging Face / PEFT checkpoint."""
    setup_logging(verbose)
    with user_errors():
        from drift_algos.models import load_model, load_tokenizer
        from drift_algos.pipeline import make_algorithm
        from drift_algos.presets import get_preset
        from drift_algos.records import read_trajectories
        from drift_algos.training import Trainer

        if not out.parent.exists():
            raise FileNotFoundError(f"parent directory does not exist: {out.parent}")
        p = get_preset(preset)
        p.train = dataclasses.replace(p.train, seed=seed, **{k: v for k, v in dict(
            lora=lora, learning_rate=lr, epochs=epochs, batch_size=batch_size).items() if v is not None})
        drift_flags = dict(beta=beta, gamma=gamma, min_weight=min_weight, drop_unsolved_groups=drop_unsolved)
        p.drift = dataclasses.replace(p.drift, **{k: v for k, v in drift_flags.items() if v is not None})
        algorithm = make_algorithm(algo, p)
        records = read_trajectories(trajectories)
        sample_set = algorithm.samples(records)
        if not sample_set.samples:
            raise ValueError(f"{algo}: no training samples left from {len(records)} trajectories")
        trainer = Trainer(load_model(model), load_tokenizer(model), p.train)
        out.mkdir(exist_ok=True)
        reporter = RichReporter()
        update = reporter.progress("train")
        result = trainer.fit(sample_set.samples, loss_fn=algorithm.loss, log_path=out / "train_log.jsonl",
                             progress=update)
        reporter.done("train")
        trainer.save(out)
        console.print(f"{algo}: {result.samples} samples, {result.steps} steps, final loss {result.final_loss:.4f}, "
                      f"{result.tokens:,} tokens in {result.elapsed_s:.0f} s ({result.tokens_per_s:.0f} tok/s)")
        console.print(f"checkpoint: [bold]{out}[/]")


def eval_(
    env: Annotated[str, typer.Option(help=ENV_HELP)] = "math",
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "smollm2-135m",
    adapter: Annotated[Path | None, typer.Option(help="PEFT adapter directory to load on top of --model.")] = None,
    num_problems: Annotated[int, typer.Option(min=1, help="Held-out problems (the first of the split).")] = 256,
    max_turns: Annotated[int, typer.Option(min=1, help="Turn limit.")] = 3,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Token limit per reply; default: the "
                                                       "environment's suggestion.")] = None,
    split: Annotated[str, typer.Option(help="Problem split.")] = "test",
    source: Annotated[str | None, typer.Option(help="Problem source of the environment.")] = None,
    data: Annotated[str | None, typer.Option(help="Local file or Hub id for the problem source.")] = None,
    env_arg: Annotated[list[str] | None, typer.Option(help=ENV_ARG_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Write metrics JSON here (episodes go to OUT with .jsonl).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Engine micro-batch.")] = 64,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Greedy multi-turn evaluation: accuracy per turn, multi@k, correction and flip rates, 95% intervals."""
    setup_logging(verbose)
    with user_errors():

        from drift_algos.engines.transformers_engine import TransformersEngine
        from drift_algos.evaluation import EvalConfig, evaluate
        from drift_algos.records import TrajectoryWriter
        from drift_envs import resolve_env_id
        from drift_envs.registry import env_factory

        if out is not None and not out.parent.exists():
            raise FileNotFoundError(f"output directory does not exist: {out.parent}")
        env_id = resolve_env_id(env)
        kwargs = env_kwargs(max_turns=max_turns, source=source, data=data, split=split, extra=env_arg)
        make = env_factory(env_id, kwargs)
        engine = TransformersEngine.from_pretrained(model, batch_size=batch_size,
                                                    adapter=str(adapter) if adapter else None)
        reporter = RichReporter()
        writer = TrajectoryWriter(out.with_suffix(".jsonl")) if out is not None else None
        try:
            result = evaluate(engine, make, EvalConfig(num_problems=num_problems, max_new_tokens=max_new_tokens),
                              env_id=env_id, model_name=model, writer=writer, progress=reporter.progress("eval"))
        finally:
            reporter.done("eval")
            if writer is not None:
                writer.close()
        table = turn_table(result.metrics, f"{model} on {env}: {result.metrics.episodes} problems, greedy")
        table.caption = " · ".join(f"multi@{k + 1} {_interval(v, result.multi_ci[k])}"
                                   for k, v in enumerate(result.metrics.multi))
        console.print(table)
        if out is not None:
            out.write_text(jsonio.dumps({"model": model, "adapter": str(adapter) if adapter else None, "env": env,
                                       **result.to_dict()}, indent=2) + "\n")
            console.print(f"wrote {out}")

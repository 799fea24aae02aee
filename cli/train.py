"""`drift train`: train a model on trajectories with an algorithm."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from drift_cli.common import (
    ThreadsOption,
    apply_threads,
    console,
    err_console,
    removed_on_failure,
    setup_logging,
    user_errors,
)
from drift_cli.rollout import MODEL_HELP
from drift_cli.run import ALGO_HELP, GRAD_ACCUM_HELP, MIN_WEIGHT_HELP, SAVE_EVERY_HELP, UNSOLVED_HELP, RichReporter


def file_weights(path: Path) -> list[float] | None:
    """The ``weight`` column of a trajectory file (written by ``drift weigh``), or ``None`` when rows lack it.

    A file where only some rows have it, or with a weight that is not a finite number >= 0, is an error.
    """
    import math

    from drift_algos.records import DataError, iter_rows
    from drift_algos.weighting import WEIGHT_COLUMN

    weights: list[float | None] = []
    for where, row in iter_rows(path):
        value = row.get(WEIGHT_COLUMN)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise DataError(f"{where}: field '{WEIGHT_COLUMN}' must be a finite number >= 0, got {value!r}")
        weights.append(value)
    present = [w for w in weights if w is not None]
    if not present:
        return None
    if len(present) != len(weights):
        missing = next(i for i, w in enumerate(weights) if w is None)
        raise DataError(f"{path}:{missing + 1}: field '{WEIGHT_COLUMN}' missing (other rows have it)")
    return [float(w) for w in present]


def train(
    trajectories: Annotated[Path, typer.Argument(help="Trajectory JSONL (drift's or the DRIFT release's schema).")],
    out: Annotated[Path, typer.Option(help="Checkpoint directory to write.")],
    algo: Annotated[str, typer.Option(help=ALGO_HELP)] = "drift",
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "smollm2-135m",
    preset: Annotated[str, typer.Option(help="Hyper-parameters from this preset.")] = "default",
    lora: Annotated[bool | None, typer.Option("--lora/--full", help="LoRA adapter or full fine-tuning.")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Learning rate > 0.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Samples per micro-batch.")] = None,
    grad_accum: Annotated[int | None, typer.Option(min=1, help=GRAD_ACCUM_HELP)] = None,
    normalise_weights: Annotated[bool | None, typer.Option(
        "--normalise-weights/--mean-weights", help="Batch loss sum(w nll) / sum(w) over each optimiser step's global "
        "batch, or mean(w nll), the release's default (default: the preset's).")] = None,
    beta: Annotated[float | None, typer.Option(help="DRIFT temperature beta.")] = None,
    gamma: Annotated[float | None, typer.Option(help="DRIFT discount gamma.")] = None,
    min_weight: Annotated[float | None, typer.Option(min=0.0, help=MIN_WEIGHT_HELP)] = None,
    drop_unsolved: Annotated[bool | None, typer.Option("--drop-unsolved/--keep-unsolved", help=UNSOLVED_HELP)] = None,
    seed: Annotated[int, typer.Option(help="Seed for batch order and initialisation.")] = 0,
    save_every: Annotated[int | None, typer.Option(min=0, help=SAVE_EVERY_HELP)] = None,
    keep_last: Annotated[int | None, typer.Option(min=1, help="Resumable checkpoints kept (default: the "
                                                  "preset's, 2).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted training in --out from its newest "
                                         "checkpoint (OUT/resume/step-N; the same command and flags, plus "
                                         "--resume): the result equals an uninterrupted run.")] = False,
    threads: ThreadsOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Train a model on trajectories with an algorithm; writes a Hugging Face / PEFT checkpoint.

    Resumable: with --save-every N a checkpoint of the whole training state goes to OUT/resume/step-N every N
    optimiser steps (the last --keep-last kept), and Ctrl-C finishes the step under way, saves one and exits (code
    130); the same command with --resume continues from the newest. Under `accelerate launch` the processes share
    each optimiser step's batch (data-parallel); only the main process writes.
    """
    setup_logging(verbose)
    with user_errors(), removed_on_failure(out, keep=("resume",)):
        from drift_algos import distributed
        from drift_algos.algorithms import Drift, OnlineAlgorithm
        from drift_algos.models import load_model, load_tokenizer
        from drift_algos.pipeline import make_algorithm
        from drift_algos.presets import get_preset
        from drift_algos.records import read_trajectories
        from drift_algos.training import checkpoints
        from drift_algos.training.trainer import Trainer, TrainingInterrupted
        from drift_algos.weighting import WEIGHT_COLUMN

        if not out.parent.exists():
            raise FileNotFoundError(f"parent directory does not exist: {out.parent}")
        resume_dir = out / "resume"
        if resume and not out.is_dir():
            raise FileNotFoundError(f"--resume: {out} does not exist (nothing to resume)")
        if not resume and checkpoints.latest(resume_dir, "step") is not None:
            raise FileExistsError(f"{resume_dir} holds checkpoints of an earlier training: continue it with --resume, "
                                  "or choose another --out")
        apply_threads(threads)
        main = distributed.is_main()
        say = console.print if main else (lambda *args, **kwargs: None)
        p = get_preset(preset)
        p.train = dataclasses.replace(p.train, seed=seed, **{k: v for k, v in dict(
            lora=lora, learning_rate=lr, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum,
            normalise_weights=normalise_weights, save_every=save_every, keep_last=keep_last).items() if v is not None})
        drift_flags = dict(beta=beta, gamma=gamma, min_weight=min_weight, drop_unsolved_groups=drop_unsolved)
        p.drift = dataclasses.replace(p.drift, **{k: v for k, v in drift_flags.items() if v is not None})
        algorithm = make_algorithm(algo, p)
        if isinstance(algorithm, OnlineAlgorithm):
            raise ValueError(f"{algo} samples with its own policy and cannot train on a file; "
                             f"use: drift run --algo {algo}")
        records = read_trajectories(trajectories)
        weights = file_weights(trajectories) if isinstance(algorithm, Drift) else None
        if weights is not None:
            say(f"drift: training on the file's '{WEIGHT_COLUMN}' column (from drift weigh); --beta/--gamma do not "
                "apply")
            sample_set = algorithm.weighted_samples(records, weights)
        else:
            if isinstance(algorithm, Drift):
                say(f"drift: no '{WEIGHT_COLUMN}' column; weights computed with beta {p.drift.beta}, "
                    f"gamma {p.drift.gamma}")
            sample_set = algorithm.samples(records)
        if not sample_set.samples:
            raise ValueError(f"{algo}: no training samples left from {len(records)} trajectories")
        trainer = Trainer(load_model(model, device=str(distributed.state().device)), load_tokenizer(model),
                          algorithm.train_config(p.train))
        out.mkdir(exist_ok=True)
        reporter = RichReporter() if main else None
        update = reporter.progress("train") if main else None
        try:
            result = trainer.fit(sample_set.samples, objective=algorithm.objective(p.train),
                                 log_path=out / "train_log.jsonl", progress=update, checkpoint_dir=resume_dir,
                                 resume=resume)
        except TrainingInterrupted as stop:
            if main:
                reporter.done("train")
                saved = f"saved {stop.checkpoint}; " if stop.checkpoint is not None else ""
                err_console.print(f"interrupted after optimiser step {stop.step}: {saved}continue with the same "
                                  "command and --resume", soft_wrap=True)
            raise typer.Exit(130) from None
        if main:
            reporter.done("train")
        trainer.save(out)
        if sample_set.skipped:
            empty = f", {sample_set.empty_replies} with an empty last reply" if sample_set.empty_replies else ""
            say(f"{algo}: {sample_set.skipped} of {len(records)} trajectories not trained on{empty}")
        say(f"{algo}: {result.samples} samples, {result.steps} steps, final loss {result.final_loss:.4f}, "
            f"{result.tokens:,} tokens in {result.elapsed_s:.0f} s ({result.tokens_per_s:.0f} tok/s)")
        say(f"checkpoint: [bold]{out}[/]")

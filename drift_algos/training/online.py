"""The iteration loop every online algorithm shares: sample with the current policy, train, repeat.

Each iteration: the :class:`~drift_algos.rollout.agent.RolloutAgent` samples ``rollout.num_prompts`` groups of
``rollout.n`` trajectories with the current policy, recording the exact token ids; the algorithm turns them into
token-faithful samples with per-token coefficients; the loop adds the sampling policy's log-probs of those tokens
(and the reference policy's when the algorithm has a KL term); the :class:`~drift_algos.training.trainer.Trainer` runs
``train.epochs`` optimisation epochs over mini-batches of ``train.batch_size``; the engine loads the new weights.
One line per iteration goes to ``online_log.jsonl``.

After each iteration the loop saves a resumable checkpoint, ``resume/iteration-<i>/`` (the policy's trainable weights,
the algorithm's own such as PPO's value head, each process's RNG states, the log so far; see
:mod:`~drift_algos.training.checkpoints`); ``resume=True`` continues after the newest one, and since an iteration's
sampling seeds come from the run's seed and the iteration number, the resumed run repeats the uninterrupted one.

Under several processes (``accelerate launch``) each process samples its share of the iteration's groups (a group is
never split, so advantages stay within it), the trajectories are gathered in group order, the log-prob passes are
shared out by batch, and the trainer trains data-parallel: the same numbers as one process.

One AdamW runs through all the iterations (its moments carry over from one iteration's fit to the next, and are
saved in the resumable checkpoints); the learning-rate schedule (the trainer's ``warmup_ratio``) applies within an
iteration. A fresh optimiser each iteration would make every update of a CPU preset, with its one to three optimiser
steps per iteration, a first Adam step: about ``lr * sign(gradient)``, whatever the gradient's size.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from drift_algos import distributed
from drift_algos.algorithms.base import OnlineAlgorithm
from drift_algos.engines.base import Engine
from drift_algos.rollout.agent import RolloutAgent, RolloutConfig
from drift_algos.training import checkpoints
from drift_algos.training.trainer import Trainer

logger = logging.getLogger(__name__)


@dataclass
class OnlineConfig:
    """The loop's schedule."""

    iterations: int = 4
    """Sample-then-train rounds."""
    prompts_per_iteration: int = 8
    """Groups sampled per iteration."""
    group_size: int = 4
    """Trajectories per prompt (GRPO's G)."""
    checkpoint_every: int = 0
    """Save the policy to ``checkpoint-<i>/`` every this many iterations (0: only the final checkpoint)."""
    resumable: bool = True
    """Save the resumable ``resume/iteration-<i>/`` checkpoint after each iteration (off: nothing to resume, e.g.
    `drift bench compare`, whose offline algorithms save nothing while training either)."""

    def __post_init__(self) -> None:
        for name in ("iterations", "prompts_per_iteration", "group_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")


@dataclass
class OnlineResult:
    """What the loop did."""

    iterations: list[dict[str, float]] = field(default_factory=list)
    """One metrics entry per iteration (as in ``online_log.jsonl``)."""
    generated_tokens: int = 0
    """Tokens sampled, all iterations."""
    trained_tokens: int = 0
    """Tokens processed by training, all iterations."""
    elapsed_s: float = 0.0
    """Wall-clock seconds."""


def iteration_metrics(returns: list[float], successes: list[bool], history: list[dict[str, float]],
                      target_tokens: int) -> dict[str, float]:
    """Mean reward and success; KL, clip fraction and entropy per trained token (summed over the fit's steps)."""
    sums = {key: sum(h.get(key, 0.0) for h in history)
            for key in ("clipped_tokens", "kl", "entropy_proxy", "value_loss")}
    per_token = max(1, target_tokens)
    return {
        "reward": sum(returns) / len(returns), "success": sum(successes) / len(successes),
        "clip_fraction": sums["clipped_tokens"] / per_token, "kl": sums["kl"] / per_token,
        # Mean -log pi of the sampled tokens: an unbiased estimate of the policy's entropy at temperature 1.
        "entropy": sums["entropy_proxy"] / per_token,
        "value_loss": sums["value_loss"] / per_token,
        "loss": sum(h["loss"] for h in history) / max(1, len(history)),
    }


ONLINE_STATE = "online_state.json"
"""The iteration and the loop's results so far, inside an ``iteration-<i>`` checkpoint."""
OPTIMIZER_STATE = "optimizer.pt"
"""AdamW's state (it runs through the iterations) inside an ``iteration-<i>`` checkpoint."""
ALGORITHM_WEIGHTS = "algorithm.safetensors"
"""The algorithm's own trainable weights (PPO's value head) inside an ``iteration-<i>`` checkpoint."""


def save_iteration(folder: Path, iteration: int, trainer: Trainer, algorithm: OnlineAlgorithm, result: OnlineResult,
                   *, keep_last: int | None = None) -> Path:
    """A resumable checkpoint of the loop after ``iteration`` (every process calls it)."""
    with checkpoints.atomic_folder(folder, keep_last=keep_last) as temporary:
        if distributed.is_main():
            checkpoints.save_tensors(temporary / checkpoints.WEIGHTS_FILE, checkpoints.trainable_state(trainer.model))
            own = algorithm.state_dict()
            if own:
                checkpoints.save_tensors(temporary / ALGORITHM_WEIGHTS, own)
            (temporary / ONLINE_STATE).write_text(json.dumps({"iteration": iteration, "result": asdict(result)}) + "\n")
            if trainer.optimizer_state is not None:
                torch.save(trainer.optimizer_state, temporary / OPTIMIZER_STATE)
        checkpoints.save_rng(temporary)
    return folder


def load_iteration(folder: Path, trainer: Trainer, algorithm: OnlineAlgorithm) -> tuple[int, OnlineResult]:
    """Restore :func:`save_iteration`'s checkpoint into ``trainer`` and ``algorithm``; its iteration and results."""
    state = json.loads((folder / ONLINE_STATE).read_text(encoding="utf-8"))
    weights = checkpoints.load_tensors(folder / checkpoints.WEIGHTS_FILE)
    checkpoints.load_trainable_state(trainer.model, weights, folder)
    if (folder / ALGORITHM_WEIGHTS).is_file():
        algorithm.load_state_dict(checkpoints.load_tensors(folder / ALGORITHM_WEIGHTS), trainer)
    if (folder / OPTIMIZER_STATE).is_file():
        trainer.optimizer_state = torch.load(folder / OPTIMIZER_STATE, weights_only=True)
    checkpoints.load_rng(folder)
    return int(state["iteration"]), OnlineResult(**state["result"])


def train_online(
    algorithm: OnlineAlgorithm,
    agent: RolloutAgent,
    trainer: Trainer,
    engine: Engine,
    rollout: RolloutConfig,
    cfg: OnlineConfig,
    out_dir: Path,
    *,
    progress: Callable[[int, int, int], None] | None = None,
    resume: bool = False,
) -> OnlineResult:
    """Run ``cfg.iterations`` iterations; ``progress(iteration, iterations, generated_tokens)``.

    ``rollout`` gives the sampling settings (temperature, reply length, seed); the loop sets the number of
    prompts and the group size from ``cfg`` and a new seed per iteration. ``resume`` continues after the newest
    ``out_dir/resume/iteration-<i>`` checkpoint (from the start when there is none); without it, a folder that
    holds such checkpoints is refused.
    """
    main = distributed.is_main()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    # The reference is the policy before any update, also when resuming (the resumed weights are loaded after).
    reference = copy.deepcopy(trainer.model).eval() if algorithm.needs_reference else None
    result = OnlineResult()
    resume_dir = out_dir / "resume"
    found = checkpoints.latest(resume_dir, "iteration")
    if found is not None and not resume:
        raise FileExistsError(f"{resume_dir} holds checkpoints of an earlier run (newest: {found.name}): continue it "
                              "with --resume, or choose another output folder")
    done = 0
    if found is not None:
        done, result = load_iteration(found, trainer, algorithm)
        engine.update_weights(trainer.model)
        logger.info("resuming after iteration %d of %d (%s)", done, cfg.iterations, found)
    log_path = out_dir / "online_log.jsonl"
    if resume and main:  # the log of the finished iterations only (a killed run may have logged one more)
        log_path.write_text("".join(json.dumps(entry) + "\n" for entry in result.iterations), encoding="utf-8")
    start = time.perf_counter() - result.elapsed_s
    with log_path.open("a", encoding="utf-8") if main else contextlib.nullcontext() as log:
        for iteration in range(done + 1, cfg.iterations + 1):
            t0 = time.perf_counter()
            rollout_i = dataclasses.replace(rollout, num_prompts=cfg.prompts_per_iteration, n=cfg.group_size,
                                            seed=rollout.seed + iteration - 1, record_token_ids=True)
            problems = agent.choose_problems(rollout_i)
            groups = distributed.mine(range(cfg.prompts_per_iteration))  # whole groups: advantages stay within one
            mine, summary = agent.run(rollout_i, problems=[problems[g] for g in groups], groups=groups)
            trajectories = sorted(distributed.gather(mine), key=lambda t: (t.group_index, t.sample_index))
            (generated,) = distributed.total([summary.generated_tokens])
            batch = algorithm.batch(trajectories)
            entry: dict[str, float] = {"iteration": iteration, "trajectories": len(trajectories),
                                       "generated_tokens": int(generated), **batch.info}
            history: list[dict[str, float]] = []
            target_tokens = trained_tokens = 0
            if batch.samples:
                # The sampling policy's log-probs of exactly the generated tokens (the engine shares or copies
                # the policy's weights, so this is the policy before this iteration's update).
                for sample, logp in zip(batch.samples, trainer.logprobs(batch.samples), strict=True):
                    sample.old_logprobs = logp
                if reference is not None:
                    for sample, logp in zip(batch.samples, trainer.logprobs(batch.samples, reference), strict=True):
                        sample.ref_logprobs = logp
                algorithm.complete(batch, trainer)
                fit = trainer.fit(batch.samples, objective=algorithm.objective(), keep_optimizer=True)
                history, target_tokens, trained_tokens = fit.history, fit.target_tokens, fit.tokens
                engine.update_weights(trainer.model)
            entry.update(iteration_metrics(batch.returns, [t.success for t in trajectories], history, target_tokens))
            elapsed = time.perf_counter() - t0
            entry.update({"samples": len(batch.samples), "trained_tokens": trained_tokens, "elapsed_s": elapsed,
                          "tokens_per_s": (generated + trained_tokens) / elapsed})
            result.iterations.append(entry)
            result.generated_tokens += int(generated)
            result.trained_tokens += trained_tokens
            result.elapsed_s = time.perf_counter() - start
            if log is not None:
                log.write(json.dumps(entry) + "\n")
                log.flush()
            logger.info("iteration %d: reward %.3f, success %.2f", iteration, entry["reward"], entry["success"])
            if cfg.resumable:
                save_iteration(resume_dir / f"iteration-{iteration}", iteration, trainer, algorithm, result,
                               keep_last=trainer.cfg.keep_last)
            if cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0 and iteration < cfg.iterations:
                trainer.save(out_dir / f"checkpoint-{iteration}")
            if progress is not None:
                progress(iteration, cfg.iterations, result.generated_tokens)
    result.elapsed_s = time.perf_counter() - start
    return result

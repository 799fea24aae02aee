"""The iteration loop every online algorithm shares: sample with the current policy, train, repeat.

Each iteration: the :class:`~drift_algos.rollout.agent.RolloutAgent` samples ``rollout.num_prompts`` groups of
``rollout.n`` trajectories with the current policy, recording the exact token ids; the algorithm turns them into
token-faithful samples with per-token coefficients; the loop adds the sampling policy's log-probs of those tokens
(and the reference policy's when the algorithm has a KL term); the :class:`~drift_algos.training.trainer.Trainer` runs
``train.epochs`` optimisation epochs over mini-batches of ``train.batch_size``; the engine loads the new weights.
One line per iteration goes to ``online_log.jsonl``.

The optimiser (AdamW) starts afresh each iteration, with no warm-up (the trainer's ``warmup_ratio`` applies within
an iteration): simple, and with the few optimiser steps per iteration of a CPU preset its moments carry little.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from drift_algos.algorithms.base import OnlineAlgorithm
from drift_algos.engines.base import Engine
from drift_algos.rollout.agent import RolloutAgent, RolloutConfig
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
) -> OnlineResult:
    """Run ``cfg.iterations`` iterations; ``progress(iteration, iterations, generated_tokens)``.

    ``rollout`` gives the sampling settings (temperature, reply length, seed); the loop sets the number of
    prompts and the group size from ``cfg`` and a new seed per iteration.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = copy.deepcopy(trainer.model).eval() if algorithm.needs_reference else None
    result = OnlineResult()
    start = time.perf_counter()
    with (out_dir / "online_log.jsonl").open("a", encoding="utf-8") as log:
        for iteration in range(1, cfg.iterations + 1):
            t0 = time.perf_counter()
            rollout_i = dataclasses.replace(rollout, num_prompts=cfg.prompts_per_iteration, n=cfg.group_size,
                                            seed=rollout.seed + iteration - 1, record_token_ids=True)
            trajectories, summary = agent.run(rollout_i)
            batch = algorithm.batch(trajectories)
            entry: dict[str, float] = {"iteration": iteration, "trajectories": len(trajectories),
                                       "generated_tokens": summary.generated_tokens, **batch.info}
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
                fit = trainer.fit(batch.samples, objective=algorithm.objective())
                history, target_tokens, trained_tokens = fit.history, fit.target_tokens, fit.tokens
                engine.update_weights(trainer.model)
            entry.update(iteration_metrics(batch.returns, [t.success for t in trajectories], history, target_tokens))
            elapsed = time.perf_counter() - t0
            entry.update({"samples": len(batch.samples), "trained_tokens": trained_tokens, "elapsed_s": elapsed,
                          "tokens_per_s": (summary.generated_tokens + trained_tokens) / elapsed})
            result.iterations.append(entry)
            result.generated_tokens += summary.generated_tokens
            result.trained_tokens += trained_tokens
            log.write(json.dumps(entry) + "\n")
            log.flush()
            logger.info("iteration %d: reward %.3f, success %.2f", iteration, entry["reward"], entry["success"])
            if cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0 and iteration < cfg.iterations:
                trainer.save(out_dir / f"checkpoint-{iteration}")
            if progress is not None:
                progress(iteration, cfg.iterations, result.generated_tokens)
    result.elapsed_s = time.perf_counter() - start
    return result

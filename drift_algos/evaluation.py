"""Multi-turn greedy evaluation on held-out problems, with bootstrap intervals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym

from drift_algos.agent import ProgressFn, RolloutAgent, RolloutConfig
from drift_algos.engines.base import Engine
from drift_algos.metrics import MultiTurnMetrics, accuracy_at_turn, bootstrap, compute_metrics, multi_at
from drift_algos.records import Trajectory, TrajectoryWriter


@dataclass
class EvalConfig:
    """How to evaluate."""

    num_problems: int = 256
    """Held-out problems (the first ones of the split, so runs compare on the same set)."""
    max_new_tokens: int | None = None
    """Token limit per reply; ``None``: the environment's suggestion."""
    bootstrap_samples: int = 1000
    """Resamples for the 95% intervals."""
    seed: int = 0
    """Seed of the environments' resets and the bootstrap."""

    def __post_init__(self) -> None:
        too_small = self.max_new_tokens is not None and self.max_new_tokens < 1
        if self.num_problems < 1 or too_small or self.bootstrap_samples < 1:
            raise ValueError("num_problems, max_new_tokens and bootstrap_samples must be >= 1")


Interval = tuple[float, float]


@dataclass
class EvalResult:
    """Metrics of one model on one problem set."""

    metrics: MultiTurnMetrics
    """Accuracy per turn, multi@k, correction and flip rates."""
    multi_ci: list[Interval]
    """95% bootstrap interval of multi@k, k = 1..T."""
    accuracy_ci: list[Interval]
    """95% bootstrap interval of accuracy at turn t."""
    problem_ids: list[str]
    """Problems in evaluation order (pairs two results)."""
    outcomes: list[list[bool]]
    """Per-problem per-turn successes, in ``problem_ids`` order."""
    generated_tokens: int = 0
    """Tokens generated."""
    elapsed_s: float = 0.0
    """Wall-clock seconds."""
    extra: dict[str, float] = field(default_factory=dict)
    """Scalars worth keeping (tokens/s, ...)."""

    def to_dict(self) -> dict[str, object]:
        m = self.metrics
        return {
            "episodes": m.episodes, "max_turns": m.max_turns, "overall": m.overall,
            "accuracy_per_turn": m.accuracy, "accuracy_ci": self.accuracy_ci, "running_per_turn": m.running,
            "multi_at_k": m.multi, "multi_ci": self.multi_ci, "correction_rate": m.correction,
            "wrong_to_right": m.wrong_to_right, "right_to_wrong": m.right_to_wrong,
            "generated_tokens": self.generated_tokens, "elapsed_s": self.elapsed_s, **self.extra,
        }


def result_from_trajectories(trajectories: list[Trajectory], max_turns: int, *, samples: int = 1000,
                             seed: int = 0) -> EvalResult:
    """Metrics and intervals of finished evaluation episodes (one per problem)."""
    ordered = sorted(trajectories, key=lambda t: t.prompt_id)
    outcomes = [t.outcome for t in ordered]
    multi_ci = [bootstrap(outcomes, lambda o, k=k: multi_at(o, k), samples=samples, seed=seed)
                for k in range(1, max_turns + 1)]
    accuracy_ci = [bootstrap(outcomes, lambda o, t=t: accuracy_at_turn(o, t), samples=samples, seed=seed)
                   for t in range(1, max_turns + 1)]
    return EvalResult(compute_metrics(outcomes, max_turns), multi_ci, accuracy_ci,
                      [t.prompt_id for t in ordered], outcomes)


def evaluate(
    engine: Engine,
    make_env: Callable[[], gym.Env],
    cfg: EvalConfig,
    *,
    env_id: str = "",
    model_name: str = "",
    writer: TrajectoryWriter | None = None,
    progress: ProgressFn | None = None,
) -> EvalResult:
    """Greedy multi-turn episodes on the first ``cfg.num_problems`` problems of ``make_env()``."""
    agent = RolloutAgent(engine, make_env, env_id=env_id, model_name=model_name)
    num = cfg.num_problems if agent.num_problems is None else min(cfg.num_problems, agent.num_problems)
    rollout = RolloutConfig(num_prompts=num, n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens,
                            seed=cfg.seed, shuffle=False)
    trajectories, summary = agent.run(rollout, writer=writer, progress=progress)
    max_turns = agent.max_turns or summary.metrics.max_turns
    result = result_from_trajectories(trajectories, max_turns, samples=cfg.bootstrap_samples, seed=cfg.seed)
    result.generated_tokens = summary.generated_tokens
    result.elapsed_s = summary.elapsed_s
    result.extra["tokens_per_s"] = summary.tokens_per_s
    return result


def paired_difference(base: EvalResult, trained: EvalResult, k: int, *, samples: int = 1000,
                      seed: int = 0) -> tuple[float, Interval]:
    """multi@k(trained) - multi@k(base) on the same problems, with a paired bootstrap 95% interval."""
    if base.problem_ids != trained.problem_ids:
        raise ValueError("the two evaluations ran on different problems")
    pairs = list(zip(base.outcomes, trained.outcomes, strict=True))

    def diff(sample) -> float:
        return multi_at([b for _, b in sample], k) - multi_at([a for a, _ in sample], k)

    return diff(pairs), bootstrap(pairs, diff, samples=samples, seed=seed)

"""Multi-turn greedy evaluation on held-out problems, with bootstrap intervals."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym

from drift_algos.engines.base import Engine
from drift_algos.evaluation.metrics import (
    MultiTurnMetrics,
    Outcome,
    accuracy_interval,
    bootstrap,
    compute_metrics,
    multi_at,
)
from drift_algos.records import Trajectory, TrajectoryWriter
from drift_algos.rollout.agent import ProgressFn, RolloutAgent, RolloutConfig


@dataclass
class EvalConfig:
    """How to evaluate."""

    num_problems: int = 200
    """Held-out problems (the first ones of the split, so runs compare on the same set); the default preset's."""
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
    """95% Wilson interval of accuracy at turn t (correct out of the episodes still running; NaN where none ran)."""
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
        """The JSON form; the flip rates only where some episode continued after a success (metrics.py)."""
        m = self.metrics
        flips = {} if m.wrong_to_right is None else {"wrong_to_right": m.wrong_to_right,
                                                     "right_to_wrong": m.right_to_wrong}
        return {
            "episodes": m.episodes, "max_turns": m.max_turns, "overall": m.overall,
            "accuracy_per_turn": m.accuracy, "accuracy_ci": self.accuracy_ci, "running_per_turn": m.running,
            "multi_at_k": m.multi, "multi_ci": self.multi_ci, "correction_rate": m.correction, **flips,
            "generated_tokens": self.generated_tokens, "elapsed_s": self.elapsed_s, **self.extra,
        }


def result_from_trajectories(trajectories: list[Trajectory], max_turns: int, *, samples: int = 1000,
                             seed: int = 0) -> EvalResult:
    """Metrics and intervals of finished evaluation episodes (one per problem)."""
    ordered = sorted(trajectories, key=lambda t: t.prompt_id)
    outcomes = [t.outcome for t in ordered]
    multi_ci = [bootstrap(outcomes, lambda o, k=k: multi_at(o, k), samples=samples, seed=seed)
                for k in range(1, max_turns + 1)]
    # Accuracy at a late turn is a ratio over the few episodes still running, which a resample can
    # leave empty: its interval is the count-based (Wilson) one, not a bootstrap conditioned on it.
    accuracy_ci = [accuracy_interval(outcomes, t) for t in range(1, max_turns + 1)]
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
    """Greedy multi-turn episodes on the first ``cfg.num_problems`` problems of ``make_env()``; ``writer`` gets
    them in problem order once all are done.

    Under several processes (``accelerate launch``) each process runs its share of the problems (every
    ``count``-th) with its own engine and the episodes are gathered: every process returns the whole result, and
    each episode is the one a single process would run (its seeds come from its problem), written in the same order.
    """
    from drift_algos import distributed

    agent = RolloutAgent(engine, make_env, env_id=env_id, model_name=model_name)
    num = cfg.num_problems if agent.num_problems is None else min(cfg.num_problems, agent.num_problems)
    rollout = RolloutConfig(num_prompts=num, n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens,
                            seed=cfg.seed, shuffle=False)
    problems = agent.choose_problems(rollout)
    mine = distributed.mine(range(num))
    local, summary = agent.run(rollout, problems=[problems[g] for g in mine], groups=mine, progress=progress)
    trajectories = sorted(distributed.gather(local), key=lambda t: t.group_index)
    if writer is not None:
        for trajectory in trajectories:
            writer.write(trajectory)
    max_turns = agent.max_turns or max((t.num_turns for t in trajectories), default=1)
    result = result_from_trajectories(trajectories, max_turns, samples=cfg.bootstrap_samples, seed=cfg.seed)
    (generated,) = distributed.total([summary.generated_tokens])
    result.generated_tokens = int(generated)
    result.elapsed_s = summary.elapsed_s
    result.extra["tokens_per_s"] = generated / summary.elapsed_s if summary.elapsed_s > 0 else float("nan")
    return result


def paired_difference(base: EvalResult, trained: EvalResult, k: int, *, samples: int = 1000,
                      seed: int = 0) -> tuple[float, Interval]:
    """multi@k(trained) - multi@k(base) on the same problems, with a paired bootstrap 95% interval.

    Any two evaluations of the same problems pair up (a trained model and its base, or two
    algorithms' models): the bootstrap resamples problems, keeping each problem's two outcomes together.
    """
    if base.problem_ids != trained.problem_ids:
        raise ValueError("the two evaluations ran on different problems")
    return paired_multi_difference(base.outcomes, trained.outcomes, k, samples=samples, seed=seed)


def paired_multi_difference(first: Sequence[Outcome], second: Sequence[Outcome], k: int, *, samples: int = 1000,
                            seed: int = 0) -> tuple[float, Interval]:
    """multi@k(second) - multi@k(first), outcomes paired by position, with a paired bootstrap 95% interval."""
    pairs = list(zip(first, second, strict=True))

    def diff(sample) -> float:
        return multi_at([b for _, b in sample], k) - multi_at([a for a, _ in sample], k)

    return diff(pairs), bootstrap(pairs, diff, samples=samples, seed=seed)


@dataclass
class RunEvaluation:
    """How a `drift run` directory evaluated one of its models, read back from its config.json."""

    env_id: str
    """Gymnasium id of the run's environment."""
    env_args: dict[str, object]
    """Environment arguments of the held-out split (the run's, with ``split="test"``)."""
    eval: EvalConfig
    """The run's evaluation settings (problems, reply length, seed, bootstrap resamples)."""
    model: str
    """Model to load: the run's reference model, or its full fine-tuned checkpoint."""
    adapter: str | None
    """LoRA adapter to load on top of ``model`` (a LoRA run's checkpoint), or ``None``."""
    episodes_file: Path
    """The run's episodes of that evaluation (eval_base.jsonl or eval_trained.jsonl)."""


def run_evaluation(run_dir: Path, which: str = "trained") -> RunEvaluation:
    """The settings that reproduce a run directory's ``which`` ("base" or "trained") evaluation."""
    if which not in ("base", "trained"):
        raise ValueError(f"which must be 'base' or 'trained', got '{which}'")
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (is {run_dir} a `drift run` directory?)")
    try:
        config = json.loads(path.read_text())
        preset_eval = config["preset"]["eval"]
        env_id, env_args, model = config["env_id"], dict(config["env_args"]), config["model"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a `drift run` configuration ({type(exc).__name__}: {exc})") from None
    fields = {name: preset_eval[name] for name in EvalConfig.__dataclass_fields__ if name in preset_eval}
    checkpoint = Path(run_dir) / "checkpoint"
    adapter = None
    if which == "trained":
        if not checkpoint.is_dir():
            raise FileNotFoundError(f"{checkpoint}: not found (the run did not finish training)")
        if (checkpoint / "adapter_config.json").is_file():
            adapter = str(checkpoint)
        else:
            model = str(checkpoint)
    return RunEvaluation(env_id, {**env_args, "split": "test"}, EvalConfig(**fields), model, adapter,
                         Path(run_dir) / f"eval_{which}.jsonl")

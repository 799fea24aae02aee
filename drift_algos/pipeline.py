"""`drift run`: rollouts from the reference model, weights, training, and base-vs-trained evaluation.

A run directory holds everything a run made::

    config.json           resolved configuration
    trajectories.jsonl    reference-policy rollouts (or a copy of the given file)
    weighted.jsonl        the same rows with `return` and `weight` (+ weight_stats.json)
    train_log.jsonl       training metrics per optimiser step (offline algorithms)
    online_log.jsonl      metrics per iteration: reward, KL, clip fraction, entropy, tokens/s (online algorithms,
                          which sample with their current policy instead of trajectories.jsonl and weighted.jsonl;
                          online_curve.png plots reward and success per iteration)
    checkpoint/           the trained model or LoRA adapter (Hugging Face / PEFT format)
    eval_base.jsonl       evaluation episodes of the reference model (eval_trained.jsonl: trained); with a server
                          engine (--engine openai) only the rollouts come from the servers, which cannot hold the
                          trained weights: both evaluations run in-process, on one engine
    metrics.json          base vs trained metrics with 95% intervals, costs
    multi_at_k.png        multi@k of base vs trained
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from drift_algos import jsonio
from drift_algos.algorithms import GRPO, PPO, Drift, OfflineAlgorithm, OnlineAlgorithm, algorithm_class
from drift_algos.engines import Engine, EngineConfig, build_engine, engine_class
from drift_algos.evaluation.evaluator import EvalResult, evaluate, paired_difference
from drift_algos.presets import Preset
from drift_algos.records import TrajectoryWriter, read_trajectories
from drift_algos.rollout.agent import RolloutAgent, RolloutSummary
from drift_algos.training.online import OnlineResult, train_online
from drift_algos.training.trainer import Trainer, TrainResult
from drift_algos.weighting import weigh_file
from drift_envs.registry import env_factory

logger = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """Everything `drift run` needs."""

    env: str
    """Environment spec (alias, Gymnasium id or module:Class)."""
    model: str
    """Reference model spec."""
    algo: str
    """Algorithm name (drift, sft, rft)."""
    preset: Preset
    """Sizes and hyper-parameters."""
    out_dir: Path
    """Run directory (created; must not hold an earlier run's results)."""
    trajectories: Path | None = None
    """Start from these trajectories instead of sampling new ones."""
    env_args: dict[str, object] = field(default_factory=dict)
    """Extra environment arguments (on top of the preset's; `--env-arg`): unlike the preset's, each must be one the
    environment accepts."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The inference engine for rollouts and evaluation."""

    def __post_init__(self) -> None:
        if issubclass(algorithm_class(self.algo), OnlineAlgorithm) and engine_class(self.engine.name).remote:
            raise ValueError(f"--engine {self.engine.name}: {self.algo} samples from the policy it is training, which "
                             "no server holds; use an in-process engine (--engine transformers)")
        if self.trajectories is not None and not Path(self.trajectories).is_file():
            raise FileNotFoundError(f"trajectories file not found: {self.trajectories}")


@dataclass
class RunResult:
    """What a run produced."""

    base: EvalResult
    """Reference model on the held-out problems."""
    trained: EvalResult
    """Trained model on the same problems."""
    train: TrainResult | None
    """Training costs (offline algorithms)."""
    rollout: RolloutSummary | None
    """Rollout summary (``None`` when trajectories were given)."""
    out_dir: Path
    """Run directory."""
    samples: int
    """Training samples used."""
    skipped: int
    """Trajectories left out by the algorithm."""
    online: OnlineResult | None = None
    """The iterations of an online algorithm."""
    empty_replies: int = 0
    """Of the skipped, trajectories whose last assistant message is blank (not trained on)."""


class Reporter:
    """Progress hooks; the CLI draws rich progress bars, the default logs."""

    def stage(self, name: str) -> None:
        logger.info("stage: %s", name)

    def progress(self, stage: str) -> Callable[[int, int, int], None] | None:
        """A ``(done, total, extra)`` callback for a stage with a known size, or ``None``."""
        return None

    def done(self, stage: str) -> None:
        """The stage has finished."""


def make_algorithm(name: str, preset: Preset) -> OfflineAlgorithm | OnlineAlgorithm:
    cls = algorithm_class(name)
    if cls is Drift:
        return Drift(preset.drift)
    if cls is GRPO:
        return GRPO(preset.grpo)
    if cls is PPO:
        return PPO(preset.ppo)
    return cls()


EVAL_SEED_OFFSET = 1_000_000
"""Added to the evaluation seed of an environment that takes no ``split``, so no evaluation episode starts from a
training rollout's reset seed."""


def run(cfg: RunConfig, reporter: Reporter | None = None) -> RunResult:
    from drift_algos.models import load_model, load_tokenizer
    from drift_envs import resolve_env_id

    reporter = reporter or Reporter()
    preset = cfg.preset
    out = Path(cfg.out_dir)
    if (out / "metrics.json").exists():
        raise FileExistsError(f"{out} already holds a finished run; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    env_id = resolve_env_id(cfg.env)
    base_args = {**preset.env_args, "max_turns": preset.max_turns, "max_actions": preset.max_turns, **cfg.env_args}
    # The user's env_args must apply; the preset's settings and the split apply where the environment accepts them.
    given = {name: "--env-arg" for name in cfg.env_args if name != "split"}
    train_env = env_factory(env_id, {**base_args, "split": "train"}, explicit=given)
    test_env = env_factory(env_id, {**base_args, "split": "test"}, explicit=given, warn=False)  # warned once
    not_applied = dict(train_env.not_applied)
    if "split" in not_applied:
        # Without a split, held-out episodes differ from the training rollouts only by their reset seeds: evaluate on
        # seeds no rollout uses (rollouts and online iterations use seed, seed + 1, ... with groups < 1,000,003).
        preset = dataclasses.replace(preset, eval=dataclasses.replace(preset.eval,
                                                                       seed=preset.eval.seed + EVAL_SEED_OFFSET))
        cfg = dataclasses.replace(cfg, preset=preset)
        not_applied["split"] += f"; evaluation episodes use the reset seeds of seed + {EVAL_SEED_OFFSET:,}"
    (out / "config.json").write_text(jsonio.dumps(
        {"env": cfg.env, "env_id": env_id, "model": cfg.model, "algo": cfg.algo, "env_args": base_args,
         "env_args_not_applied": not_applied,
         "trajectories": str(cfg.trajectories) if cfg.trajectories else None, "preset": asdict(preset),
         "engine": asdict(cfg.engine),
         "eval_engine": "transformers" if engine_class(cfg.engine.name).remote else cfg.engine.name},
    ) + "\n")

    reporter.stage("loading model")
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model)
    algorithm = make_algorithm(cfg.algo, preset)
    if isinstance(algorithm, OnlineAlgorithm) and cfg.trajectories is not None:
        raise ValueError(f"{cfg.algo} samples with its own policy; it cannot start from --trajectories")
    engine = build_engine(cfg.engine, cfg.model, loaded=(model, tokenizer))
    # A server engine samples what its servers hold, never the trained weights: the servers then do the rollouts
    # and both evaluations run in-process, so base and trained are compared on one engine.
    in_process = EngineConfig(batch_size=cfg.engine.batch_size, threads=cfg.engine.threads)
    evaluator = build_engine(in_process, cfg.model, loaded=(model, tokenizer)) if engine.remote else engine
    if evaluator is not engine:
        logger.info("rollouts from the %s engine; evaluation in-process (%s)", engine.name, evaluator.name)
    try:
        if isinstance(algorithm, OnlineAlgorithm):
            return _run_online(cfg, algorithm, model, tokenizer, engine, train_env, test_env, env_id, reporter)
        return _run_offline(cfg, algorithm, model, tokenizer, engine, evaluator, train_env, test_env, env_id,
                            reporter)
    finally:
        engine.close()
        if evaluator is not engine:
            evaluator.close()


def _run_offline(cfg: RunConfig, algorithm: OfflineAlgorithm, model, tokenizer, engine: Engine, evaluator: Engine,
                 train_env, test_env, env_id: str, reporter: Reporter) -> RunResult:
    """Rollouts from ``engine``; both evaluations on ``evaluator`` (``engine`` itself unless it is a server's)."""
    preset, out = cfg.preset, Path(cfg.out_dir)
    traj_path = out / "trajectories.jsonl"
    rollout_summary = None
    if cfg.trajectories is not None:
        reporter.stage("reading trajectories")
        if Path(cfg.trajectories).resolve() != traj_path.resolve():
            shutil.copyfile(cfg.trajectories, traj_path)
        trajectories = read_trajectories(traj_path)
    else:
        reporter.stage("rollout")
        agent = RolloutAgent(engine, train_env, env_id=env_id, model_name=cfg.model)
        with TrajectoryWriter(traj_path) as writer:
            trajectories, rollout_summary = agent.run(preset.rollout, writer=writer,
                                                      progress=reporter.progress("rollout"))
        reporter.done("rollout")

    reporter.stage("weighing")
    stats = weigh_file(traj_path, out / "weighted.jsonl", preset.drift.weighing)
    (out / "weight_stats.json").write_text(jsonio.dumps(stats.to_dict()) + "\n")

    reporter.stage("evaluating the reference model")
    base = _evaluate(evaluator, test_env, preset, env_id, cfg.model, out / "eval_base.jsonl", reporter, "eval base")

    reporter.stage(f"training ({cfg.algo})")
    sample_set = algorithm.samples(trajectories)
    if not sample_set.samples:
        raise ValueError(f"{cfg.algo}: no training samples left from {len(trajectories)} trajectories "
                         "(no successful trajectory?); sample more prompts or raise the temperature")
    trainer = Trainer(model, tokenizer, preset.train)
    train_result = trainer.fit(
        sample_set.samples, objective=algorithm.objective(preset.train), log_path=out / "train_log.jsonl",
        progress=reporter.progress("train"),
    )
    reporter.done("train")
    trainer.save(out / "checkpoint")

    reporter.stage("evaluating the trained model")
    evaluator.update_weights(trainer.model)
    trained = _evaluate(evaluator, test_env, preset, env_id, str(out / "checkpoint"), out / "eval_trained.jsonl",
                        reporter, "eval trained")

    result = RunResult(base, trained, train_result, rollout_summary, out, len(sample_set.samples), sample_set.skipped,
                       empty_replies=sample_set.empty_replies)
    _write_metrics(cfg, result, stats.to_dict(), sample_set.weight_mass_skipped)
    plot_multi_at_k(base, trained, out / "multi_at_k.png", title=f"{cfg.algo} on {cfg.env} ({preset.name} preset)")
    return result


def _run_online(cfg: RunConfig, algorithm: OnlineAlgorithm, model, tokenizer, engine: Engine,
                train_env, test_env, env_id: str, reporter: Reporter) -> RunResult:
    preset, out = cfg.preset, Path(cfg.out_dir)
    reporter.stage("evaluating the reference model")
    base = _evaluate(engine, test_env, preset, env_id, cfg.model, out / "eval_base.jsonl", reporter, "eval base")

    reporter.stage(f"training ({cfg.algo}, online)")
    trainer = Trainer(model, tokenizer, preset.train)
    engine.update_weights(trainer.model)  # the trainer may have wrapped the model (LoRA) or cast it to fp32
    agent = RolloutAgent(engine, train_env, env_id=env_id, model_name=cfg.model)
    online = train_online(algorithm, agent, trainer, engine, preset.rollout, preset.online, out,
                          progress=reporter.progress("iterations"))
    reporter.done("iterations")
    trainer.save(out / "checkpoint")

    reporter.stage("evaluating the trained model")
    trained = _evaluate(engine, test_env, preset, env_id, str(out / "checkpoint"), out / "eval_trained.jsonl",
                        reporter, "eval trained")
    samples = sum(int(i["samples"]) for i in online.iterations)
    result = RunResult(base, trained, None, None, out, samples, 0, online)
    _write_metrics(cfg, result, {}, 0.0)
    plot_multi_at_k(base, trained, out / "multi_at_k.png", title=f"{cfg.algo} on {cfg.env} ({preset.name} preset)")
    plot_online_curve(online, out / "online_curve.png", title=f"{cfg.algo} on {cfg.env} ({preset.name} preset)")
    return result


def plot_online_curve(online: OnlineResult, path: Path, *, title: str) -> Path:
    """Mean reward and success rate of each iteration's samples, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    its = [int(i["iteration"]) for i in online.iterations]
    ax.plot(its, [i["reward"] for i in online.iterations], marker="o", label="mean return")
    ax.plot(its, [i["success"] for i in online.iterations], marker="s", label="success rate")
    ax.set_xlabel("iteration")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _evaluate(engine, make_env, preset: Preset, env_id: str, model_name: str, path: Path, reporter: Reporter,
              stage: str) -> EvalResult:
    with TrajectoryWriter(path) as writer:
        result = evaluate(engine, make_env, preset.eval, env_id=env_id, model_name=model_name, writer=writer,
                          progress=reporter.progress(stage))
    reporter.done(stage)
    return result


def _write_metrics(cfg: RunConfig, result: RunResult, weight_stats: dict, mass_skipped: float) -> None:
    turns = result.base.metrics.max_turns
    deltas = {}
    for k in range(1, turns + 1):
        diff, ci = paired_difference(result.base, result.trained, k, samples=cfg.preset.eval.bootstrap_samples)
        deltas[f"multi@{k}"] = {"difference": diff, "ci": ci}
    rollout = None
    if result.rollout is not None:
        s = result.rollout
        rollout = {"episodes": s.metrics.episodes, "success_within_T": s.metrics.overall,
                   "accuracy_per_turn": s.metrics.accuracy, "generated_tokens": s.generated_tokens,
                   "elapsed_s": s.elapsed_s, "tokens_per_s": s.tokens_per_s}
    t = result.train
    if t is not None:
        train = {"samples": result.samples, "skipped_trajectories": result.skipped,
                 "empty_replies": result.empty_replies, "weight_mass_skipped": mass_skipped, "steps": t.steps,
                 "tokens": t.tokens,
                 "target_tokens": t.target_tokens, "elapsed_s": t.elapsed_s, "tokens_per_s": t.tokens_per_s,
                 "final_loss": t.final_loss}
    else:
        o = result.online
        train = {"samples": result.samples, "iterations": len(o.iterations), "generated_tokens": o.generated_tokens,
                 "tokens": o.trained_tokens, "elapsed_s": o.elapsed_s,
                 "final_reward": o.iterations[-1]["reward"] if o.iterations else None}
    metrics = {
        "algo": cfg.algo, "env": cfg.env, "model": cfg.model, "preset": cfg.preset.name,
        "base": result.base.to_dict(), "trained": result.trained.to_dict(), "paired_difference": deltas,
        "rollout": rollout, "weights": weight_stats or None, "train": train,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (result.out_dir / "metrics.json").write_text(jsonio.dumps(metrics) + "\n")


def plot_multi_at_k(base: EvalResult, trained: EvalResult, path: Path, *, title: str) -> Path:
    """multi@k of both models with 95% intervals, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for label, res, offset in (("base", base, -0.04), ("trained", trained, 0.04)):
        ks = [k + 1 + offset for k in range(res.metrics.max_turns)]
        values = [100 * v for v in res.metrics.multi]
        low = [100 * (v - lo) for v, (lo, _) in zip(res.metrics.multi, res.multi_ci, strict=True)]
        high = [100 * (hi - v) for v, (_, hi) in zip(res.metrics.multi, res.multi_ci, strict=True)]
        ax.errorbar(ks, values, yerr=[low, high], marker="o", capsize=4, label=label)
    ax.set_xlabel("turns k")
    ax.set_ylabel("multi@k (%)")
    ax.set_xticks(range(1, base.metrics.max_turns + 1))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

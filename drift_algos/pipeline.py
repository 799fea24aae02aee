"""`drift run`: rollouts from the reference model, weights, training, and base-vs-trained evaluation.

A run directory holds everything a run made::

    config.json           resolved configuration (what `drift run --resume` reads back)
    trajectories.jsonl    reference-policy rollouts in group order (or a copy of the given file), with their
                          settings in trajectories.meta.json
    weighted.jsonl        the same rows with `return` and `weight` (+ weight_stats.json)
    train_log.jsonl       training metrics per optimiser step (offline algorithms; train_result.json once done)
    online_log.jsonl      metrics per iteration: reward, KL, clip fraction, entropy, tokens/s (online algorithms,
                          which sample with their current policy instead of trajectories.jsonl and weighted.jsonl;
                          online_curve.png plots reward and success per iteration)
    resume/               resumable checkpoints: step-<n>/ of the training (offline), iteration-<i>/ (online)
    checkpoint/           the trained model or LoRA adapter (Hugging Face / PEFT format)
    eval_base.jsonl       evaluation episodes of the reference model in problem order (eval_trained.jsonl: trained;
                          each with its numbers in eval_*.summary.json); with a server engine (--engine openai) only
                          the rollouts come from the servers, which cannot hold the trained weights: both
                          evaluations run in-process, on one engine
    metrics.json          base vs trained metrics with 95% intervals, costs
    multi_at_k.png        multi@k of base vs trained

**Resume** (``run(cfg, resume=True)``, `drift run --resume RUN_DIR`): an interrupted run finishes where it stopped and
ends as an uninterrupted one with the same seed would: the rollouts through the crash-safe collection
(:mod:`drift_algos.rollout.collection`: complete groups kept, the rest collected), the training from its newest
resumable checkpoint (offline) or after its last finished iteration (online), then the evaluations not yet written.
Every file a later stage reads is written whole or not at all (a temporary file renamed into place).

**Several processes** (``accelerate launch``): each process collects its share of the rollout groups (shards merged
into trajectories.jsonl), evaluates its share of the problems (gathered), and trains data-parallel; only the main
process writes the run's files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from drift_algos import distributed, jsonio
from drift_algos.algorithms import GRPO, PPO, Drift, OfflineAlgorithm, OnlineAlgorithm, algorithm_class
from drift_algos.engines import Engine, EngineConfig, build_engine, engine_class
from drift_algos.evaluation.evaluator import EvalResult, evaluate, paired_difference, result_from_trajectories
from drift_algos.evaluation.metrics import compute_metrics
from drift_algos.presets import Preset
from drift_algos.records import Trajectory, TrajectoryWriter, read_trajectories
from drift_algos.rollout.agent import RolloutAgent, RolloutSummary
from drift_algos.rollout.collection import CollectionMeta, Shard, merge, open_collection, rewrite_complete, scan
from drift_algos.training import checkpoints
from drift_algos.training.online import OnlineResult, train_online
from drift_algos.training.trainer import Trainer, TrainResult
from drift_algos.weighting import weigh_file
from drift_envs.registry import env_factory

logger = logging.getLogger(__name__)

RESUME_DIR = "resume"
"""The run directory's folder of resumable checkpoints."""
KEPT_ON_FAILURE = ("trajectories.jsonl", RESUME_DIR, "shards", "eval_base.jsonl")
"""What makes an interrupted run directory worth keeping for `drift run --resume` (the CLI deletes it otherwise)."""


@dataclass
class RunConfig:
    """Everything `drift run` needs."""

    env: str
    """Environment spec (alias, Gymnasium id or module:Class)."""
    model: str
    """Reference model spec."""
    algo: str
    """Algorithm name (drift, sft, sft-all, rft, grpo, ppo)."""
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


def _dataclass_from_dict(cls: type, data: dict[str, object]):
    """``cls(**data)`` with nested dataclass fields built from their dicts (unknown keys are an error)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown field '{sorted(unknown)[0]}' for {cls.__name__}")
    values = {}
    for name, value in data.items():
        kind = hints.get(name)
        values[name] = (_dataclass_from_dict(kind, value) if dataclasses.is_dataclass(kind) and isinstance(value, dict)
                        else value)
    return cls(**values)


def load_run_config(run_dir: Path) -> RunConfig:
    """The configuration a `drift run` directory was started with (its config.json), to resume it."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: {path} not found (is {run_dir} a drift run directory?)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        preset = _dataclass_from_dict(Preset, config["preset"])
        engine = _dataclass_from_dict(EngineConfig, config.get("engine") or {})
        return RunConfig(env=config["env"], model=config["model"], algo=config["algo"], preset=preset,
                         out_dir=Path(run_dir), trajectories=config["trajectories"] and Path(config["trajectories"]),
                         env_args=dict(config.get("given_env_args", {})), engine=engine)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a drift run configuration ({type(err).__name__}: {err})") from None


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


@dataclass
class _Run:
    """One run's pieces, shared by its stages."""

    cfg: RunConfig
    env_id: str
    train_args: dict[str, object]
    train_env: Callable
    test_env: Callable
    engine: Engine
    evaluator: Engine
    """``engine`` itself, or an in-process engine when ``engine`` is a server's (which cannot hold trained weights)."""
    reporter: Reporter
    resume: bool

    @property
    def out(self) -> Path:
        return Path(self.cfg.out_dir)


def run(cfg: RunConfig, reporter: Reporter | None = None, *, resume: bool = False) -> RunResult:
    """Run (or with ``resume``, finish) the run ``cfg`` describes; see the module docstring."""
    from drift_algos.models import load_model, load_tokenizer
    from drift_envs import resolve_env_id

    reporter = reporter or Reporter()
    preset = cfg.preset
    out = Path(cfg.out_dir)
    if (out / "metrics.json").exists():
        raise FileExistsError(f"{out} already holds a finished run" + ("" if resume else "; choose another --out"))
    if resume and not (out / "config.json").is_file():
        raise FileNotFoundError(f"--resume: {out / 'config.json'} not found (is {out} a drift run directory?)")
    if not resume:
        _refuse_unfinished(out, collects=cfg.trajectories is None)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    env_id = resolve_env_id(cfg.env)
    base_args = {**preset.env_args, "max_turns": preset.max_turns, "max_actions": preset.max_turns, **cfg.env_args}
    train_args = {**base_args, "split": "train"}
    # The user's env_args must apply; the preset's settings and the split apply where the environment accepts them.
    given = {name: "--env-arg" for name in cfg.env_args if name != "split"}
    train_env = env_factory(env_id, train_args, explicit=given)
    test_env = env_factory(env_id, {**base_args, "split": "test"}, explicit=given, warn=False)  # warned once
    if not resume:
        not_applied = dict(train_env.not_applied)
        if "split" in not_applied:
            # Without a split, held-out episodes differ from the training rollouts only by their reset seeds: evaluate
            # on seeds no rollout uses (rollouts and online iterations use seed, seed + 1, ... with groups < 1,000,003).
            # A resumed run reads its preset back from config.json, where the offset is already applied.
            preset = dataclasses.replace(preset, eval=dataclasses.replace(preset.eval,
                                                                           seed=preset.eval.seed + EVAL_SEED_OFFSET))
            cfg = dataclasses.replace(cfg, preset=preset)
            not_applied["split"] += f"; evaluation episodes use the reset seeds of seed + {EVAL_SEED_OFFSET:,}"
        if distributed.is_main():
            (out / "config.json").write_text(jsonio.dumps(
                {"env": cfg.env, "env_id": env_id, "model": cfg.model, "algo": cfg.algo, "env_args": base_args,
                 "given_env_args": cfg.env_args, "env_args_not_applied": not_applied,
                 "trajectories": str(cfg.trajectories) if cfg.trajectories else None, "preset": asdict(preset),
                 "engine": asdict(cfg.engine),
                 "eval_engine": "transformers" if engine_class(cfg.engine.name).remote else cfg.engine.name},
            ) + "\n")

    reporter.stage("loading model")
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, device=str(distributed.state().device))
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
    stages = _Run(cfg, env_id, train_args, train_env, test_env, engine, evaluator, reporter, resume)
    try:
        if isinstance(algorithm, OnlineAlgorithm):
            return _run_online(stages, algorithm, model, tokenizer)
        return _run_offline(stages, algorithm, model, tokenizer)
    finally:
        engine.close()
        if evaluator is not engine:
            evaluator.close()


def _refuse_unfinished(out: Path, *, collects: bool) -> None:
    """A fresh run must not overwrite an interrupted one's work (its config.json included)."""
    work = out / "trajectories.jsonl"
    if collects and work.is_file() and work.stat().st_size > 0:
        raise FileExistsError(f"{work} already exists: finish that run with drift run --resume {out}, or choose "
                              "another --out")
    resume_dir = out / RESUME_DIR
    if resume_dir.is_dir() and any(resume_dir.iterdir()):
        raise FileExistsError(f"{resume_dir} holds checkpoints of an unfinished run: finish it with drift run "
                              f"--resume {out}, or choose another --out")


def _run_offline(run: _Run, algorithm: OfflineAlgorithm, model, tokenizer) -> RunResult:
    cfg, preset, out, reporter = run.cfg, run.cfg.preset, run.out, run.reporter
    traj_path = out / "trajectories.jsonl"
    rollout_summary = None
    if cfg.trajectories is not None:
        reporter.stage("reading trajectories")
        if distributed.is_main() and Path(cfg.trajectories).resolve() != traj_path.resolve():
            shutil.copyfile(cfg.trajectories, traj_path)
        distributed.barrier()
        trajectories = read_trajectories(traj_path)
    else:
        reporter.stage("rollout")
        trajectories, rollout_summary = _collect(run)
        reporter.done("rollout")

    reporter.stage("weighing")
    stats = None
    if distributed.is_main():
        stats = weigh_file(traj_path, out / "weighted.jsonl", preset.drift.weighing).to_dict()
        (out / "weight_stats.json").write_text(jsonio.dumps(stats) + "\n")

    reporter.stage("evaluating the reference model")
    base = _evaluate(run, cfg.model, "base")

    reporter.stage(f"training ({cfg.algo})")
    sample_set = algorithm.samples(trajectories)
    if not sample_set.samples:
        raise ValueError(f"{cfg.algo}: no training samples left from {len(trajectories)} trajectories "
                         "(no successful trajectory?); sample more prompts or raise the temperature")
    trainer = Trainer(model, tokenizer, algorithm.train_config(preset.train))
    checkpoint, finished = out / "checkpoint", out / "train_result.json"
    if run.resume and finished.is_file() and checkpoint.is_dir():
        train_result = TrainResult(**json.loads(finished.read_text(encoding="utf-8")))
        _load_final_weights(trainer, checkpoint)
    else:
        train_result = trainer.fit(
            sample_set.samples, objective=algorithm.objective(preset.train), log_path=out / "train_log.jsonl",
            progress=reporter.progress("train"), checkpoint_dir=out / RESUME_DIR, resume=run.resume,
        )
        reporter.done("train")
        _save_final(trainer, checkpoint)
        if distributed.is_main():
            _write_atomically(finished, json.dumps(asdict(train_result)) + "\n")
        distributed.barrier()

    reporter.stage("evaluating the trained model")
    run.evaluator.update_weights(trainer.model)
    trained = _evaluate(run, str(checkpoint), "trained")

    result = RunResult(base, trained, train_result, rollout_summary, out, len(sample_set.samples), sample_set.skipped,
                       empty_replies=sample_set.empty_replies)
    if distributed.is_main():
        _write_metrics(cfg, result, stats, sample_set.weight_mass_skipped)
        plot_multi_at_k(base, trained, out / "multi_at_k.png",
                        title=f"{cfg.algo} on {cfg.env} ({preset.name} preset)")
    distributed.barrier()
    return result


def _collect(run: _Run) -> tuple[list[Trajectory], RolloutSummary]:
    """The reference policy's rollouts, collected crash-safe (and, resumed, finished) into trajectories.jsonl.

    One process writes trajectories.jsonl itself; several each collect their share of the groups into
    shards/trajectories-<rank>-of-<count>.jsonl, which the main process merges. Either way the file ends in group
    order, so a resumed run's file equals an uninterrupted one's row for row.
    """
    cfg, out = run.cfg, run.out
    final = out / "trajectories.jsonl"
    agent = RolloutAgent(run.engine, run.train_env, env_id=run.env_id, model_name=cfg.model)
    rollout = cfg.preset.rollout
    rollout = dataclasses.replace(rollout, max_new_tokens=rollout.max_new_tokens or agent.max_reply_tokens)
    problems = agent.choose_problems(rollout)
    rank, processes = distributed.rank(), distributed.count()
    start = time.perf_counter()
    finished = run.resume and final.is_file() and len(scan(final, rollout.n).complete) == rollout.num_prompts
    if not finished:
        if processes > 1 and run.resume and final.is_file():
            raise ValueError(f"--resume: {final} is an unfinished one-process collection; resume it with one process")
        share = Shard(rank, processes)
        path = final if processes == 1 else out / "shards" / f"trajectories-{rank}-of-{processes}.jsonl"
        if distributed.is_main():
            path.parent.mkdir(exist_ok=True)
        distributed.barrier()
        meta = CollectionMeta(env_id=run.env_id, env_args=run.train_args, model=cfg.model,
                              temperature=rollout.temperature, top_p=rollout.top_p,
                              max_new_tokens=rollout.max_new_tokens, seed=rollout.seed,
                              num_prompts=rollout.num_prompts, n=rollout.n, problems=problems, shard=str(share))
        pending = open_collection(path, meta, resume=run.resume and path.exists())
        if pending.found is not None:
            logger.info("resuming %s: %d complete groups kept, %d groups to go", path, len(pending.found.complete),
                        len(pending.groups))
        if pending.groups:
            with TrajectoryWriter(path, append=True) as writer:
                agent.run(rollout, writer=writer, problems=[problems[g] for g in pending.groups],
                          groups=pending.groups, progress=run.reporter.progress("rollout"))
        rewrite_complete(path, scan(path, rollout.n))  # group order, whatever order the groups finished in
        distributed.barrier()
        if processes > 1 and distributed.is_main():
            merge([out / "shards" / f"trajectories-{r}-of-{processes}.jsonl" for r in range(processes)], final)
        distributed.barrier()
    trajectories = read_trajectories(final)
    return trajectories, _rollout_summary(trajectories, agent.max_turns, rollout.num_prompts,
                                          time.perf_counter() - start)


def _rollout_summary(trajectories: list[Trajectory], max_turns: int | None, prompts: int,
                     elapsed_s: float) -> RolloutSummary:
    """A collection's summary from its records (a resumed run's covers the whole file, not only its own part;
    ``elapsed_s`` is this session's time)."""
    malformed = sum(1 for t in trajectories for d in t.reward_details.values()
                    if isinstance(d, dict) and float(d.get("format_penalty", 0.0)) < 0)
    return RolloutSummary(metrics=compute_metrics([t.outcome for t in trajectories], max_turns), prompts=prompts,
                          generated_tokens=sum(sum(t.turn_tokens) for t in trajectories), elapsed_s=elapsed_s,
                          malformed_replies=malformed, replies=sum(t.num_turns for t in trajectories))


def _run_online(run: _Run, algorithm: OnlineAlgorithm, model, tokenizer) -> RunResult:
    cfg, preset, out, reporter = run.cfg, run.cfg.preset, run.out, run.reporter
    reporter.stage("evaluating the reference model")
    base = _evaluate(run, cfg.model, "base")

    reporter.stage(f"training ({cfg.algo}, online)")
    trainer = Trainer(model, tokenizer, preset.train)
    run.engine.update_weights(trainer.model)  # the trainer may have wrapped the model (LoRA) or cast it to fp32
    agent = RolloutAgent(run.engine, run.train_env, env_id=run.env_id, model_name=cfg.model)
    online = train_online(algorithm, agent, trainer, run.engine, preset.rollout, preset.online, out,
                          progress=reporter.progress("iterations"), resume=run.resume)
    reporter.done("iterations")
    checkpoint = out / "checkpoint"
    _save_final(trainer, checkpoint)

    reporter.stage("evaluating the trained model")
    trained = _evaluate(run, str(checkpoint), "trained")
    samples = sum(int(i["samples"]) for i in online.iterations)
    result = RunResult(base, trained, None, None, out, samples, 0, online)
    if distributed.is_main():
        _write_metrics(cfg, result, {}, 0.0)
        title = f"{cfg.algo} on {cfg.env} ({preset.name} preset)"
        plot_multi_at_k(base, trained, out / "multi_at_k.png", title=title)
        plot_online_curve(online, out / "online_curve.png", title=title)
    distributed.barrier()
    return result


def _save_final(trainer: Trainer, checkpoint: Path) -> None:
    """The trained model (or adapter) to ``checkpoint/``, whole or not at all."""
    with checkpoints.atomic_folder(checkpoint) as folder:
        trainer.save(folder)


def _load_final_weights(trainer: Trainer, checkpoint: Path) -> None:
    """Put a finished run's trained weights (``checkpoint/``) into ``trainer.model``, to evaluate them."""
    import torch

    if (checkpoint / "adapter_config.json").is_file():
        from peft import load_peft_weights, set_peft_model_state_dict

        set_peft_model_state_dict(trainer.model, load_peft_weights(str(checkpoint)))
    else:
        from transformers import AutoModelForCausalLM

        saved = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        trainer.model.load_state_dict(saved.state_dict())
    trainer.model.eval()


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _evaluate(run: _Run, model_name: str, which: str) -> EvalResult:
    """Evaluate the engine's model on the held-out problems into eval_<which>.jsonl (and .summary.json), or, resumed,
    read them back when an earlier session wrote them."""
    preset, out = run.cfg.preset, run.out
    path, summary_path = out / f"eval_{which}.jsonl", out / f"eval_{which}.summary.json"
    stage = f"eval {which}"
    if run.resume and path.is_file() and summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        result = result_from_trajectories(read_trajectories(path), summary["max_turns"],
                                          samples=preset.eval.bootstrap_samples, seed=preset.eval.seed)
        result.generated_tokens, result.elapsed_s = summary["generated_tokens"], summary["elapsed_s"]
        result.extra["tokens_per_s"] = summary.get("tokens_per_s") or float("nan")
        return result
    temporary = path.with_name(f".{path.name}.tmp")
    writer = TrajectoryWriter(temporary) if distributed.is_main() else None
    try:
        result = evaluate(run.evaluator, run.test_env, preset.eval, env_id=run.env_id, model_name=model_name,
                          writer=writer, progress=run.reporter.progress(stage))
    finally:
        if writer is not None:
            writer.close()
    if distributed.is_main():
        summary_path.write_text(jsonio.dumps(result.to_dict()) + "\n")
        os.replace(temporary, path)  # last: the episodes file exists only once its summary does
    distributed.barrier()
    run.reporter.done(stage)
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

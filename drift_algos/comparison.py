"""`drift bench compare`: DRIFT against its baselines on one budget, with learning curves and paired intervals.

Every algorithm starts from the same base model, is evaluated on the same held-out problems (greedy, the preset's
evaluation settings; the evaluation seed is the preset's for every training seed, so the problems and, in
multiple-choice environments, their letter orders are the same everywhere) and gets the same budget, in generated
tokens or in wall-clock seconds (:class:`Budget`). Each training seed (``seeds``) seeds the rollouts, the batch order
and the online sampling.

**What the budget pays for.** The clock runs while an algorithm collects rollouts and trains (no algorithm saves
checkpoints here: offline training keeps none, the online loop runs with ``resumable=False``); it stops while the
comparison evaluates a learning-curve point (a measurement, not training); model loading is not counted.
Generated tokens are the tokens its rollouts sampled (training generates none).

* Offline algorithms (``drift``, ``sft``, ``sft-all``, ``rft``) pay for their rollouts and their training. One
  collection per seed serves all of them (the rollouts come from the fixed base model, so each would collect the same
  file): its measured seconds and tokens are charged to each of them in full. It is collected in chunks of
  ``rollout_chunk`` groups up to the preset's ``num_prompts x n`` and stops early once its cost reaches the
  budget (a tokens budget) or ``rollout_share`` of it (a seconds budget, leaving the rest for training); the last
  chunk may overshoot. Training then runs the preset's epochs, stopped after the optimiser step at which a seconds
  budget is spent. Curve points: every ``eval_every_steps`` optimiser steps and at the end.
* Online algorithms (``grpo``, ``ppo``) run iterations (up to ``max_iterations``) until the budget is spent, checked
  after each iteration (the last one may overshoot). Curve points: every ``eval_every_iterations`` iterations and at
  the end.

Every curve starts with the base model at cost 0. An algorithm's final accuracy is its last curve point's; the
wall-clock and tokens at which it first reached it are those of its first trained curve point at least as high
(:func:`first_reach`; the resolution is the curve's).

Written to ``out_dir`` (:mod:`drift_algos.comparison_results`): ``results.json``, ``results.md``,
``curve_seconds.png``, ``curve_tokens.png``, ``multi_at_k.png``; ``base/eval.jsonl`` (base episodes), and per seed
``seed-<s>/rollouts.jsonl`` (the shared collection) and ``seed-<s>/<algo>/`` (its train or online log,
``eval_final.jsonl``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from drift_algos import jsonio
from drift_algos.algorithms import OfflineAlgorithm, OnlineAlgorithm, algorithm_class
from drift_algos.engines import EngineConfig, build_engine, engine_class
from drift_algos.evaluation.evaluator import EvalConfig, EvalResult, evaluate
from drift_algos.evaluation.paired import random_elimination
from drift_algos.memory import PeakMemory
from drift_algos.presets import Preset
from drift_algos.presets import default as default_run_preset
from drift_algos.presets import smoke as smoke_run_preset
from drift_algos.records import Trajectory, TrajectoryWriter
from drift_algos.rollout.agent import RolloutAgent
from drift_algos.training.online import OnlineConfig, train_online
from drift_algos.training.trainer import Trainer

logger = logging.getLogger(__name__)

BUDGET_KINDS = ("tokens", "seconds")


@dataclass(frozen=True)
class Budget:
    """What each algorithm may spend."""

    kind: str
    """``tokens`` (generated tokens) or ``seconds`` (wall-clock, evaluation excluded)."""
    amount: float
    """How many."""

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"--budget: kind must be one of {', '.join(BUDGET_KINDS)}, got '{self.kind}'")
        if not self.amount > 0:
            raise ValueError(f"--budget: the amount must be > 0, got {self.amount}")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``tokens=N`` or ``seconds=S``."""
        kind, sep, amount = text.partition("=")
        try:
            value = float(amount)
        except ValueError:
            value = float("nan")
        if not sep or value != value:
            raise ValueError(f"--budget: expected tokens=N or seconds=S, got '{text}'")
        return cls(kind.strip(), value)

    def spent(self, seconds: float, tokens: int) -> bool:
        return (seconds if self.kind == "seconds" else tokens) >= self.amount

    def __str__(self) -> str:
        return f"{self.kind}={self.amount:g}"


class Meter:
    """One algorithm's cost: wall-clock seconds while running (paused while evaluating) and generated tokens."""

    def __init__(self, seconds: float = 0.0, tokens: int = 0, *, clock: Callable[[], float] = time.perf_counter):
        self._charged = seconds
        self._since: float | None = None
        self._clock = clock
        self.tokens = tokens

    def start(self) -> None:
        self._since = self._clock()

    def stop(self) -> None:
        if self._since is not None:
            self._charged += self._clock() - self._since
            self._since = None

    @property
    def seconds(self) -> float:
        return self._charged + (self._clock() - self._since if self._since is not None else 0.0)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        running = self._since is not None
        self.stop()
        try:
            yield
        finally:
            if running:
                self.start()


@dataclass
class CurvePoint:
    """One held-out evaluation on an algorithm's learning curve."""

    seconds: float
    """Wall-clock spent so far (rollouts and training; evaluations excluded)."""
    generated_tokens: int
    """Tokens generated so far."""
    trained_tokens: int
    """Tokens processed by training so far (prompts included)."""
    step: int
    """Optimiser step (offline) or iteration (online); 0 for the base model."""
    multi: list[float]
    """multi@k, k = 1..T."""


def first_reach(curve: Sequence[CurvePoint], target: float, k: int) -> CurvePoint | None:
    """The first point of ``curve`` whose multi@k is at least ``target`` (``None`` if none is)."""
    for point in curve:
        if point.multi[k - 1] >= target - 1e-12:
            return point
    return None


@dataclass
class ComparePreset:
    """Sizes of a comparison."""

    name: str
    """Preset name."""
    description: str
    """What it is for and what it costs."""
    run: Preset
    """Each algorithm's sizes: rollouts, training, online loop, evaluation (a `drift run` preset)."""
    budget: Budget
    """Budget when none is given."""
    eval_every_steps: int
    """Offline algorithms: evaluate a learning-curve point every this many optimiser steps (and at the end)."""
    eval_every_iterations: int
    """Online algorithms: evaluate a learning-curve point every this many iterations (and at the end)."""
    max_iterations: int
    """Online algorithms stop after this many iterations even when budget is left."""
    rollout_share: float = 0.5
    """Under a seconds budget, the share offline algorithms may spend collecting rollouts."""
    rollout_chunk: int = 8
    """Groups per chunk of the shared offline collection (the budget is checked between chunks)."""

    def __post_init__(self) -> None:
        for name in ("eval_every_steps", "eval_every_iterations", "max_iterations", "rollout_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.rollout_share <= 1:
            raise ValueError(f"rollout_share must be in (0, 1], got {self.rollout_share}")


def smoke() -> ComparePreset:
    run = smoke_run_preset()
    run.eval = dataclasses.replace(run.eval, num_problems=8, bootstrap_samples=50)
    run.rollout = dataclasses.replace(run.rollout, num_prompts=4, n=2)
    run.online = dataclasses.replace(run.online, prompts_per_iteration=2, group_size=2)
    return ComparePreset("smoke", "checks the comparison end to end on a tiny model, learns nothing measurable",
                         run=run, budget=Budget("tokens", 400), eval_every_steps=1, eval_every_iterations=1,
                         max_iterations=2, rollout_chunk=2)


def default() -> ComparePreset:
    # The default `drift run` preset's sizes (64 prompts x 8 rollouts, 2 epochs; online: 8 prompts x 4 per
    # iteration) on 100 held-out problems, for an equal wall-clock budget on the 2-core CPU. Measured at
    # seconds=600 (drift vs grpo, seed 0, the CPU shared with other jobs): 8-11 generated tok/s, 28 trained tok/s;
    # a chunk of 8 rollout groups about 200 s, one GRPO iteration 789 s, one evaluation of 100 problems 210-240 s.
    # At 1800 s per algorithm, 6 algorithms x 3 seeds are about 9 h of budget plus the evaluations (not run).
    run = default_run_preset()
    run.eval = dataclasses.replace(run.eval, num_problems=100)
    return ComparePreset("default", "the embedded model on a 2-core CPU, equal wall-clock budget of 1800 s per "
                         "algorithm (measured at 600 s: one GRPO iteration 789 s, one evaluation 210-240 s)",
                         run=run, budget=Budget("seconds", 1800), eval_every_steps=8, eval_every_iterations=2,
                         max_iterations=100, rollout_chunk=8)


COMPARE_PRESETS = {"smoke": smoke, "default": default}
"""Comparison presets by name."""


def get_compare_preset(name: str) -> ComparePreset:
    if name not in COMPARE_PRESETS:
        raise ValueError(f"--preset: unknown comparison preset '{name}' (available: {', '.join(COMPARE_PRESETS)})")
    return COMPARE_PRESETS[name]()


@dataclass
class CompareConfig:
    """Everything `drift bench compare` needs."""

    env: str
    """Environment spec."""
    model: str
    """Base model spec (every algorithm starts from it)."""
    algos: tuple[str, ...]
    """Algorithms to compare (``drift`` first when present: the others are paired against it)."""
    preset: ComparePreset
    """Sizes."""
    out_dir: Path
    """Results directory (must not hold an earlier comparison's results.json)."""
    budget: Budget | None = None
    """Each algorithm's budget (``None``: the preset's)."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds; results are aggregated over them."""
    env_args: dict[str, object] = field(default_factory=dict)
    """Extra environment arguments (each must be one the environment accepts)."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The in-process engine every algorithm samples and is evaluated with."""

    def __post_init__(self) -> None:
        self.algos = tuple(self.algos)
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.algos:
            raise ValueError("--algos: name at least one algorithm")
        if len(set(self.algos)) != len(self.algos):
            raise ValueError(f"--algos: an algorithm is named twice in {','.join(self.algos)}")
        for name in self.algos:
            algorithm_class(name)  # a ValueError lists the known ones
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("--seeds: give distinct seeds, e.g. 0,1,2")
        if engine_class(self.engine.name).remote:
            raise ValueError(f"--engine {self.engine.name}: the comparison trains and evaluates the engine's own "
                             "weights; use an in-process engine (--engine transformers)")
        if self.budget is None:
            self.budget = self.preset.budget


@dataclass
class AlgorithmRun:
    """One algorithm, one seed."""

    algo: str
    """Algorithm name."""
    seed: int
    """Training seed."""
    curve: list[CurvePoint]
    """Learning curve, starting with the base model at cost 0."""
    final: EvalResult
    """The last curve point's evaluation (its per-problem outcomes pair it with the others)."""
    seconds: float
    """Wall-clock spent (rollouts, training; evaluations excluded)."""
    generated_tokens: int
    """Tokens generated."""
    trained_tokens: int
    """Tokens processed by training (prompts included)."""
    peak_memory_mb: float
    """Peak resident memory of the process while it ran (the whole process: base model included); on CUDA, peak
    allocated GPU memory."""
    samples: int
    """Offline: training samples; online: samples over all iterations."""
    stopped_by_budget: bool
    """Whether the budget ended it (else it finished its epochs or iterations)."""
    note: str = ""
    """Anything that changes how to read it (e.g. no training samples)."""


class BudgetSpent(Exception):
    """Raised from a progress hook to end training once the budget is spent (after the step or iteration under
    way; the weights are those after it)."""


@dataclass
class Collection:
    """The shared offline rollouts of one seed and what they cost."""

    trajectories: list[Trajectory]
    """In group order."""
    seconds: float
    """Wall-clock of the collection."""
    tokens: int
    """Tokens generated."""
    groups: int
    """Groups collected (the preset's, or fewer when the budget stopped the collection)."""


@dataclass
class _Context:
    cfg: CompareConfig
    env_id: str
    train_env: object
    test_env: object
    eval_cfg: EvalConfig
    tokenizer: object
    base_model: object
    base: EvalResult
    reporter: object


def _reporter():
    from drift_algos.pipeline import Reporter

    return Reporter()


def compare(cfg: CompareConfig, reporter=None) -> dict[str, object]:
    """Run the comparison ``cfg`` describes (see the module docstring); the results.json content."""
    from drift_algos.models import load_model, load_tokenizer
    from drift_algos.pipeline import EVAL_SEED_OFFSET
    from drift_envs import resolve_env_id
    from drift_envs.registry import env_factory

    reporter = reporter or _reporter()
    out = Path(cfg.out_dir)
    if (out / "results.json").exists():
        raise FileExistsError(f"--out: {out} already holds a comparison's results.json; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    preset = cfg.preset.run
    env_id = resolve_env_id(cfg.env)
    base_args = {**preset.env_args, "max_turns": preset.max_turns, "max_actions": preset.max_turns, **cfg.env_args}
    given = {name: "--env-arg" for name in cfg.env_args if name != "split"}
    train_env = env_factory(env_id, {**base_args, "split": "train"}, explicit=given)
    test_env = env_factory(env_id, {**base_args, "split": "test"}, explicit=given, warn=False)
    eval_cfg = preset.eval
    if "split" in train_env.not_applied:  # as `drift run`: held-out episodes on reset seeds no rollout uses
        eval_cfg = dataclasses.replace(eval_cfg, seed=eval_cfg.seed + EVAL_SEED_OFFSET)

    reporter.stage("loading the base model")
    tokenizer = load_tokenizer(cfg.model)
    base_model = load_model(cfg.model)
    engine = build_engine(cfg.engine, cfg.model, loaded=(base_model, tokenizer))
    reporter.stage("evaluating the base model")
    (out / "base").mkdir(exist_ok=True)
    with TrajectoryWriter(out / "base" / "eval.jsonl") as writer:
        base = evaluate(engine, test_env, eval_cfg, env_id=env_id, model_name=cfg.model, writer=writer,
                        progress=reporter.progress("eval base"))
    reporter.done("eval base")
    engine.close()
    ctx = _Context(cfg, env_id, train_env, test_env, eval_cfg, tokenizer, base_model, base, reporter)
    reference = _random_elimination(test_env, eval_cfg.num_problems, base.metrics.max_turns)

    runs: list[AlgorithmRun] = []
    for seed in cfg.seeds:
        seed_dir = out / f"seed-{seed}"
        seed_dir.mkdir(exist_ok=True)
        collection: Collection | None = None
        for name in cfg.algos:
            reporter.stage(f"seed {seed}: {name}")
            run_preset = _seeded(preset, seed)
            algorithm = _make_algorithm(name, run_preset)
            model = copy.deepcopy(base_model)
            algo_engine = build_engine(cfg.engine, cfg.model, loaded=(model, tokenizer))
            algo_dir = seed_dir / name
            algo_dir.mkdir(exist_ok=True)
            try:
                with PeakMemory() as memory:
                    if isinstance(algorithm, OfflineAlgorithm):
                        if collection is None:
                            collection = _collect(ctx, algo_engine, run_preset, seed_dir / "rollouts.jsonl")
                        run = _offline(ctx, name, seed, algorithm, collection, model, algo_engine, run_preset,
                                       algo_dir)
                    else:
                        run = _online(ctx, name, seed, algorithm, model, algo_engine, run_preset, algo_dir)
            finally:
                algo_engine.close()
            # The device's peak on CUDA (the model and its activations live there), else the process's resident peak.
            peak = memory.cuda_peak_bytes if memory.cuda_peak_bytes is not None else memory.peak_bytes
            run.peak_memory_mb = peak / 2**20
            episodes = run.final.extra.pop("_episodes", None)
            if episodes:  # (none when the final model is the base: base/eval.jsonl)
                with TrajectoryWriter(algo_dir / "eval_final.jsonl") as writer:
                    for trajectory in episodes:
                        writer.write(trajectory)
            runs.append(run)
            del model, algo_engine
            gc.collect()
            logger.info("seed %d %s: final multi@%d %.3f", seed, name, base.metrics.max_turns,
                        run.final.metrics.multi[-1])
    from drift_algos.comparison_results import plot_curves, results_markdown, summarise

    results = summarise(cfg, base, runs, reference)
    (out / "results.json").write_text(jsonio.dumps(results) + "\n")
    (out / "results.md").write_text(results_markdown(results), encoding="utf-8")
    plot_curves(results, out)
    return results


def _seeded(preset: Preset, seed: int) -> Preset:
    """``preset`` with the training seed set (rollouts, batch order, online sampling); evaluation keeps its own."""
    p = copy.deepcopy(preset)
    p.rollout = dataclasses.replace(p.rollout, seed=seed)
    p.train = dataclasses.replace(p.train, seed=seed, log_every=1)
    return p


def _make_algorithm(name: str, preset: Preset):
    from drift_algos.pipeline import make_algorithm

    return make_algorithm(name, preset)


def _random_elimination(test_env, num_problems: int, max_turns: int) -> list[float] | None:
    """The chance multi@k of a multiple-choice environment's held-out problems (``None`` for other environments)."""
    problems = getattr(test_env().unwrapped, "problems", None)
    if not problems or not all(hasattr(p, "choices") for p in problems):
        return None
    return random_elimination([len(p.choices) for p in problems[:num_problems]], max_turns)


def _evaluate(ctx: _Context, engine, model) -> EvalResult:
    """Greedy held-out evaluation of ``model`` (the engine samples it), its episodes kept for eval_final.jsonl."""
    was_training = model.training
    model.eval()
    episodes: list[Trajectory] = []

    class _Keep:
        def write(self, trajectory: Trajectory) -> None:
            episodes.append(trajectory)

    result = evaluate(engine, ctx.test_env, ctx.eval_cfg, env_id=ctx.env_id, model_name=ctx.cfg.model,
                      writer=_Keep())
    result.extra["_episodes"] = episodes
    model.train(was_training)
    return result


def _point(meter: Meter, trained_tokens: int, step: int, result: EvalResult) -> CurvePoint:
    return CurvePoint(meter.seconds, meter.tokens, trained_tokens, step, list(result.metrics.multi))


def _base_point(ctx: _Context) -> CurvePoint:
    return CurvePoint(0.0, 0, 0, 0, list(ctx.base.metrics.multi))


def _collect(ctx: _Context, engine, preset: Preset, path: Path) -> Collection:
    """The seed's shared offline rollouts from the base model, in chunks, stopped early by the budget."""
    cfg, budget = ctx.cfg, ctx.cfg.budget
    agent = RolloutAgent(engine, ctx.train_env, env_id=ctx.env_id, model_name=cfg.model)
    rollout = dataclasses.replace(preset.rollout, max_new_tokens=preset.rollout.max_new_tokens or
                                  agent.max_reply_tokens)
    problems = agent.choose_problems(rollout)
    limit = budget.amount * (cfg.preset.rollout_share if budget.kind == "seconds" else 1.0)
    chunk = cfg.preset.rollout_chunk
    trajectories: list[Trajectory] = []
    tokens, groups = 0, 0
    progress = ctx.reporter.progress("rollout")
    start = time.perf_counter()
    with TrajectoryWriter(path) as writer:
        for first in range(0, rollout.num_prompts, chunk):
            indices = list(range(first, min(first + chunk, rollout.num_prompts)))
            got, summary = agent.run(rollout, writer=writer, problems=[problems[g] for g in indices], groups=indices)
            trajectories += got
            tokens += summary.generated_tokens
            groups += len(indices)
            if progress is not None:
                progress(groups, rollout.num_prompts, tokens)
            spent = time.perf_counter() - start if budget.kind == "seconds" else tokens
            if spent >= limit:
                break
    ctx.reporter.done("rollout")
    trajectories.sort(key=lambda t: (t.group_index, t.sample_index))
    return Collection(trajectories, time.perf_counter() - start, tokens, groups)


def _last_log_value(path: Path, key: str, *, total: bool = False) -> int:
    """The last line's ``key`` of a JSONL log (``total``: the sum over lines); 0 when there is none."""
    if not path.is_file():
        return 0
    values = [json.loads(line)[key] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not values:
        return 0
    return int(sum(values) if total else values[-1])


def _offline(ctx: _Context, name: str, seed: int, algorithm: OfflineAlgorithm, collection: Collection, model,
             engine, preset: Preset, out: Path) -> AlgorithmRun:
    budget = ctx.cfg.budget
    meter = Meter(collection.seconds, collection.tokens)  # the shared collection, charged in full
    curve = [_base_point(ctx)]
    sample_set = algorithm.samples(collection.trajectories)
    if not sample_set.samples or budget.spent(meter.seconds, meter.tokens) and budget.kind == "seconds":
        note = (f"no training samples from {len(collection.trajectories)} trajectories: the final model is the base"
                if not sample_set.samples else "the rollouts spent the whole budget: the final model is the base")
        return AlgorithmRun(name, seed, curve, dataclasses.replace(ctx.base, extra={}), meter.seconds, meter.tokens,
                            0, 0.0, 0, budget.kind == "seconds", note)
    meter.start()
    trainer = Trainer(model, ctx.tokenizer, algorithm.train_config(preset.train))
    engine.update_weights(trainer.model)
    log_path = out / "train_log.jsonl"
    last: dict[str, EvalResult] = {}
    bar = ctx.reporter.progress("train")
    eval_every = ctx.cfg.preset.eval_every_steps

    def progress(step: int, total: int, loss: float) -> None:
        if bar is not None:
            bar(step, total, loss)
        # Only wall-clock can run out while training: it generates no tokens.
        spent = budget.kind == "seconds" and budget.spent(meter.seconds, meter.tokens)
        if step % eval_every == 0 or step == total or spent:
            with meter.paused():
                last["result"] = _evaluate(ctx, engine, trainer.model)
                curve.append(_point(meter, _last_log_value(log_path, "tokens"), step, last["result"]))
        if spent and step < total:
            raise BudgetSpent(step)

    stopped = False
    try:
        trainer.fit(sample_set.samples, objective=algorithm.objective(trainer.cfg), log_path=log_path,
                    progress=progress)
    except BudgetSpent:
        stopped = True
    meter.stop()
    ctx.reporter.done("train")
    return AlgorithmRun(name, seed, curve, last["result"], meter.seconds, meter.tokens,
                        _last_log_value(log_path, "tokens"), 0.0, len(sample_set.samples), stopped)


def _online(ctx: _Context, name: str, seed: int, algorithm: OnlineAlgorithm, model, engine, preset: Preset,
            out: Path) -> AlgorithmRun:
    budget, cp = ctx.cfg.budget, ctx.cfg.preset
    meter = Meter()
    curve = [_base_point(ctx)]
    meter.start()
    trainer = Trainer(model, ctx.tokenizer, preset.train)
    engine.update_weights(trainer.model)
    agent = RolloutAgent(engine, ctx.train_env, env_id=ctx.env_id, model_name=ctx.cfg.model)
    loop: OnlineConfig = dataclasses.replace(preset.online, iterations=cp.max_iterations, resumable=False)
    log_path = out / "online_log.jsonl"
    last: dict[str, EvalResult] = {}
    bar = ctx.reporter.progress("iterations")

    def progress(iteration: int, iterations: int, generated: int) -> None:
        meter.tokens = int(generated)
        if bar is not None:
            bar(iteration, iterations, generated)
        spent = budget.spent(meter.seconds, meter.tokens)
        if iteration % cp.eval_every_iterations == 0 or iteration == iterations or spent:
            with meter.paused():
                last["result"] = _evaluate(ctx, engine, trainer.model)
                curve.append(_point(meter, _last_log_value(log_path, "trained_tokens", total=True), iteration,
                                    last["result"]))
        if spent and iteration < iterations:
            raise BudgetSpent(iteration)

    stopped = False
    try:
        train_online(algorithm, agent, trainer, engine, preset.rollout, loop, out, progress=progress)
    except BudgetSpent:
        stopped = True
    meter.stop()
    ctx.reporter.done("iterations")
    samples = _last_log_value(log_path, "samples", total=True)
    return AlgorithmRun(name, seed, curve, last["result"], meter.seconds, meter.tokens,
                        _last_log_value(log_path, "trained_tokens", total=True), 0.0, samples, stopped)

"""Throughput of the inference engines, measured side by side in one run (``drift bench throughput``).

Two workloads: the multi-turn rollout of the default preset (``prompts`` problems x ``n`` samples, ``turns`` turns of
the math environment's training split, seeded sampling) and a plain decode of ``decode_batch`` first-turn prompts of
its test split (one sample each, one call). Each engine
(any registered ``--engine`` name) is built through :func:`~drift_algos.engines.build_engine`, from a fresh load, and
runs both; so does the baseline, plain ``model.generate`` at the same micro-batch
(:class:`~drift_algos.engines.transformers_engine.GenerateEngine`). Reported per engine: generated tokens/s, time to
first token, wall-clock including start-up, peak memory, the ratio to the baseline and to this CPU's floor (2 x
parameters FLOPs per generated token over the matmul FLOP/s measured here).

The training part measures tokens/s of full fine-tuning against LoRA, and the speed-up of skipping low-weight
samples, on a real rollout's DRIFT weights (the trajectories given, else the baseline's rollout just run).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from drift_algos.memory import PeakMemory

logger = logging.getLogger(__name__)

BASELINE = "generate"
"""The baseline's name in the report: plain ``model.generate`` (not an ``--engine``)."""


@dataclass
class ThroughputConfig:
    """What ``drift bench throughput`` measures."""

    model: str = "smollm2-135m"
    """Model spec (``--model``)."""
    engines: tuple[str, ...] = ("transformers",)
    """Engines to measure (registered ``--engine`` names), each against the baseline."""
    env: str = "math"
    """Environment of the rollout workload."""
    prompts: int = 64
    """Problems (groups) of the rollout workload (the default preset's 64)."""
    n: int = 8
    """Samples per problem (the default preset's 8)."""
    turns: int = 3
    """Turn limit of the rollout workload (the default preset's 3)."""
    temperature: float = 0.7
    """Sampling temperature (the default preset's 0.7)."""
    max_new_tokens: int | None = None
    """Token limit per turn of the rollout workload (``None``: the environment's, 20 for math)."""
    decode_batch: int = 64
    """Prompts of the plain decode workload (one sample each, all in one call)."""
    decode_tokens: int = 64
    """Token limit of the plain decode workload."""
    batch_size: int = 64
    """Engines' micro-batch (the baseline's too: ratios are at the same batch)."""
    threads: int | None = None
    """CPU threads (``None``: what torch picks)."""
    seed: int = 0
    """Seed of the problems and the sampling."""
    base_urls: tuple[str, ...] = ()
    """Servers of the ``openai`` engine."""
    api_key_env: str | None = None
    """Environment variable with the servers' API key."""
    options: dict[str, object] = field(default_factory=dict)
    """Engine settings (``--engine-arg``)."""
    training: bool = True
    """Also measure training throughput."""
    trajectories: Path | None = None
    """Trajectories JSONL whose DRIFT weights the training part uses (``None``: the baseline's rollout)."""
    train_prompts: int = 4
    """Groups of the trajectories trained on in the training part (the first ones, whole groups)."""

    def __post_init__(self) -> None:
        self.engines = tuple(self.engines)
        self.base_urls = tuple(self.base_urls)
        if not self.engines:
            raise ValueError("engines must name at least one engine")
        for name in ("prompts", "n", "turns", "decode_batch", "decode_tokens", "batch_size", "train_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.trajectories is not None and not Path(self.trajectories).is_file():
            raise FileNotFoundError(f"--trajectories: {self.trajectories} not found")


def matmul_flops(hidden: int, rows: int = 256, min_seconds: float = 1.0) -> float:
    """Measured FLOP/s of this machine's float32 matmul at a model-like shape (``rows x hidden`` by
    ``hidden x 4 hidden``), the best of repeated runs."""
    import torch

    a, w = torch.randn(rows, hidden), torch.randn(hidden, 4 * hidden)
    a @ w  # warm-up
    best, spent = float("inf"), 0.0
    while spent < min_seconds:
        start = time.perf_counter()
        for _ in range(5):
            a @ w
        elapsed = (time.perf_counter() - start) / 5
        best, spent = min(best, elapsed), spent + 5 * elapsed
    return 2 * rows * hidden * 4 * hidden / best


def _conversations(make_env, count: int, offset: int) -> list[list[dict[str, str]]]:
    """First-turn conversations of problems ``offset .. offset + count - 1``."""
    from drift_algos.rollout.agent import RolloutAgent

    agent = RolloutAgent(None, make_env)  # type: ignore[arg-type] - only for its prompt settings
    out = []
    for i in range(count):
        env = make_env()
        options = {"problem_index": (offset + i) % agent.num_problems} if agent.num_problems else None
        observation, _ = env.reset(seed=offset + i, options=options)
        env.close()
        messages = [{"role": "system", "content": agent.system_prompt}] if agent.system_prompt else []
        out.append(messages + [{"role": "user", "content": observation}])
    return out


def measure_engine(name: str, build: Callable[[], object], cfg: ThroughputConfig, make_env,
                   make_held_out) -> tuple[dict, list]:
    """Start-up, time to first token, the rollout and the decode workload of one engine; its report row and the
    rollout's trajectories. The time to first token and the decode workload use held-out problems (``make_held_out``),
    which the rollout never sees, so no engine finds their prompts cached."""
    from drift_algos.engines.base import SamplingParams, derive_seed
    from drift_algos.rollout.agent import RolloutAgent, RolloutConfig

    row: dict = {"engine": name}
    with PeakMemory() as memory:
        start = time.perf_counter()
        engine = build()
        row["startup_s"] = time.perf_counter() - start
        agent = RolloutAgent(engine, make_env, env_id=cfg.env, model_name=cfg.model)
        reply_prefix, stop = agent.reply_prefix, agent.stop
        # Time to first token: one token for decode_batch prompts no other workload uses (nothing cached).
        first = _conversations(make_held_out, cfg.decode_batch, offset=cfg.decode_batch)
        t = time.perf_counter()
        engine.generate(first, SamplingParams(temperature=cfg.temperature, max_new_tokens=1, stop=stop),
                        reply_prefix=reply_prefix, seeds=range(len(first)))
        row["ttft_s"] = time.perf_counter() - t
        rollout_cfg = RolloutConfig(num_prompts=cfg.prompts, n=cfg.n, temperature=cfg.temperature, seed=cfg.seed,
                                    max_new_tokens=cfg.max_new_tokens, record_token_ids=True)
        t = time.perf_counter()
        records, summary = agent.run(rollout_cfg)
        seconds = time.perf_counter() - t
        row["rollout"] = {"tokens": summary.generated_tokens, "replies": summary.replies, "seconds": seconds,
                          "tokens_per_s": summary.generated_tokens / seconds}
        decode = _conversations(make_held_out, cfg.decode_batch, offset=0)
        params = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.decode_tokens)
        t = time.perf_counter()
        out = engine.generate(decode, params, reply_prefix=reply_prefix,
                              seeds=[derive_seed(cfg.seed, i) for i in range(len(decode))])
        seconds = time.perf_counter() - t
        tokens = sum(len(c.token_ids) for group in out for c in group)
        row["decode"] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                         "token_ids": [c.token_ids for group in out for c in group]}
        row["wall_s"] = time.perf_counter() - start
        engine.close()
        del engine, agent
        gc.collect()
    # One process measures every engine in turn: the peak includes what the process already held (start_rss_mib).
    row["peak_rss_mib"] = memory.peak_bytes / 2**20
    row["start_rss_mib"] = memory.start_bytes / 2**20
    return row, records


def _completion_ids(records) -> dict[tuple[int, int], list[list[int]]]:
    return {(r.group_index, r.sample_index): r.turn_completion_ids for r in records}


def measure_training(cfg: ThroughputConfig, trajectories) -> list[dict]:
    """Training tokens/s: full fine-tuning, LoRA, and full with the default preset's skipping of low-weight samples
    (``min_weight``, unsolved groups), on the DRIFT weights of ``trajectories`` (the first ``train_prompts`` groups)."""
    from drift_algos.algorithms.drift import Drift
    from drift_algos.models import load_model, load_tokenizer
    from drift_algos.presets import default
    from drift_algos.training.trainer import Trainer

    preset = default()
    groups = list(dict.fromkeys(t.prompt_id for t in trajectories))[: cfg.train_prompts]
    chosen = [t for t in trajectories if t.prompt_id in set(groups)]
    if not chosen:
        raise ValueError("the training part found no trajectories")
    keep_all = dataclasses.replace(preset.drift, min_weight=0.0, drop_unsolved_groups=False)
    every = Drift(keep_all).samples(chosen)
    skipping = Drift(preset.drift).samples(chosen)
    tokenizer = load_tokenizer(cfg.model)
    train = dataclasses.replace(preset.train, epochs=1)
    rows = []
    for mode, lora, samples in (("full", False, every), ("LoRA", True, every), ("full, skip", False, skipping)):
        row = {"mode": mode, "lora": lora, "samples": len(samples.samples), "trajectories": samples.trajectories,
               "weight_mass_kept": 1.0 - samples.weight_mass_skipped}
        if samples.samples:
            trainer = Trainer(load_model(cfg.model), tokenizer, dataclasses.replace(train, lora=lora))
            result = trainer.fit(samples.samples)
            row.update(tokens=result.tokens, seconds=result.elapsed_s, tokens_per_s=result.tokens_per_s)
            del trainer
            gc.collect()
        else:
            row.update(tokens=0, seconds=0.0, tokens_per_s=float("nan"))
        rows.append(row)
    full = rows[0]["seconds"]
    for row in rows:
        row["speedup_vs_full"] = full / row["seconds"] if row["seconds"] > 0 else float("nan")
    return rows


def run_throughput(cfg: ThroughputConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Measure every engine of ``cfg`` and the baseline; the report (also what ``throughput.json`` holds)."""
    import torch

    from drift_algos.engines import EngineConfig, build_engine, engine_class
    from drift_algos.engines.transformers_engine import GenerateEngine
    from drift_algos.records import read_trajectories
    from drift_envs import resolve_env_id
    from drift_envs.registry import env_factory

    say = progress or (lambda message: logger.info("%s", message))
    for name in cfg.engines:
        engine_class(name).check_config(EngineConfig(name=name, base_urls=cfg.base_urls, api_key_env=cfg.api_key_env,
                                                     options=cfg.options))
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    env_args = {"max_turns": cfg.turns, "max_actions": cfg.turns}
    make_env = env_factory(resolve_env_id(cfg.env), {**env_args, "split": "train"})
    make_held_out = env_factory(resolve_env_id(cfg.env), {**env_args, "split": "test"}, warn=False)
    report: dict = {
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()},
    }
    say(f"baseline: plain model.generate, micro-batch {cfg.batch_size}")
    base_row, base_records = measure_engine(
        BASELINE, lambda: GenerateEngine.from_pretrained(cfg.model, batch_size=cfg.batch_size), cfg, make_env,
        make_held_out)
    rows = [base_row]
    for name in cfg.engines:
        say(f"engine {name}")
        engine_cfg = EngineConfig(name=name, batch_size=cfg.batch_size, threads=cfg.threads, base_urls=cfg.base_urls,
                                  api_key_env=cfg.api_key_env, options=dict(cfg.options))
        row, records = measure_engine(name, lambda engine_cfg=engine_cfg: build_engine(engine_cfg, cfg.model), cfg,
                                      make_env, make_held_out)
        base_ids, ids = _completion_ids(base_records), _completion_ids(records)
        row["rollout"]["same_as_generate"] = sum(ids.get(k) == v for k, v in base_ids.items()) / len(base_ids)
        row["decode"]["same_as_generate"] = sum(
            a == b for a, b in zip(row["decode"]["token_ids"], base_row["decode"]["token_ids"], strict=True)
        ) / len(base_row["decode"]["token_ids"])
        rows.append(row)
    from drift_algos.models import load_model

    model = load_model(cfg.model)
    parameters = sum(p.numel() for p in model.parameters())
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    del model
    gc.collect()
    flops = matmul_flops(int(getattr(config, "hidden_size", 1024)))
    floor = flops / (2 * parameters)
    report.update(parameters=parameters, matmul_flops_per_s=flops, floor_tokens_per_s=floor)
    for row in rows:
        for workload in ("rollout", "decode"):
            measured = row[workload]
            measured["x_generate"] = measured["tokens_per_s"] / base_row[workload]["tokens_per_s"]
            measured["x_floor"] = measured["tokens_per_s"] / floor
    for row in rows:
        del row["decode"]["token_ids"]
    report["engines"] = rows
    if cfg.training:
        say("training")
        trajectories = read_trajectories(cfg.trajectories) if cfg.trajectories is not None else base_records
        report["training"] = measure_training(cfg, trajectories)
        report["training_trajectories"] = str(cfg.trajectories) if cfg.trajectories else "the baseline's rollout"
    return report

"""Peer check against TRL, side by side in one run: drift's weighted SFT against TRL's ``SFTTrainer`` (training
tokens/s) and drift's online GRPO against TRL's ``GRPOTrainer`` on the single-turn math task (seconds per step and
the reward curve), on the same model, data and batch.

    pip install -e '.[bench]'      # trl, only for this benchmark
    python benchmarks/peer_trl.py --model smollm2-135m --out runs/peer_trl

Writes ``peer_trl.json`` and prints the ratios (ours / TRL) as a table. The machine may be shared, so the two
sides are measured interleaved: SFT in rounds whose order alternates (drift then TRL, TRL then drift, ...), each
round on fresh copies of the model; GRPO step by step (each TRL step is followed by one drift iteration, run from a
TRL callback). What each side does, and every difference that could not be removed, is listed under
``differences`` in the JSON. Cost on the 2-core CPU under heavy load (load average 12-18): 33 min measured for
``--sft-prompts 8 --sft-samples 32 --prompts-per-step 4``; the smaller defaults are sized for about 20 min there.

SFT: conversations from a real multi-turn rollout of the math environment (``--trajectories`` from ``drift rollout
--env math``, or sampled here with drift's agent), weighted as DRIFT weighs them. Both sides train on exactly the
same token ids in exactly the same batches: TRL gets drift's tokenisation as a pre-tokenised dataset with a
completion mask, ordered as drift's length-bucketed batches, with its sequential sampler. Same batch size, one
epoch (same optimiser steps), fp32 on CPU (bf16 autocast on CUDA) on both, no gradient checkpointing (TRL turns it
on by default), completion-only loss, constant learning rate without warm-up, AdamW with the same weight decay and
gradient clip, the same thread count.

GRPO: ``--env math`` with one turn; TRL's dataset holds the same prompts (the chat template and the ``<answer>``
reply prefix, rendered by drift's engine) in the order drift's agent draws them, and its reward function steps the
same drift environment (drift_envs' math verification) and returns drift's return. Same group size, prompts per
step, generation length, temperature (top-p 1, no top-k), clip 0.2, no KL (TRL's default ``beta=0``), token-level
loss aggregation over the step (TRL's default ``dapo``, drift's default), one optimiser step per generation batch,
std-scaled group advantages, vLLM off.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import gc
import inspect
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import textwrap
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

MATH_ENV = "drift/MathCorrection-v0"
BENCH_HINT = "pip install -e '.[bench]' (or pip install 'trl==1.16.0')"


@dataclass
class PeerConfig:
    """What the peer check runs (the flags of this script)."""

    model: str = "smollm2-135m"
    """Model spec (drift's ``--model``: the embedded default, a directory, a GGUF file or a Hub id)."""
    out: Path = Path("runs/peer_trl")
    """Folder for ``peer_trl.json`` and the drift side's online log."""
    trajectories: Path | None = None
    """SFT conversations: a trajectories file from ``drift rollout --env math`` (``None``: sample them here)."""
    sft_prompts: int = 4
    """Problems to sample for the SFT conversations (when no file is given)."""
    sft_group: int = 4
    """Trajectories per problem for the SFT conversations (DRIFT weighs within these groups)."""
    sft_turns: int = 3
    """Turn limit of the sampled SFT conversations (the default preset's)."""
    sft_samples: int = 16
    """SFT samples trained on per round (a multiple of ``batch_size``: every batch full, the same on both sides)."""
    batch_size: int = 8
    """SFT samples per optimiser step."""
    max_prompt_tokens: int = 512
    """SFT prompt tokens kept (left truncation, drift's tokenisation, used by both)."""
    max_completion_tokens: int = 64
    """SFT target tokens kept per sample."""
    rounds: int = 2
    """SFT measurement rounds (the order alternates; the ratio is the median over rounds)."""
    grpo_steps: int = 4
    """GRPO optimiser steps per side (the first is warm-up and left out of the seconds per step)."""
    prompts_per_step: int = 2
    """GRPO prompts (groups) per step."""
    group_size: int = 4
    """GRPO completions per prompt (G)."""
    max_new_tokens: int | None = None
    """GRPO generation length (``None``: the math environment's own, 20 tokens)."""
    temperature: float = 0.7
    """Sampling temperature of the SFT rollout and of both GRPO sides."""
    learning_rate: float = 1e-5
    """Learning rate of every side."""
    beta: float = 0.1
    """DRIFT's weight temperature for the SFT samples."""
    gamma: float = 0.9
    """Per-turn discount of the return."""
    threads: int = 1
    """torch CPU threads, for both sides (on a shared 2-core machine one thread is the steadier choice)."""
    seed: int = 0
    """Seed of the rollouts, the prompts and both trainers."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for name in ("sft_prompts", "sft_group", "sft_turns", "sft_samples", "batch_size", "max_prompt_tokens",
                     "max_completion_tokens", "rounds", "grpo_steps", "prompts_per_step", "group_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.sft_samples % self.batch_size:
            raise ValueError(f"sft_samples ({self.sft_samples}) must be a multiple of batch_size ({self.batch_size})")
        if self.grpo_steps < 2:
            raise ValueError(f"grpo_steps must be >= 2 (the first is warm-up), got {self.grpo_steps}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (GRPO compares within a group), got {self.group_size}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


# --------------------------------------------------------------------------------------------- shared settings
def precision() -> str:
    """What both sides train in: bf16 autocast over fp32 weights on CUDA (drift's trainer), fp32 on CPU."""
    import torch

    return "bf16" if torch.cuda.is_available() else "fp32"


def drift_train_config(cfg: PeerConfig, batch_size: int):
    from drift_algos.training.trainer import Schedule, TrainConfig

    return TrainConfig(learning_rate=cfg.learning_rate, epochs=1, batch_size=batch_size, grad_accum=1,
                       warmup_ratio=0.0, schedule=Schedule.CONSTANT, weight_decay=0.1, max_grad_norm=1.0,
                       max_prompt_tokens=cfg.max_prompt_tokens, max_completion_tokens=cfg.max_completion_tokens,
                       seed=cfg.seed)


def trl_common_args(cfg: PeerConfig, workdir: str) -> dict:
    """TrainingArguments both TRL trainers get: drift's optimisation settings, and TRL's defaults that change the
    work (gradient checkpointing, bf16 on CPU) or add to it (checkpoints, logging integrations) turned off."""
    import torch

    return dict(output_dir=workdir, gradient_accumulation_steps=1, learning_rate=cfg.learning_rate,
                lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.1, max_grad_norm=1.0,
                bf16=precision() == "bf16", gradient_checkpointing=False, logging_steps=1, report_to="none",
                save_strategy="no", eval_strategy="no", disable_tqdm=True, seed=cfg.seed, dataloader_num_workers=0,
                dataloader_pin_memory=torch.cuda.is_available())


def quiet(trainer) -> None:
    """No log lines on stdout: with ``disable_tqdm`` transformers prints every log dict (printing is not training)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


# ------------------------------------------------------------------------------------------------------- SFT
def sft_conversations(cfg: PeerConfig, model, tokenizer) -> tuple[list, dict]:
    """DRIFT-weighted samples from a multi-turn math rollout (``cfg.trajectories``, or sampled with drift's agent)."""
    from drift_algos.algorithms.drift import Drift, DriftConfig
    from drift_algos.engines.transformers_engine import TransformersEngine
    from drift_algos.records import read_trajectories
    from drift_algos.rollout.agent import RolloutAgent, RolloutConfig
    from drift_envs.registry import env_factory, resolve_env_id

    if cfg.trajectories is not None:
        trajectories = read_trajectories(cfg.trajectories)
        source = {"trajectories": str(cfg.trajectories)}
    else:
        make_env = env_factory(resolve_env_id("math"), {"max_turns": cfg.sft_turns, "max_actions": cfg.sft_turns,
                                                        "split": "train"})
        agent = RolloutAgent(TransformersEngine(model, tokenizer), make_env, env_id=MATH_ENV, model_name=cfg.model)
        rollout = RolloutConfig(num_prompts=cfg.sft_prompts, n=cfg.sft_group, temperature=cfg.temperature,
                                seed=cfg.seed)
        trajectories, summary = agent.run(rollout)
        # Records stream out as episodes end; in group order, the first samples are whole groups.
        trajectories.sort(key=lambda t: (t.group_index, t.sample_index))
        source = {"sampled": f"drift's agent, --env math, {cfg.sft_prompts} problems x {cfg.sft_group}, "
                             f"{cfg.sft_turns} turns, temperature {cfg.temperature}",
                  "generated_tokens": summary.generated_tokens, "rollout_s": summary.elapsed_s,
                  "success_rate": summary.metrics.overall}
    sample_set = Drift(DriftConfig(gamma=cfg.gamma, beta=cfg.beta)).samples(trajectories)
    usable = len(sample_set.samples) // cfg.batch_size * cfg.batch_size
    if usable == 0:
        raise ValueError(f"only {len(sample_set.samples)} SFT samples, fewer than one batch of {cfg.batch_size}")
    samples = sample_set.samples[: min(usable, cfg.sft_samples)]
    turns = [sum(m["role"] == "assistant" for m in s.messages) for s in samples]
    source.update({"samples": len(samples), "mean_turns": sum(turns) / len(turns),
                   "weights": [round(s.weight, 6) for s in samples]})
    return samples, source


def drift_batch_order(lengths: list[int], cfg: PeerConfig) -> list[int]:
    """The order in which drift's trainer visits the samples in its first epoch (its length-bucketed batches)."""
    from drift_algos.training.trainer import bucketed_batches

    return [i for batch in bucketed_batches(lengths, cfg.batch_size, random.Random(cfg.seed)) for i in batch]


def run_drift_sft(cfg: PeerConfig, model, tokenizer, data: list) -> dict:
    from drift_algos.training.trainer import Trainer

    trainer = Trainer(model, tokenizer, drift_train_config(cfg, cfg.batch_size))
    start = time.perf_counter()
    result = trainer.fit(data)  # weighted NLL (DRIFT's weights on the samples), token mean per sample
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": result.tokens, "target_tokens": result.target_tokens, "steps": result.steps,
            "tokens_per_s": result.tokens / seconds, "step_tokens": [h["tokens"] for h in result.history],
            "losses": [h["loss"] for h in result.history]}


def trl_sft_dataset(data: list, order: list[int]):
    from datasets import Dataset

    rows = [data[i] for i in order]
    return Dataset.from_dict({"input_ids": [s.input_ids for s in rows],
                              "completion_mask": [[int(m) for m in s.loss_mask] for s in rows]})


def run_trl_sft(cfg: PeerConfig, model, tokenizer, dataset, workdir: str) -> dict:
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**trl_common_args(cfg, workdir), per_device_train_batch_size=cfg.batch_size,
                     num_train_epochs=1, completion_only_loss=True, max_length=None, packing=False,
                     # drift's batches, in drift's order (the dataset is laid out that way)
                     train_sampling_strategy="sequential")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    quiet(trainer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    history = [h for h in trainer.state.log_history if "num_tokens" in h]  # one entry per optimiser step
    step_tokens = [int(h["num_tokens"]) for h in history]  # TRL's own count of the (unpadded) tokens it trained on
    return {"seconds": seconds, "tokens": step_tokens[-1],
            "target_tokens": sum(sum(label != -100 for label in row) for row in trainer.train_dataset["labels"]),
            "steps": trainer.state.global_step, "tokens_per_s": step_tokens[-1] / seconds,
            "step_tokens": step_tokens, "losses": [h["loss"] for h in history]}


def trl_own_tokenisation(cfg: PeerConfig, model, tokenizer, samples: list, data: list, workdir: str) -> dict:
    """How TRL would tokenise the same conversations itself (prompt = the conversation before the last assistant
    message, completion = that message): not timed, reported next to drift's tokenisation."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list([{"prompt": s.messages[:-1], "completion": s.messages[-1:]} for s in samples])
    args = SFTConfig(**trl_common_args(cfg, workdir), per_device_train_batch_size=cfg.batch_size, max_length=None)
    prepared = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer).train_dataset
    same = extra = 0
    example = None
    for ours, theirs in zip(data, prepared, strict=True):
        labels = [t for t, m in zip(ours.input_ids, ours.loss_mask, strict=True) if m]
        trl_labels = [t for t in theirs["labels"] if t != -100]
        if theirs["input_ids"] == ours.input_ids and trl_labels == labels:
            same += 1
            continue
        extra += len(theirs["input_ids"]) - len(ours.input_ids)
        if example is None:
            example = {"drift_target": tokenizer.decode(labels), "trl_target": tokenizer.decode(trl_labels)}
    return {"samples": len(data), "identical": same, "extra_tokens": extra, "example": example}


def measure_sft(cfg: PeerConfig, base, tokenizer, console: Console) -> dict:
    from drift_algos.training.samples import tokenize_sample

    samples, source = sft_conversations(cfg, base, tokenizer)
    train_cfg = drift_train_config(cfg, cfg.batch_size)
    data = [tokenize_sample(tokenizer, s, target=train_cfg.loss_target, max_prompt_tokens=cfg.max_prompt_tokens,
                            max_completion_tokens=cfg.max_completion_tokens) for s in samples]
    order = drift_batch_order([len(s) for s in data], cfg)
    dataset = trl_sft_dataset(data, order)
    with tempfile.TemporaryDirectory(prefix="peer-trl-") as workdir:
        own = trl_own_tokenisation(cfg, copy.deepcopy(base), tokenizer, samples, data, workdir)
        # Warm-up of both (first-use costs: allocator, accelerate, TRL's first step), not recorded.
        run_drift_sft(cfg, copy.deepcopy(base), tokenizer, data[: cfg.batch_size])
        run_trl_sft(cfg, copy.deepcopy(base), tokenizer, trl_sft_dataset(data, order[: cfg.batch_size]), workdir)
        rounds = []
        for r in range(cfg.rounds):
            sides = ("drift", "trl") if r % 2 == 0 else ("trl", "drift")
            entry: dict = {"order": list(sides)}
            for side in sides:
                console.print(f"SFT round {r + 1}/{cfg.rounds}: {side}")
                model = copy.deepcopy(base)
                entry[side] = (run_drift_sft(cfg, model, tokenizer, data) if side == "drift"
                               else run_trl_sft(cfg, model, tokenizer, dataset, workdir))
                del model
                gc.collect()
            entry["ratio_tokens_per_s"] = entry["drift"]["tokens_per_s"] / entry["trl"]["tokens_per_s"]
            rounds.append(entry)
    checks = {
        "same_tokens": all(e["drift"]["tokens"] == e["trl"]["tokens"] for e in rounds),
        "same_target_tokens": all(e["drift"]["target_tokens"] == e["trl"]["target_tokens"] for e in rounds),
        "same_steps": all(e["drift"]["steps"] == e["trl"]["steps"] for e in rounds),
        # cumulative tokens after each optimiser step: equal only if every batch held the same samples
        "same_batches": all(e["drift"]["step_tokens"] == e["trl"]["step_tokens"] for e in rounds),
    }
    return {"data": source, "trl_own_tokenisation": own, "rounds": rounds, "checks": checks,
            "ratio_tokens_per_s": statistics.median(e["ratio_tokens_per_s"] for e in rounds),
            "drift_tokens_per_s": statistics.median(e["drift"]["tokens_per_s"] for e in rounds),
            "trl_tokens_per_s": statistics.median(e["trl"]["tokens_per_s"] for e in rounds)}


# ------------------------------------------------------------------------------------------------------ GRPO
def single_turn_return(make_env, problem_index: int, reply: str, gamma: float, lam: float) -> float:
    """drift's return of a one-turn episode of the math environment with ``reply`` (what GRPO's advantages use:
    discounted turn rewards, format penalty, repetition penalty), computed by stepping the environment itself."""
    from drift_algos.returns import discounted_return
    from drift_envs.base import repetition_penalty

    env = make_env()
    env.reset(seed=0, options={"problem_index": problem_index})
    _, _, terminated, truncated, info = env.step(reply)
    assert terminated or truncated, "a one-turn episode ends after its reply"
    stats = info["episode"]
    return discounted_return(stats.turn_rewards, gamma) + stats.format_penalty - repetition_penalty(
        stats.answer_norms, lam)


def measure_grpo(cfg: PeerConfig, base, tokenizer, console: Console) -> dict:
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback

    from drift_algos.algorithms.grpo import GRPO, GRPOConfig
    from drift_algos.engines.transformers_engine import TransformersEngine
    from drift_algos.rollout.agent import RolloutAgent, RolloutConfig
    from drift_algos.training.online import OnlineConfig, train_online
    from drift_algos.training.trainer import Trainer
    from drift_envs.registry import env_factory, resolve_env_id

    make_env = env_factory(resolve_env_id("math"), {"max_turns": 1, "max_actions": 1, "split": "train"})
    grpo_cfg = GRPOConfig(clip=0.2, kl_coef=0.0, scale_std=True, gamma=cfg.gamma)
    batch = cfg.prompts_per_step * cfg.group_size

    # drift: the online loop, one iteration per call (its seed set to the step's), on its own copy of the model.
    trainer = Trainer(copy.deepcopy(base), tokenizer, drift_train_config(cfg, batch))  # one optimiser step per batch
    engine = TransformersEngine(trainer.model, tokenizer, batch_size=batch)
    seen: list = []  # (trajectories, generation seconds) of each drift iteration

    class RecordingAgent(RolloutAgent):
        def run(self, rollout, **kwargs):
            start = time.perf_counter()
            trajectories, summary = super().run(rollout, **kwargs)
            seen.append((trajectories, time.perf_counter() - start))
            return trajectories, summary

    agent = RecordingAgent(engine, make_env, env_id=MATH_ENV, model_name=cfg.model)
    max_new = cfg.max_new_tokens or agent.max_reply_tokens
    rollout = RolloutConfig(num_prompts=cfg.prompts_per_step, n=cfg.group_size, temperature=cfg.temperature,
                            top_p=1.0, max_new_tokens=max_new, seed=cfg.seed)

    def step_rollout(step: int) -> RolloutConfig:
        return dataclasses.replace(rollout, seed=cfg.seed + step - 1)

    # TRL: a dataset of the same prompts, step by step in the order drift's agent draws them (no shuffling).
    probe = make_env()
    rows, step_problems = [], []
    for step in range(1, cfg.grpo_steps + 1):
        indices = agent.choose_problems(step_rollout(step))
        ids = []
        for index in indices:
            observation, info = probe.reset(seed=0, options={"problem_index": index})
            messages = ([{"role": "system", "content": agent.system_prompt}] if agent.system_prompt else []) + [
                {"role": "user", "content": observation}]
            rows.append({"prompt": engine.render(messages, agent.reply_prefix), "problem_index": index,
                         "problem_id": str(info["problem_id"])})
            ids.append(str(info["problem_id"]))
        step_problems.append(ids)

    trl_steps: list[dict] = []
    trl_prompts: list[list[str]] = []
    clock = {"trl_step_start": time.perf_counter()}  # TRL's step time leaves out the drift iteration run between

    def math_reward(prompts, completions, completion_ids, problem_index, problem_id, **_):
        rewards = [single_turn_return(make_env, int(i), agent.reply_prefix + c, cfg.gamma, grpo_cfg.repetition_lambda)
                   for i, c in zip(problem_index, completions, strict=True)]
        # TRL scores right after generating: the time since the step began is its generation time.
        trl_steps.append({"generation_s": time.perf_counter() - clock["trl_step_start"],
                          "reward": sum(rewards) / len(rewards),
                          "completion_tokens": sum(map(len, completion_ids)),
                          "problems": list(dict.fromkeys(problem_id))})
        trl_prompts.append(list(dict.fromkeys(prompts)))
        return rewards

    drift_steps: list[dict] = []

    class Interleave(TrainerCallback):
        """After each TRL step, one drift iteration; TRL's step time excludes it."""

        def on_train_begin(self, args, state, control, **kwargs):
            clock["trl_step_start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            trl_steps[-1]["seconds"] = time.perf_counter() - clock["trl_step_start"]
            step = state.global_step
            console.print(f"GRPO step {step}/{cfg.grpo_steps}: trl {trl_steps[-1]['seconds']:.1f} s, now drift")
            start = time.perf_counter()
            result = train_online(GRPO(grpo_cfg), agent, trainer, engine, step_rollout(step),
                                  OnlineConfig(iterations=1, prompts_per_iteration=cfg.prompts_per_step,
                                               group_size=cfg.group_size, resumable=False),
                                  cfg.out / "drift_grpo")  # one iteration per TRL step: nothing to resume
            entry = result.iterations[0]
            trajectories, generation_s = seen[-1]
            drift_steps.append({"seconds": time.perf_counter() - start, "generation_s": generation_s,
                                "reward": entry["reward"],
                                "completion_tokens": int(entry["generated_tokens"]),
                                "trained_samples": int(entry["samples"]), "flat_groups": int(entry["flat_groups"]),
                                "problems": list(dict.fromkeys(t.prompt_id for t in trajectories))})
            clock["trl_step_start"] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="peer-trl-") as workdir:
        args = trl.GRPOConfig(**trl_common_args(cfg, workdir), per_device_train_batch_size=batch,
                              num_generations=cfg.group_size, max_completion_length=max_new,
                              temperature=cfg.temperature, top_p=1.0, top_k=0, repetition_penalty=1.0, beta=0.0,
                              num_iterations=1, epsilon=0.2, loss_type="dapo", scale_rewards="group",
                              shuffle_dataset=False, max_steps=cfg.grpo_steps, use_vllm=False, log_completions=False,
                              mask_truncated_completions=False)
        trl_trainer = trl.GRPOTrainer(model=copy.deepcopy(base), reward_funcs=[math_reward], args=args,
                                      train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                      callbacks=[Interleave()])
        quiet(trl_trainer)
        trl_trainer.train()

    drift_prompt_ids = [[list(t.turn_prompt_ids[0]) for t in trajectories] for trajectories, _ in seen]
    trl_prompt_ids = [tokenizer(text=prompts)["input_ids"] for prompts in trl_prompts]  # as TRL tokenises text
    checks = {
        "same_problems": [s["problems"] for s in drift_steps] == [s["problems"] for s in trl_steps] == step_problems,
        "same_prompt_ids": all(set(map(tuple, d)) == set(map(tuple, t))
                               for d, t in zip(drift_prompt_ids, trl_prompt_ids, strict=True)),
    }
    steps = [{"step": i + 1, "drift": d, "trl": t} for i, (d, t) in enumerate(zip(drift_steps, trl_steps,
                                                                                  strict=True))]
    def per_step(side: list[dict], key: str) -> float:  # the first step is warm-up
        return statistics.mean(s[key] for s in side[1:])

    drift_s, trl_s = per_step(drift_steps, "seconds"), per_step(trl_steps, "seconds")
    return {"steps": steps, "checks": checks, "max_new_tokens": max_new,
            "drift_seconds_per_step": drift_s, "trl_seconds_per_step": trl_s,
            "ratio_seconds_per_step": drift_s / trl_s,
            "drift_generation_s_per_step": per_step(drift_steps, "generation_s"),
            "trl_generation_s_per_step": per_step(trl_steps, "generation_s"),
            "reward_curve": {"drift": [s["reward"] for s in drift_steps], "trl": [s["reward"] for s in trl_steps]},
            "mean_reward": {"drift": statistics.mean(s["reward"] for s in drift_steps),
                            "trl": statistics.mean(s["reward"] for s in trl_steps)},
            "flat_groups_skipped_by_drift": sum(s["flat_groups"] for s in drift_steps),
            "groups": cfg.grpo_steps * cfg.prompts_per_step}


DIFFERENCES = {
    "sft": [
        "Loss: ours is DRIFT's weighted NLL (per-sample token-mean NLL times the sample's weight, mean over the "
        "step's samples); SFTTrainer has no per-sample weights: unweighted NLL summed over the step's completion "
        "tokens and divided by their count. Same tokens, same forward and backward; the weighting is a few "
        "elementwise operations.",
        "TRL's LM head is its fused, chunked log-prob head (on CPU it scores every position, in chunks of 32,768 "
        "tokens) and it also computes each token's entropy and top-1 accuracy for its logs every step (not "
        "configurable); ours computes the full logits and a cross-entropy in fp32.",
        "Optimiser: TRL's default AdamW is torch's fused implementation (adamw_torch_fused); ours is torch.optim.AdamW "
        "with torch's default implementation. Same update.",
        "Both train on drift's tokenisation (TRL gets it pre-tokenised); how TRL would tokenise the same "
        "conversations itself is under trl_own_tokenisation (not timed).",
    ],
    "grpo": [
        "drift skips groups whose returns are all equal (no advantage, only cost: counted under "
        "flat_groups_skipped_by_drift); TRL trains on them with zero advantages.",
        "drift recomputes the sampling policy's log-probs with an extra forward pass before training; TRL, with one "
        "optimiser step per generation batch and num_iterations=1, uses the detached log-probs of its training "
        "forward instead (one forward pass fewer per step).",
        "drift stops generation at the environment's stop string </answer>; TRL cannot (GenerationConfig's "
        "stop_strings needs the tokenizer passed to generate, which GRPOTrainer does not do), so its completions "
        "run to EOS or the length limit (completion_tokens per step). The reward ignores text after </answer>.",
        "TRL trains on the EOS token that ended a completion; drift's engine drops it from the completion.",
        "Advantage scale: drift divides by the group's population std (+1e-6), TRL by its sample std (+1e-4): a "
        "constant factor sqrt(G/(G-1)) on every advantage, which Adam nearly cancels.",
        "drift's online loop starts AdamW afresh every iteration (so each of its steps is a first Adam step); TRL "
        "keeps the optimiser state across steps. This changes the reward curve, not the cost.",
        "Sampling: drift's engine draws each row with its own seeded generator, TRL uses generate's sampler: the "
        "draws differ, so the reward curves are two samples of the same process, not the same completions. TRL "
        "also computes per-token entropy for its logs every step.",
        "TRL imports vllm when it is installed (vLLM's CPU build is, in drift's venv), but generates with "
        "transformers generate (use_vllm=False), as drift's transformers engine does.",
    ],
}
"""What the two sides do differently, that this benchmark could not remove (see the module docstring for what it
made equal)."""


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("drift-rl", "trl", "torch", "transformers", "accelerate", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def field_docs(cls: type) -> dict[str, str]:
    """A dataclass's field docstrings (the string literal under each field), for ``--help``."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {node.target.id: doc.value.value for node, doc in zip(body, body[1:], strict=False)
            if isinstance(node, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)}


def parse_args(argv: list[str] | None = None) -> PeerConfig:
    parser = argparse.ArgumentParser(description="\n\n".join(__doc__.split("\n\n")[:3]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults, docs = PeerConfig(), field_docs(PeerConfig)
    for f in dataclasses.fields(PeerConfig):
        default = getattr(defaults, f.name)
        kind = {"out": Path, "trajectories": Path, "model": str, "temperature": float, "learning_rate": float,
                "beta": float, "gamma": float}.get(f.name, int)
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default, dest=f.name,
                            help=f"{docs[f.name]} (default: {default})")
    args = parser.parse_args(argv)
    try:
        return PeerConfig(**vars(args))
    except ValueError as err:
        parser.error(str(err))


def table(report: dict) -> Table:
    sft, grpo = report["sft"], report["grpo"]
    t = Table(title=f"peer check against TRL {report['versions']['trl']} ({report['model']}, "
                    f"{report['threads']} thread(s), {report['precision']})")
    for column in ("measure", "ours (drift)", "TRL", "ours / TRL"):
        t.add_column(column, justify="right" if column != "measure" else "left")
    t.add_row("SFT training tokens/s (higher is faster)", f"{sft['drift_tokens_per_s']:.1f}",
              f"{sft['trl_tokens_per_s']:.1f}", f"{sft['ratio_tokens_per_s']:.2f}")
    t.add_row("GRPO seconds per step (lower is faster)", f"{grpo['drift_seconds_per_step']:.1f}",
              f"{grpo['trl_seconds_per_step']:.1f}", f"{grpo['ratio_seconds_per_step']:.2f}")
    t.add_row("  of which generation", f"{grpo['drift_generation_s_per_step']:.1f}",
              f"{grpo['trl_generation_s_per_step']:.1f}",
              f"{grpo['drift_generation_s_per_step'] / grpo['trl_generation_s_per_step']:.2f}")
    rest = (grpo["drift_seconds_per_step"] - grpo["drift_generation_s_per_step"],
            grpo["trl_seconds_per_step"] - grpo["trl_generation_s_per_step"])
    t.add_row("  of which scoring, log-probs, training", f"{rest[0]:.1f}", f"{rest[1]:.1f}", f"{rest[0] / rest[1]:.2f}")
    t.add_row("  groups trained (drift skips all-equal ones)",
              f"{grpo['groups'] - grpo['flat_groups_skipped_by_drift']}/{grpo['groups']}",
              f"{grpo['groups']}/{grpo['groups']}", "")
    curve = grpo["reward_curve"]
    t.add_row("GRPO reward per step", " ".join(f"{r:.2f}" for r in curve["drift"]),
              " ".join(f"{r:.2f}" for r in curve["trl"]), "")
    return t


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*TRL currently supports vLLM.*")
    console = Console()
    try:
        import trl  # noqa: F401 - the optional peer, imported only here
    except ImportError:
        Console(stderr=True).print(f"[red]error:[/] this benchmark needs TRL: {escape(BENCH_HINT)}", soft_wrap=True)
        raise SystemExit(2) from None
    import datasets
    import torch

    from drift_algos.models import load_model, load_tokenizer

    datasets.disable_progress_bars()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model)
    base = load_model(cfg.model).float()
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "model": cfg.model,
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
              "threads": cfg.threads, "precision": precision(), "versions": versions(),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}}
    report["sft"] = measure_sft(cfg, base, tokenizer, console)
    report["grpo"] = measure_grpo(cfg, base, tokenizer, console)
    report["ratios"] = {"sft_tokens_per_s": report["sft"]["ratio_tokens_per_s"],
                        "grpo_seconds_per_step": report["grpo"]["ratio_seconds_per_step"]}
    report["differences"] = DIFFERENCES
    report["elapsed_s"] = time.perf_counter() - start
    path = cfg.out / "peer_trl.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    console.print(table(report))
    checks = {**{f"sft {k}": v for k, v in report["sft"]["checks"].items()},
              **{f"grpo {k}": v for k, v in report["grpo"]["checks"].items()}}
    failed = [k for k, v in checks.items() if not v]
    console.print("checks: " + ("all passed" if not failed else "[red]failed: " + ", ".join(failed) + "[/]"))
    console.print(f"wrote {path} ({report['elapsed_s']:.0f} s)")
    if failed:  # the two sides did not do the same work: the ratios do not compare like with like
        raise SystemExit(1)


if __name__ == "__main__":
    main()

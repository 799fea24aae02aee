"""The shared training core: one loop for every algorithm.

An algorithm hands the trainer :class:`~drift_algos.training.samples.Sample` objects (a
conversation and a weight) or already tokenised samples (online algorithms: the engine's own
token ids with per-token advantages and log-probs), and an
:class:`~drift_algos.training.objectives.Objective`, a loss of the policy's per-token log-probs; the
trainer does tokenisation and loss masks, length-bucketed batches, exact gradient accumulation
(the objective's normaliser spans the optimiser step), AdamW with warm-up and a schedule,
gradient clipping, LoRA (peft) or full fine-tuning, fp32 master weights (bf16 autocast on
CUDA), device placement through accelerate, checkpoints in Hugging Face / PEFT format and a
JSONL metrics log.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import torch

from drift_algos.training.losses import SequenceLoss, token_logprobs
from drift_algos.training.objectives import Objective, WeightedNLL
from drift_algos.training.samples import LossTarget, Sample, TokenizedSample, tokenize_sample

logger = logging.getLogger(__name__)


class Schedule(str, Enum):
    """Learning-rate schedule after warm-up."""

    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"


@dataclass
class TrainConfig:
    """Optimisation settings shared by every algorithm (release values where they fit a CPU)."""

    learning_rate: float = 1e-5
    """Peak learning rate (release: 5e-6 for a 3B model)."""
    epochs: int = 1
    """Passes over the samples."""
    batch_size: int = 8
    """Samples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimiser step."""
    warmup_ratio: float = 0.1
    """Share of optimiser steps spent warming up linearly from 0."""
    schedule: Schedule = Schedule.CONSTANT
    """Schedule after warm-up."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip (0: off)."""
    max_prompt_tokens: int = 8192
    """Prompt tokens kept (left truncation)."""
    max_completion_tokens: int = 512
    """Target tokens kept per assistant message."""
    loss_target: LossTarget = LossTarget.LAST
    """``last`` assistant message (release) or ``all`` assistant messages."""
    normalise_weights: bool = False
    """Weighted-NLL batch loss ``sum w*nll / sum w`` instead of ``mean w*nll``, over each optimiser step's batch."""
    recorded_ids: bool = False
    """Offline: train on the token ids the rollout engine recorded (``turn_prompt_ids``/``turn_completion_ids``,
    last turn) instead of re-rendering the conversation's text (the release's way, the default)."""
    sequence_loss: SequenceLoss = SequenceLoss.TOKEN_MEAN
    """A sample's NLL: mean over its target tokens (the release's; default, it reproduces the published result)
    or their sum (the derivation's objective, ``-log pi(y|x)``)."""
    lora: bool = False
    """Train a LoRA adapter (peft) instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Module names LoRA adapts."""
    seed: int = 0
    """Seed for batch order and initialisation."""
    log_every: int = 1
    """Log metrics every this many optimiser steps."""

    def __post_init__(self) -> None:
        self.schedule = Schedule(self.schedule)
        self.loss_target = LossTarget(self.loss_target)
        self.sequence_loss = SequenceLoss(self.sequence_loss)
        self.lora_targets = tuple(self.lora_targets)
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("epochs", "batch_size", "grad_accum", "max_prompt_tokens", "max_completion_tokens", "lora_r",
                     "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay and max_grad_norm must be >= 0")


@dataclass
class TrainResult:
    """What a training run did."""

    steps: int
    """Optimiser steps."""
    samples: int
    """Samples trained on (per epoch)."""
    tokens: int
    """Tokens processed (prompts included), all epochs."""
    target_tokens: int
    """Tokens that carried the loss, all epochs."""
    elapsed_s: float
    """Wall-clock seconds."""
    final_loss: float
    """Mean loss over the last epoch."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Logged metrics per step."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else float("nan")


def default_objective(cfg: TrainConfig) -> WeightedNLL:
    """Weighted SFT with the config's normalisation and sequence loss (what DRIFT, SFT and RFT train with)."""
    return WeightedNLL(normalise=cfg.normalise_weights, reduction=cfg.sequence_loss)


def bucketed_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of similar length (little padding) in random order.

    Indices are shuffled, cut into chunks of 50 batches, sorted by length within a chunk,
    batched, and the batches shuffled: random enough, yet padding stays small.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(samples: Sequence[TokenizedSample], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(samples), width), dtype=torch.bool)  # (B, T)
    attention = torch.zeros((len(samples), width), dtype=torch.long)  # (B, T)
    for row, s in enumerate(samples):
        ids[row, : len(s)] = torch.tensor(s.input_ids)
        mask[row, : len(s)] = torch.tensor(s.loss_mask)
        attention[row, : len(s)] = 1
    weights = torch.tensor([s.weight for s in samples], dtype=torch.float32)  # (B,)
    batch = {"input_ids": ids, "loss_mask": mask, "attention_mask": attention, "weights": weights}
    for name in ("advantages", "old_logprobs", "ref_logprobs", "old_values", "returns"):
        if getattr(samples[0], name) is not None:
            values = torch.zeros((len(samples), width), dtype=torch.float32)  # (B, T)
            for row, s in enumerate(samples):
                values[row, : len(s)] = torch.tensor(getattr(s, name), dtype=torch.float32)
            batch[name] = values
    return batch


def _lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup = int(round(cfg.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.schedule is Schedule.LINEAR:
            return max(0.0, 1.0 - progress)
        if cfg.schedule is Schedule.COSINE:
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


STALE_WEIGHT_FILES = ("adapter_config.json", "adapter_model.*", "model.safetensors", "model-*-of-*.safetensors",
                      "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")
"""Weight files :meth:`Trainer.save` clears before saving, so a folder never mixes a model and an old adapter."""


class Trainer:
    """Fits a causal LM to weighted samples."""

    def __init__(self, model, tokenizer, cfg: TrainConfig):
        from accelerate import Accelerator

        self.cfg = cfg
        self.tokenizer = tokenizer
        cuda = torch.cuda.is_available()
        # Accumulation is done here (see fit): accelerate's counter does not apply a short last window.
        # bf16 on CUDA is autocast over fp32 weights: updating bf16 weights directly rounds small-lr steps away.
        self.accelerator = Accelerator(mixed_precision="bf16" if cuda else "no")
        torch.manual_seed(cfg.seed)
        if cfg.lora:
            from peft import LoraConfig, get_peft_model

            targets = [t for t in cfg.lora_targets if any(name.endswith(t) for name, _ in model.named_modules())]
            if not targets:
                raise ValueError(f"none of the LoRA target modules {list(cfg.lora_targets)} exist in the model")
            model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                     lora_dropout=cfg.lora_dropout, target_modules=targets,
                                                     task_type="CAUSAL_LM"))
        model = model.to(torch.float32)  # fp32 master weights (on CPU bf16 matmuls are also slow)
        model.train()
        self.model = model

    def tokenize(self, samples: Sequence[Sample | TokenizedSample]) -> list[TokenizedSample]:
        """Token ids and loss masks; already tokenised samples (an engine's own ids) pass through unchanged."""
        cfg = self.cfg
        if cfg.recorded_ids:
            if cfg.loss_target is not LossTarget.LAST:
                raise ValueError("recorded_ids trains the last turn only; use loss_target 'last'")
            missing = next((s for s in samples if isinstance(s, Sample) and s.recorded is None), None)
            if missing is not None:
                raise ValueError(f"sample {missing.prompt_id!r} has no recorded token ids (roll out with "
                                 "record_token_ids) and recorded_ids is set")
            samples = [s.recorded if isinstance(s, Sample) else s for s in samples]
        return [s if isinstance(s, TokenizedSample) else tokenize_sample(
            self.tokenizer, s, target=cfg.loss_target, max_prompt_tokens=cfg.max_prompt_tokens,
            max_completion_tokens=cfg.max_completion_tokens) for s in samples]

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @torch.no_grad()
    def hidden_states(self, samples: Sequence[TokenizedSample], head: Callable[[torch.Tensor], torch.Tensor]
                      ) -> list[list[float]]:
        """``head`` (e.g. a value head) applied to the policy's last hidden states, per token, aligned like
        :meth:`logprobs` (position 0: 0; position t: ``head`` of the state after tokens < t)."""
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        out: list[list[float]] = []
        for start in range(0, len(samples), self.cfg.batch_size):
            part = samples[start : start + self.cfg.batch_size]
            batch = {k: v.to(device) for k, v in collate(part, self.pad_id).items()}
            with self.accelerator.autocast():
                hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    output_hidden_states=True).hidden_states[-1]  # (B, T, H)
            values = head(hidden[:, :-1]).float().cpu()  # (B, T-1)
            out += [[0.0] + values[row, : len(s) - 1].tolist() for row, s in enumerate(part)]
        self.model.train(was_training)
        return out

    @torch.no_grad()
    def logprobs(self, samples: Sequence[TokenizedSample], model=None) -> list[list[float]]:
        """Per-token log-probs of each sample's tokens under ``model`` (default: the policy), aligned with its ids.

        Position 0 has no prediction and gets 0. Online algorithms use it for the sampling policy's and the
        reference policy's log-probs of exactly the tokens trained on.
        """
        model = model if model is not None else self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out: list[list[float]] = []
        for start in range(0, len(samples), self.cfg.batch_size):
            part = samples[start : start + self.cfg.batch_size]
            batch = {k: v.to(device) for k, v in collate(part, self.pad_id).items()}
            with self.accelerator.autocast():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logp = token_logprobs(logits, batch["input_ids"]).cpu()  # (B, T-1)
            out += [[0.0] + logp[row, : len(s) - 1].tolist() for row, s in enumerate(part)]
        model.train(was_training)
        return out

    def fit(
        self,
        samples: Sequence[Sample | TokenizedSample],
        *,
        objective: Objective | None = None,
        log_path: Path | None = None,
        progress: Callable[[int, int, float], None] | None = None,
    ) -> TrainResult:
        """Train on ``samples`` for ``cfg.epochs`` epochs; ``progress(step, total_steps, loss)``.

        ``objective`` defaults to the weighted NLL of the config (:func:`default_objective`).
        """
        cfg = self.cfg
        if not samples:
            raise ValueError("no samples to train on")
        objective = objective or default_objective(cfg)
        data = self.tokenize(samples)
        rng = random.Random(cfg.seed)
        micro_per_epoch = math.ceil(len(data) / cfg.batch_size)
        total_steps = math.ceil(micro_per_epoch / cfg.grad_accum) * cfg.epochs
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        own = objective.parameters()
        if own:
            objective.to(self.accelerator.device)
            groups.append({"params": own, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total_steps))
        self.model.train()  # a second fit (online iterations) starts from the eval mode the first left
        model, optimizer, scheduler = self.accelerator.prepare(self.model, optimizer, scheduler)
        device = self.accelerator.device
        log = log_path.open("a", encoding="utf-8") if log_path is not None else None
        history: list[dict[str, float]] = []
        step = tokens = target_tokens = 0
        start = time.perf_counter()
        epoch_losses: list[float] = []
        try:
            for epoch in range(cfg.epochs):
                epoch_losses = []
                batches = bucketed_batches([len(s) for s in data], cfg.batch_size, rng)
                # Windows of grad_accum micro-batches, one optimiser step each; the epoch's last may be shorter.
                windows = [batches[i : i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
                logged_losses: list[float] = []
                metrics: dict[str, float] = {}
                for w, window in enumerate(windows):
                    micro = [{k: v.to(device) for k, v in collate([data[i] for i in indices], self.pad_id).items()}
                             for indices in window]
                    # The step's normaliser over all its micro-batches: accumulation equals one large batch.
                    denominator = sum(objective.denominator(batch) for batch in micro)
                    step_loss = 0.0
                    for batch in micro:
                        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       output_hidden_states=objective.needs_hidden)
                        if objective.needs_hidden:
                            batch["hidden"] = output.hidden_states[-1]  # (B, T, H)
                        logp = token_logprobs(output.logits, batch["input_ids"])  # (B, T-1)
                        numerator, extra = objective.numerator(logp, batch)
                        # A zero normaliser (every weight 0) means a zero loss, still through the graph.
                        loss = numerator / denominator if float(denominator) > 0 else numerator * 0
                        self.accelerator.backward(loss)
                        step_loss += float(loss.detach())
                        tokens += int(batch["attention_mask"].sum())
                        target_tokens += int(batch["loss_mask"].sum())
                        for key, value in extra.items():
                            metrics[key] = metrics.get(key, 0.0) + value
                    grad_norm = float("nan")
                    if cfg.max_grad_norm > 0:
                        grad_norm = float(self.accelerator.clip_grad_norm_(list(model.parameters()) + own,
                                                                           cfg.max_grad_norm))
                    lr = scheduler.get_last_lr()[0]  # the rate this step uses
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                    step += 1
                    epoch_losses.append(step_loss)
                    logged_losses.append(step_loss)
                    if step % cfg.log_every == 0 or w == len(windows) - 1:
                        elapsed = time.perf_counter() - start
                        entry = {"step": step, "epoch": epoch + (w + 1) / len(windows),
                                 "loss": sum(logged_losses) / len(logged_losses), "lr": lr, "grad_norm": grad_norm,
                                 "tokens": tokens, "tokens_per_s": tokens / elapsed, **metrics}
                        history.append(entry)
                        if log is not None:
                            log.write(json.dumps(entry) + "\n")
                            log.flush()
                        logged_losses, metrics = [], {}
                    if progress is not None:
                        progress(step, total_steps, step_loss)
        finally:
            if log is not None:
                log.close()
        self.model = self.accelerator.unwrap_model(model)
        self.model.eval()
        return TrainResult(steps=step, samples=len(data), tokens=tokens, target_tokens=target_tokens,
                           elapsed_s=time.perf_counter() - start,
                           final_loss=sum(epoch_losses) / max(1, len(epoch_losses)), history=history)

    def save(self, path: Path) -> Path:
        """Save the model (or the LoRA adapter) and the tokenizer in Hugging Face format.

        Weights of an earlier save into the same folder are removed first: a full model saved beside an
        older adapter would otherwise be loaded with that adapter applied on top.
        """
        path.mkdir(parents=True, exist_ok=True)
        for pattern in STALE_WEIGHT_FILES:
            for stale in path.glob(pattern):
                stale.unlink()
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / "drift_train_config.json").write_text(json.dumps(asdict(self.cfg), indent=2, default=str) + "\n")
        return path

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

Resumable: every ``save_every`` optimiser steps, and when Ctrl-C stops it after the step under way, a fit saves
``step-<n>/`` (:mod:`~drift_algos.training.checkpoints`) and ``fit(..., resume=True)`` continues from the newest to the
weights of an uninterrupted fit. Data-parallel under ``accelerate launch`` (DDP; FSDP and DeepSpeed configurations in
examples/accelerate/): see :class:`Trainer`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import torch
from accelerate.utils import DistributedType

from drift_algos import distributed
from drift_algos.training import checkpoints
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
    save_every: int = 0
    """Save a resumable checkpoint (``resume/step-<n>/``) every this many optimiser steps (0: off; Ctrl-C still
    saves one)."""
    keep_last: int = 2
    """Resumable checkpoints kept (the newest)."""

    def __post_init__(self) -> None:
        self.schedule = Schedule(self.schedule)
        self.loss_target = LossTarget(self.loss_target)
        self.sequence_loss = SequenceLoss(self.sequence_loss)
        self.lora_targets = tuple(self.lora_targets)
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("epochs", "batch_size", "grad_accum", "max_prompt_tokens", "max_completion_tokens", "lora_r",
                     "log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay and max_grad_norm must be >= 0")
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0, got {self.save_every}")


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


TRAINER_STATE = "trainer_state.json"
"""The data position and logged metrics inside a ``step-<n>`` checkpoint."""
UNCOMPARED_FIELDS = ("save_every", "keep_last", "log_every", "grad_accum")
"""Settings a resumed fit may change: what is saved and logged, and how a step's micro-batches are split between
accumulation and processes (``micro_batches_per_step`` is compared instead)."""


@dataclass
class TrainState:
    """Where a :meth:`Trainer.fit` stands after an optimiser step; saved in each ``step-<n>`` checkpoint."""

    fingerprint: str
    """Hash of the tokenised samples: a resumed fit must train on the same ones."""
    config: dict[str, object]
    """The :class:`TrainConfig` (JSON form): a resumed fit must use the same one (but :data:`UNCOMPARED_FIELDS`)."""
    micro_batches_per_step: int
    """``grad_accum`` times the number of processes: the global batch of a step, which a resumed fit must keep."""
    step: int = 0
    """Optimiser steps done."""
    epoch: int = 0
    """The epoch under way (or about to start)."""
    window: int = 0
    """The next optimiser step's window within the epoch."""
    batches: list[list[int]] | None = None
    """The epoch's micro-batches as sample indices (``None``: the epoch has not drawn them yet)."""
    batch_rng: list | None = None
    """The batch-order RNG (``random.Random.getstate()``) after drawing ``batches``."""
    tokens: int = 0
    """Tokens processed so far, all processes."""
    target_tokens: int = 0
    """Tokens that carried the loss so far, all processes."""
    elapsed_s: float = 0.0
    """Training seconds before this session (a resumed fit adds its own)."""
    epoch_losses: list[float] = field(default_factory=list)
    """Each optimiser step's loss in the epoch under way."""
    pending_losses: list[float] = field(default_factory=list)
    """Losses of the steps since the last log line."""
    pending_metrics: dict[str, float] = field(default_factory=dict)
    """The objective's metrics summed since the last log line."""
    history: list[dict[str, float]] = field(default_factory=list)
    """The log lines so far."""

    def save(self, folder: Path) -> None:
        (folder / TRAINER_STATE).write_text(json.dumps(asdict(self)) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> TrainState:
        path = folder / TRAINER_STATE
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: missing (not a checkpoint drift train wrote?)") from None
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path}: not a drift trainer state ({err})") from None

    def differences(self, other: TrainState) -> list[str]:
        """Why ``other`` (a fresh fit's state) cannot continue this one: the settings or samples that differ."""
        diff = [name for name in self.config if name not in UNCOMPARED_FIELDS
                and self.config[name] != other.config.get(name)]
        if self.micro_batches_per_step != other.micro_batches_per_step:
            diff.append("micro_batches_per_step")
        return diff + (["samples"] if self.fingerprint != other.fingerprint else [])


def config_json(cfg: TrainConfig) -> dict[str, object]:
    """``cfg`` as JSON values (enums as their values, tuples as lists)."""
    return json.loads(json.dumps(asdict(cfg)))


def data_fingerprint(data: Sequence[TokenizedSample]) -> str:
    """A hash of the tokenised samples: ids, masks, weights and per-token coefficients, in order."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for sample in data:
        digest.update(np.asarray(sample.input_ids, dtype=np.int64).tobytes())
        digest.update(np.asarray(sample.loss_mask, dtype=np.bool_).tobytes())
        digest.update(np.float64(sample.weight).tobytes())
        for name in ("advantages", "old_logprobs", "ref_logprobs", "old_values", "returns"):
            values = getattr(sample, name)
            digest.update(b"-" if values is None else np.asarray(values, dtype=np.float64).tobytes())
    return digest.hexdigest()


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :meth:`Trainer.fit`: the optimiser step under way was finished and, when the fit has a
    checkpoint folder, saved."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"interrupted after optimiser step {step}")
        self.step = step
        """The last optimiser step done."""
        self.checkpoint = checkpoint
        """The resumable checkpoint of that step (``None``: the fit had no checkpoint folder)."""


@contextlib.contextmanager
def ctrl_c_finishes_the_step() -> Iterator[threading.Event]:
    """While the block runs, SIGINT only sets the event (the loop stops after its step); a second one interrupts at
    once. Outside the main thread signals cannot be caught, and the event never gets set."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = signal.getsignal(signal.SIGINT)
    previous = previous if previous is not None else signal.default_int_handler

    def handler(signum, frame) -> None:
        requested.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps up to ``step`` (a run killed after its checkpoint logged more), atomically."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line torn by the kill
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(temporary, path)


@dataclass
class _StepStats:
    loss: float
    tokens: int
    target_tokens: int
    stop: bool
    grad_norm: float
    metrics: dict[str, float]


class Trainer:
    """Fits a causal LM to weighted samples, in one process or data-parallel under ``accelerate launch``.

    Under several processes every process calls :meth:`fit` with the same samples: each optimiser step's
    micro-batches are dealt out among the processes (each sees a disjoint share), the objective's normaliser is
    summed over all of them, and the gradients averaged by DDP are scaled back, so the step equals one process
    accumulating the whole global batch. Only the main process writes logs and checkpoints.
    """

    def __init__(self, model, tokenizer, cfg: TrainConfig):
        from accelerate import Accelerator

        self.cfg = cfg
        self.tokenizer = tokenizer
        cuda = torch.cuda.is_available()
        # Accumulation is done here (see fit): accelerate's counter does not apply a short last window.
        # bf16 on CUDA is autocast over fp32 weights: updating bf16 weights directly rounds small-lr steps away.
        # The schedule steps once per optimiser step, whatever the number of processes (fit counts global steps).
        self.accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda,
                                       step_scheduler_with_optimizer=False)
        self.accelerator.register_save_state_pre_hook(_save_trainable_only)
        self.accelerator.register_load_state_pre_hook(_load_trainable_only)
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
        self._prepared = None  # the model as accelerate wrapped it for the last fit (DDP, FSDP, DeepSpeed)
        self.optimizer_state: dict | None = None
        """AdamW's state after the last fit with ``keep_optimizer`` (its moments), which the next such fit continues
        from: online algorithms fit once per iteration, and a fresh AdamW each time would make every update a first
        Adam step (about lr * sign(gradient))."""

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

    def _by_batch(self, samples: Sequence[TokenizedSample], compute: Callable[[Sequence[TokenizedSample]], list]
                  ) -> list:
        """``compute`` over batches of ``cfg.batch_size`` samples, concatenated; under several processes each
        computes every ``count``-th batch and they exchange results (the batches are the same as with one process,
        so the numbers are too)."""
        size = self.cfg.batch_size
        starts = distributed.mine(range(0, len(samples), size))
        done = distributed.gather([(start, compute(samples[start : start + size])) for start in starts])
        return [value for _, values in sorted(done, key=lambda pair: pair[0]) for value in values]

    @torch.no_grad()
    def hidden_states(self, samples: Sequence[TokenizedSample], head: Callable[[torch.Tensor], torch.Tensor]
                      ) -> list[list[float]]:
        """``head`` (e.g. a value head) applied to the policy's last hidden states, per token, aligned like
        :meth:`logprobs` (position 0: 0; position t: ``head`` of the state after tokens < t)."""
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device

        def compute(part: Sequence[TokenizedSample]) -> list[list[float]]:
            batch = {k: v.to(device) for k, v in collate(part, self.pad_id).items()}
            with self.accelerator.autocast():
                hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    output_hidden_states=True).hidden_states[-1]  # (B, T, H)
            values = head(hidden[:, :-1]).float().cpu()  # (B, T-1)
            return [[0.0] + values[row, : len(s) - 1].tolist() for row, s in enumerate(part)]

        out = self._by_batch(samples, compute)
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

        def compute(part: Sequence[TokenizedSample]) -> list[list[float]]:
            batch = {k: v.to(device) for k, v in collate(part, self.pad_id).items()}
            with self.accelerator.autocast():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logp = token_logprobs(logits, batch["input_ids"]).cpu()  # (B, T-1)
            return [[0.0] + logp[row, : len(s) - 1].tolist() for row, s in enumerate(part)]

        out = self._by_batch(samples, compute)
        model.train(was_training)
        return out

    def fit(
        self,
        samples: Sequence[Sample | TokenizedSample],
        *,
        objective: Objective | None = None,
        log_path: Path | None = None,
        progress: Callable[[int, int, float], None] | None = None,
        checkpoint_dir: Path | None = None,
        resume: bool = False,
        keep_optimizer: bool = False,
    ) -> TrainResult:
        """Train on ``samples`` for ``cfg.epochs`` epochs; ``progress(step, total_steps, loss)``.

        ``objective`` defaults to the weighted NLL of the config (:func:`default_objective`). With
        ``checkpoint_dir`` a resumable checkpoint ``step-<n>/`` goes there every ``cfg.save_every`` steps and when
        Ctrl-C stops the fit (:class:`TrainingInterrupted`, after the step under way); ``resume`` continues from the
        newest one (from the start when there is none), truncating ``log_path`` to its step, and reaches the weights
        of an uninterrupted fit. Without ``resume`` a folder that already holds checkpoints is refused.

        ``keep_optimizer`` continues AdamW from :attr:`optimizer_state` (the previous such fit's; the online loop's
        iterations) and keeps its state for the next; the learning-rate schedule still spans this fit only.
        """
        cfg, acc = self.cfg, self.accelerator
        if not samples:
            raise ValueError("no samples to train on")
        if resume and checkpoint_dir is None:
            raise ValueError("resume needs a checkpoint folder")
        objective = objective or default_objective(cfg)
        data = self.tokenize(samples)
        per_step = cfg.grad_accum * acc.num_processes  # micro-batches per optimiser step, all processes together
        state = TrainState(fingerprint=data_fingerprint(data), config=config_json(cfg), micro_batches_per_step=per_step)
        if len(set(distributed.gather([state.fingerprint]))) > 1:
            raise ValueError("the processes were given different samples; each must pass the same ones")
        found = checkpoints.latest(checkpoint_dir, "step") if checkpoint_dir is not None else None
        if found is not None and not resume:
            raise FileExistsError(f"{checkpoint_dir} holds checkpoints of an earlier run (newest: {found.name}): "
                                  "continue it with --resume, or choose another output folder")
        total_steps = math.ceil(math.ceil(len(data) / cfg.batch_size) / per_step) * cfg.epochs
        model, optimizer, scheduler, own = self._prepare(objective, total_steps,
                                                         self.optimizer_state if keep_optimizer else None)
        rng = random.Random(cfg.seed)
        if found is not None:
            saved = TrainState.load(found)
            diff = saved.differences(state)
            if diff:
                name = diff[0]
                if name == "samples":
                    detail = "they were other samples"
                elif name == "micro_batches_per_step":
                    detail = (f"{saved.micro_batches_per_step} there, {per_step} now: keep grad_accum x processes "
                              "the same")
                else:
                    detail = f"{saved.config[name]!r} there, {state.config[name]!r} now"
                raise ValueError(f"--resume: {found} was trained with another '{name}' ({detail})")
            acc.load_state(str(found))  # weights, optimiser, schedule, RNG states
            state = saved
            if state.batch_rng is not None:
                version, internal, gauss = state.batch_rng
                rng.setstate((version, tuple(internal), gauss))
            logger.info("resuming from %s (step %d of %d)", found, state.step, total_steps)
        if resume and log_path is not None and acc.is_main_process:
            _truncate_log(log_path, state.step)
        log = log_path.open("a", encoding="utf-8") if log_path is not None and acc.is_main_process else None
        lengths = [len(s) for s in data]
        start = time.perf_counter()
        try:
            with ctrl_c_finishes_the_step() as ctrl_c:
                for epoch in range(state.epoch, cfg.epochs):
                    if state.batches is None:
                        state.batches = bucketed_batches(lengths, cfg.batch_size, rng)
                        state.batch_rng = list(rng.getstate())
                        state.window, state.epoch_losses = 0, []
                    # Windows of per_step micro-batches, one optimiser step each; the epoch's last may be shorter.
                    windows = [state.batches[i : i + per_step] for i in range(0, len(state.batches), per_step)]
                    for w in range(state.window, len(windows)):
                        lr = scheduler.get_last_lr()[0]  # the rate this step uses
                        stats = self._step(model, optimizer, scheduler, objective, own, data, windows[w], ctrl_c)
                        state.step, state.window = state.step + 1, w + 1
                        state.tokens += stats.tokens
                        state.target_tokens += stats.target_tokens
                        state.epoch_losses.append(stats.loss)
                        state.pending_losses.append(stats.loss)
                        for key, value in stats.metrics.items():
                            state.pending_metrics[key] = state.pending_metrics.get(key, 0.0) + value
                        if state.step % cfg.log_every == 0 or w == len(windows) - 1:
                            elapsed = state.elapsed_s + time.perf_counter() - start
                            entry = {"step": state.step, "epoch": epoch + (w + 1) / len(windows),
                                     "loss": sum(state.pending_losses) / len(state.pending_losses), "lr": lr,
                                     "grad_norm": stats.grad_norm, "tokens": state.tokens,
                                     "tokens_per_s": state.tokens / elapsed, **state.pending_metrics}
                            state.history.append(entry)
                            if log is not None:
                                log.write(json.dumps(entry) + "\n")
                                log.flush()
                            state.pending_losses, state.pending_metrics = [], {}
                        if progress is not None:
                            progress(state.step, total_steps, stats.loss)
                        saved_at = None
                        if checkpoint_dir is not None and (stats.stop or (cfg.save_every and
                                                                          state.step % cfg.save_every == 0)):
                            state.elapsed_s += time.perf_counter() - start
                            start = time.perf_counter()
                            saved_at = self._save_checkpoint(checkpoint_dir, state)
                        if stats.stop:
                            logger.warning("Ctrl-C: stopped after optimiser step %d%s", state.step,
                                           f", saved {saved_at}" if saved_at else "")
                            raise TrainingInterrupted(state.step, saved_at)
                    state.epoch, state.batches = epoch + 1, None
        finally:
            if log is not None:
                log.close()
        if keep_optimizer:
            # References, not copies (for a full model the moments are twice its size): this optimiser is done.
            self.optimizer_state = optimizer.state_dict()
        self.model = acc.unwrap_model(model)
        self.model.eval()
        return TrainResult(steps=state.step, samples=len(data), tokens=state.tokens,
                           target_tokens=state.target_tokens, elapsed_s=state.elapsed_s + time.perf_counter() - start,
                           final_loss=sum(state.epoch_losses) / max(1, len(state.epoch_losses)),
                           history=state.history)

    def _prepare(self, objective: Objective, total_steps: int, optimizer_state: dict | None = None):
        """The model, AdamW (fresh, or continuing from ``optimizer_state``) and its schedule, prepared by accelerate;
        and the objective's own parameters."""
        cfg, acc = self.cfg, self.accelerator
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name else decay).append(param)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        own = objective.parameters()
        if own:
            objective.to(acc.device)
            groups.append({"params": own, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate)
        if optimizer_state is not None:
            if acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
                raise ValueError("keep_optimizer needs a replicated optimiser (one process or DDP), not FSDP/DeepSpeed")
            optimizer.load_state_dict(optimizer_state)
            for group in optimizer.param_groups:  # the schedule below sets the rate from the config, not the past
                group["lr"] = group["initial_lr"] = cfg.learning_rate
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total_steps))
        acc.free_memory()  # forget an earlier fit's model and optimiser (online iterations fit again and again)
        if acc.distributed_type == DistributedType.DEEPSPEED:
            ds = acc.state.deepspeed_plugin.deepspeed_config
            if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
                ds["train_micro_batch_size_per_gpu"] = cfg.batch_size  # there is no dataloader to read it from
        self.model.train()  # a second fit (online iterations) starts from the eval mode the first left
        model, optimizer, scheduler = acc.prepare(self.model, optimizer, scheduler)
        self._prepared = model
        return model, optimizer, scheduler, own

    def _step(self, model, optimizer, scheduler, objective: Objective, own: list[torch.nn.Parameter],
              data: Sequence[TokenizedSample], window: list[list[int]], ctrl_c: threading.Event) -> _StepStats:
        """One optimiser step on ``window`` (micro-batches of sample indices, all processes' together); the stats
        say whether any process was asked to stop (``ctrl_c``) during it."""
        acc = self.accelerator
        processes = acc.num_processes
        device = acc.device
        share = window[acc.process_index :: processes]
        # Every process runs as many micro-batches (a short share is padded with zero-weight repeats), so that
        # collective backward passes (FSDP, DeepSpeed ZeRO) pair up.
        runs = math.ceil(len(window) / processes)
        micro = [self._batch([data[i] for i in indices]) for indices in share]
        # The step's normaliser over all its micro-batches, in every process: the step equals one large batch.
        denominator = sum((objective.denominator(batch) for batch in micro),
                          torch.zeros((), device=device, dtype=torch.float32))
        if processes > 1:
            denominator = acc.reduce(denominator.float(), "sum")
        positive = float(denominator) > 0
        loss_sum = 0.0
        tokens = target_tokens = 0
        metrics: dict[str, float] = {}
        for k in range(runs):
            real = k < len(micro)
            batch = micro[k] if real else self._batch([data[i] for i in window[0]])
            last = k == runs - 1
            acc.sync_gradients = last  # DeepSpeed: only the last backward ends the accumulation
            with contextlib.nullcontext() if last else acc.no_sync(model):
                output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               output_hidden_states=objective.needs_hidden)
                if objective.needs_hidden:
                    batch["hidden"] = output.hidden_states[-1]  # (B, T, H)
                logp = token_logprobs(output.logits, batch["input_ids"])  # (B, T-1)
                numerator, extra = objective.numerator(logp, batch)
                # DDP averages the processes' gradients, but the loss is their sum: scale by the process count.
                # A zero normaliser (every weight 0) or a padding run means a zero loss, still through the graph.
                loss = numerator * (processes / denominator) if positive and real else numerator * 0
                acc.backward(loss)
            for key, value in extra.items():  # a padding run's keys too: every process reduces the same list
                metrics[key] = metrics.get(key, 0.0) + (value if real else 0.0)
            if real:
                loss_sum += float(numerator.detach()) / float(denominator) if positive else 0.0
                tokens += int(batch["attention_mask"].sum())
                target_tokens += int(batch["loss_mask"].sum())
        if processes > 1:
            for param in own:  # not inside the DDP model: average their gradients here
                if param.grad is not None:
                    param.grad.copy_(acc.reduce(param.grad, "mean"))
        grad_norm = float("nan")
        if self.cfg.max_grad_norm > 0:
            norm = acc.clip_grad_norm_(list(model.parameters()) + own, self.cfg.max_grad_norm)
            grad_norm = float(norm) if norm is not None else float("nan")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        keys = sorted(metrics)
        totals = distributed.total([loss_sum, tokens, target_tokens, float(ctrl_c.is_set())] +
                                   [metrics[k] for k in keys])
        return _StepStats(loss=totals[0], tokens=int(totals[1]), target_tokens=int(totals[2]), stop=totals[3] > 0,
                          grad_norm=grad_norm, metrics=dict(zip(keys, totals[4:], strict=True)))

    def _batch(self, samples: Sequence[TokenizedSample]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.accelerator.device) for k, v in collate(samples, self.pad_id).items()}

    def _save_checkpoint(self, root: Path, state: TrainState) -> Path:
        """A resumable checkpoint of the fit after ``state.step`` steps, at ``root/step-<n>``."""
        final = root / f"step-{state.step}"
        with checkpoints.atomic_folder(final, keep_last=self.cfg.keep_last) as folder:
            self.accelerator.save_state(str(folder))
            if self.accelerator.is_main_process:
                state.save(folder)
        logger.info("saved %s", final)
        return final

    def save(self, path: Path) -> Path:
        """Save the model (or the LoRA adapter) and the tokenizer in Hugging Face format (the main process).

        Weights of an earlier save into the same folder are removed first: a full model saved beside an
        older adapter would otherwise be loaded with that adapter applied on top.
        """
        acc = self.accelerator
        full_state = None
        if self._prepared is not None and acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            full_state = acc.get_state_dict(self._prepared)  # gathers the shards: every process takes part
        if acc.is_main_process:
            path.mkdir(parents=True, exist_ok=True)
            for pattern in STALE_WEIGHT_FILES:
                for stale in path.glob(pattern):
                    stale.unlink()
            self.model.save_pretrained(path, state_dict=full_state)
            self.tokenizer.save_pretrained(path)
            (path / "drift_train_config.json").write_text(json.dumps(asdict(self.cfg), indent=2, default=str) + "\n")
        distributed.barrier()
        return path


def _save_trainable_only(models: list, weights: list[dict], output_dir: str) -> None:
    """accelerate ``save_state`` hook: save only the trainable weights (a LoRA run its adapter, not the base), named
    as in the unwrapped model (so a checkpoint resumes under another number of processes)."""
    from accelerate.utils import extract_model_from_parallel

    for i, model in enumerate(models[: len(weights)]):
        weights[i] = checkpoints.trainable_state(extract_model_from_parallel(model))


def _load_trainable_only(models: list, input_dir: str) -> None:
    """accelerate ``load_state`` hook: load what :func:`_save_trainable_only` saved, checking it fits the model."""
    from accelerate.utils import SAFE_WEIGHTS_NAME, extract_model_from_parallel

    for i, model in enumerate(models):
        name = SAFE_WEIGHTS_NAME if i == 0 else SAFE_WEIGHTS_NAME.replace(".", f"_{i}.")
        folder = Path(input_dir)
        checkpoints.load_trainable_state(extract_model_from_parallel(model), checkpoints.load_tensors(folder / name),
                                         folder)
    models.clear()  # loaded: accelerate must not load them again (it would want every weight)

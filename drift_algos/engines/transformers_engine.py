"""In-process generation with transformers ``generate`` (CPU or CUDA); the default engine."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from drift_algos.engines.base import (
    Completion,
    Engine,
    Message,
    SamplingParams,
    cut_at_stop,
    prefixes_for,
    sample_seeds,
)

logger = logging.getLogger(__name__)


class _LogprobRecorder:
    """A logits processor that records the log-probability of each sampled token.

    transformers runs custom processors before its temperature and top-p warpers, so these
    are the model's own log-probs (temperature 1), as PPO/GRPO need for the old policy;
    they match a separate forward pass to about 1e-5. At step t+1 the token
    sampled at step t is the last input id, so only one (B, V) distribution is kept, not
    the (steps, B, V) that ``output_scores`` would hold.
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None  # (B, V) log-probs of the last step
        self.steps: list[torch.Tensor] = []  # each (B,)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """(B, steps) log-probs, given the tokens sampled at the final step (B,)."""
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, last_tokens[:, None]).squeeze(1))
        return torch.stack(self.steps, dim=1) if self.steps else torch.empty(last_tokens.shape[0], 0)


class _SeededSampler:
    """A logits processor that samples each row with its own generator, then forces that token.

    ``generate`` runs greedy (``do_sample=False``) on the scores this returns (0 for the drawn
    token, -inf elsewhere), so each row's draw depends only on its seed and its own logits,
    never on the batch it shares: the per-conversation seeds of :class:`Engine`. Temperature
    and top-p are applied here as transformers' warpers would (top-p keeps the smallest set of
    tokens whose mass reaches ``top_p``).
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float) -> None:
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1).cpu()  # (B, V)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)  # (B, V)
            before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
            sorted_probs[before >= self.top_p] = 0.0  # the first token always stays (before = 0)
            probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs)
        tokens = torch.stack([torch.multinomial(row, 1, generator=g)[0]
                              for row, g in zip(probs, self.generators, strict=True)])  # (B,)
        forced = torch.full_like(scores, float("-inf"))
        forced[torch.arange(scores.shape[0]), tokens.to(scores.device)] = 0.0
        return forced


def _stop_length(tokenizer, tokens: list[int], stop: Sequence[str]) -> int:
    """The fewest leading ``tokens`` whose text contains a stop string."""
    for k in range(1, len(tokens) + 1):
        if cut_at_stop(tokenizer.decode(tokens[:k], skip_special_tokens=True), stop)[1]:
            return k
    return len(tokens)


class TransformersEngine(Engine):
    """Batched sampling with ``model.generate``.

    Prompts are rendered with the tokenizer's chat template, sorted by length and run in
    micro-batches of ``batch_size`` (left padding), so one call can take thousands of
    conversations.
    """

    name = "transformers"

    def __init__(self, model, tokenizer, *, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, spec: str, *, batch_size: int = 64, dtype: str = "auto", device: str | None = None,
                        adapter: str | None = None) -> TransformersEngine:
        from drift_algos.models import load_model, load_tokenizer

        return cls(load_model(spec, dtype=dtype, device=device, adapter=adapter), load_tokenizer(spec),
                   batch_size=batch_size)

    @classmethod
    def from_config(cls, cfg, model: str, *, adapter: str | None = None,
                    loaded: tuple | None = None) -> TransformersEngine:
        if loaded is not None and adapter is None:
            return cls(*loaded, batch_size=cfg.batch_size)
        return cls.from_pretrained(model, batch_size=cfg.batch_size, adapter=adapter)

    def update_weights(self, model) -> None:
        """Sample from ``model`` (the policy being trained, shared: no copy) from now on."""
        self.model = model

    def render(self, conversation: Sequence[Message], reply_prefix: str = "") -> str:
        """The prompt text: chat template with the generation prompt, then the reply prefix."""
        text = self.tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        return text + reply_prefix

    @torch.no_grad()
    def generate(self, conversations, params: SamplingParams, *, reply_prefix: str | Sequence[str] = "",
                 seeds: Sequence[int] | None = None):
        prefixes = prefixes_for(reply_prefix, len(conversations))
        prompts = [self.render(c, p) for c, p in zip(conversations, prefixes, strict=True)]
        per_sample = sample_seeds(params, seeds, len(conversations))  # [conversation][k]
        # Each conversation repeated n times; sorting by length keeps padding small.
        jobs = [(i, prompt) for i, prompt in enumerate(prompts) for _ in range(params.n)]
        job_seeds = [seed for row in per_sample for seed in row] if per_sample is not None else None
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for _, p in jobs]
        order = sorted(range(len(jobs)), key=lambda j: len(encoded[j]))
        results: list[list[Completion]] = [[] for _ in conversations]
        outputs: dict[int, Completion] = {}
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            batch_seeds = [job_seeds[j] for j in batch] if job_seeds is not None else None
            completions = self._generate_batch([encoded[j] for j in batch], params, batch_seeds)
            for j, completion in zip(batch, completions, strict=True):
                outputs[j] = completion
        for j, (i, _) in enumerate(jobs):
            results[i].append(outputs[j])
        return results

    def _generate_batch(self, ids: list[list[int]], params: SamplingParams,
                        seeds: list[int] | None) -> list[Completion]:
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        width = max(len(x) for x in ids)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)  # (B, T)
        attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)  # (B, T)
        recorder = _LogprobRecorder() if params.logprobs else None
        processors: list = [recorder] if recorder is not None else []
        kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            pad_token_id=pad,
            eos_token_id=self.model.generation_config.eos_token_id or tok.eos_token_id,
            repetition_penalty=1.0,
        )
        if params.greedy or seeds is not None:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if not params.greedy:
                # After the recorder, which must see the model's own log-probs.
                processors.append(_SeededSampler(seeds, params.temperature, params.top_p))
        else:
            # top_k=0: sample from the model's own distribution (shaped only by temperature
            # and top_p), whatever the checkpoint's generation_config says.
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
        if processors:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(processors)
        sequences = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)  # (B, T + S)
        new = sequences[:, width:]  # (B, S)
        logprobs = recorder.finish(new[:, -1]) if recorder is not None and new.shape[1] else None  # (B, S)
        eos_ids = kwargs["eos_token_id"]
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids])
        completions = []
        for row in range(new.shape[0]):
            tokens = new[row].tolist()
            length = len(tokens)
            finish = "length"
            for k, token in enumerate(tokens):
                if token in eos_ids:
                    length, finish = k, "stop"
                    break
            tokens = tokens[:length]
            text = tok.decode(tokens, skip_special_tokens=True)
            text, stopped = cut_at_stop(text, params.stop)
            if stopped:
                finish = "stop"
                # Keep the tokens up to the one that completes the stop string: generate pads a row
                # it stopped early with pad_token_id, which need not be an EOS id.
                tokens = tokens[: _stop_length(tok, tokens, params.stop)]
            completions.append(Completion(
                text=text,
                token_ids=tokens,
                logprobs=logprobs[row, : len(tokens)].tolist() if logprobs is not None else None,
                prompt_tokens=len(ids[row]),
                finish_reason=finish,
                prompt_token_ids=list(ids[row]),
            ))
        return completions

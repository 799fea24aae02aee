"""In-process generation with a transformers model (CPU or CUDA); the default engine.

:class:`TransformersEngine` runs its own decode loop on the model's forward pass, for the multi-turn rollout workload:
a prompt shared by several samples (a group's ``n``) is computed once and its keys and values copied to each sample;
rows that finish (EOS, a stop string) leave the batch, so they stop costing compute; keys and values are written in
place (no copy of the whole cache per token); and the keys and values of each finished sequence are kept (within a
memory budget) so that the conversation's next turn, whose prompt starts with this one's prompt and reply, computes
only its new tokens. :class:`GenerateEngine` is the same interface on plain ``model.generate`` (what this engine did
before): the reference that the benchmark and the equivalence tests compare against.
"""

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
from drift_algos.engines.kv_cache import PrefixCache, RoomyLayer, roomy_cache

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
        tokens = _seeded_draw(scores, self.generators, self.temperature, self.top_p)  # (B,)
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
    """Batched sampling with the model's forward pass in drift's own decode loop (see the module docstring).

    Prompts are rendered with the tokenizer's chat template, sorted by length and run in micro-batches of
    ``batch_size`` samples (left padding); the samples of a micro-batch that share a prompt share its computation.
    ``prefix_cache_mib`` bounds the memory that finished sequences' keys and values keep between calls (0: none).

    Each sample is drawn with its own generator from its own logits, as :class:`Engine` requires; greedy decoding
    takes the arg-max, as ``generate`` does. Models whose attention is not full attention in every layer (sliding
    windows, linear attention) are run with plain ``generate``, as :class:`GenerateEngine` runs them.
    """

    name = "transformers"

    def __init__(self, model, tokenizer, *, batch_size: int = 64, prefix_cache_mib: float = 2048):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prefix_cache_mib < 0:
            raise ValueError(f"prefix_cache_mib must be >= 0, got {prefix_cache_mib}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.prefix_cache = PrefixCache(int(prefix_cache_mib * 2**20))
        self._stamp: tuple | None = None

    @classmethod
    def from_pretrained(cls, spec: str, *, batch_size: int = 64, dtype: str = "auto", device: str | None = None,
                        adapter: str | None = None, **options) -> TransformersEngine:
        from drift_algos.models import load_model, load_tokenizer

        return cls(load_model(spec, dtype=dtype, device=device, adapter=adapter), load_tokenizer(spec),
                   batch_size=batch_size, **options)

    @classmethod
    def check_config(cls, cfg) -> None:
        unknown = set(cfg.options) - {"prefix_cache_mib"}
        if unknown:
            raise ValueError(f"--engine-arg: the {cls.name} engine takes no settings but prefix_cache_mib "
                             f"(got '{sorted(unknown)[0]}')")
        size = cfg.options.get("prefix_cache_mib", 0)
        if not isinstance(size, int | float) or size < 0:
            raise ValueError(f"--engine-arg: prefix_cache_mib must be a number >= 0, got {size!r}")

    @classmethod
    def from_config(cls, cfg, model: str, *, adapter: str | None = None,
                    loaded: tuple | None = None) -> TransformersEngine:
        cls.check_config(cfg)
        options = dict(cfg.options)
        if loaded is not None and adapter is None:
            return cls(*loaded, batch_size=cfg.batch_size, **options)
        return cls.from_pretrained(model, batch_size=cfg.batch_size, adapter=adapter, **options)

    def update_weights(self, model) -> None:
        """Sample from ``model`` (the policy being trained, shared: no copy) from now on."""
        self.model = model
        self.prefix_cache.clear()

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
        self._check_weights()
        # Each conversation repeated n times (adjacent, so a micro-batch shares their prompt); sorting by length keeps
        # padding small. Each prompt is encoded once.
        encoded_prompts = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        jobs = [i for i in range(len(prompts)) for _ in range(params.n)]
        job_seeds = [seed for row in per_sample for seed in row] if per_sample is not None else None
        order = sorted(range(len(jobs)), key=lambda j: len(encoded_prompts[jobs[j]]))
        results: list[list[Completion]] = [[] for _ in conversations]
        outputs: dict[int, Completion] = {}
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            batch_seeds = [job_seeds[j] for j in batch] if job_seeds is not None else None
            completions = self._generate_batch([encoded_prompts[jobs[j]] for j in batch], params, batch_seeds)
            for j, completion in zip(batch, completions, strict=True):
                outputs[j] = completion
        for j, i in enumerate(jobs):
            results[i].append(outputs[j])
        return results

    def _check_weights(self) -> None:
        """Forget cached keys and values when the weights changed in place (training the shared model)."""
        stamp = (id(self.model), tuple(p._version for p in self.model.parameters()))
        if stamp != self._stamp:
            self.prefix_cache.clear()
            self._stamp = stamp

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos])

    def _own_loop(self) -> bool:
        config = self.model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        if getattr(config, "is_encoder_decoder", False):
            return False
        if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
            return False
        return not (getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None))

    def _kv_shape(self) -> tuple[int, int, int]:
        """(layers, key/value heads, head size) of the model's attention."""
        config = self.model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads, head_dim

    def _generate_batch(self, ids: list[list[int]], params: SamplingParams,
                        seeds: list[int] | None) -> list[Completion]:
        if not self._own_loop():
            return _generate_plain(self, ids, params, seeds)
        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        eos = self._eos_ids()
        unique: dict[tuple[int, ...], int] = {}
        row_prompt = [unique.setdefault(tuple(x), len(unique)) for x in ids]
        logits, layers, mask = self._prefill([list(p) for p in unique], device)  # (U, V), (U, H, W, D), (U, W)
        rows = len(ids)
        index = torch.tensor(row_prompt, device=device)
        room = params.max_new_tokens - 1
        for layer in layers:  # each sample gets a copy of its prompt's keys and values
            layer.select(index, 0, room)
        mask = torch.cat([mask[index], mask.new_ones(rows, room)], dim=1)  # (R, W + room)
        logits = logits[index]  # (R, V)
        positions = torch.tensor([len(x) for x in ids], device=device)  # (R,) position of the next token
        cache = roomy_cache(layers)
        generators = ([torch.Generator().manual_seed(s) for s in seeds]
                      if seeds is not None and not params.greedy else None)
        tokens_out: list[list[int]] = [[] for _ in ids]
        logprobs_out: list[list[float]] = [[] for _ in ids]
        finish = ["length"] * rows
        fed = [0] * rows  # generated tokens fed back to the model
        live = list(range(rows))  # the job in each batch row
        for _ in range(params.max_new_tokens):
            chosen = _choose(logits, params, [generators[j] for j in live] if generators is not None else None)
            picked = (torch.log_softmax(logits, dim=-1).gather(1, chosen[:, None])[:, 0].tolist()
                      if params.logprobs else None)
            done = []
            for b, (j, token) in enumerate(zip(live, chosen.tolist(), strict=True)):
                if token in eos:
                    finish[j] = "stop"
                    done.append(b)
                    continue
                tokens_out[j].append(token)
                if picked is not None:
                    logprobs_out[j].append(picked[b])
                if params.stop and cut_at_stop(tok.decode(tokens_out[j], skip_special_tokens=True), params.stop)[1]:
                    finish[j] = "stop"
                    done.append(b)
                elif len(tokens_out[j]) == params.max_new_tokens:
                    done.append(b)
            if len(done) == len(live):
                self._remember(layers, mask, range(len(live)), live, ids, tokens_out, fed)
                break
            if done:  # finished rows leave the batch
                self._remember(layers, mask, done, live, ids, tokens_out, fed)
                keep = [b for b in range(len(live)) if b not in set(done)]
                keep_index = torch.tensor(keep, device=device)
                length = layers[0].length
                first = int(mask[keep_index, :length].any(dim=0).nonzero()[0])  # leading columns only padding used
                for layer in layers:
                    layer.select(keep_index, first, layer.key_buffer.shape[2] - layer.length)
                mask, positions, chosen = mask[keep_index, first:], positions[keep_index], chosen[keep_index]
                live = [live[b] for b in keep]
            for j in live:
                fed[j] += 1
            length = layers[0].length
            out = model(input_ids=chosen[:, None], attention_mask=mask[:, : length + 1],
                        position_ids=positions[:, None], past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1].float()  # (B, V)
            positions = positions + 1
        completions = []
        for j, tokens in enumerate(tokens_out):
            text, _ = cut_at_stop(tok.decode(tokens, skip_special_tokens=True), params.stop)
            completions.append(Completion(
                text=text, token_ids=tokens, logprobs=logprobs_out[j] if params.logprobs else None,
                prompt_tokens=len(ids[j]), finish_reason=finish[j], prompt_token_ids=list(ids[j]),
            ))
        return completions

    def _prefill(self, prompts: list[list[int]], device) -> tuple[torch.Tensor, list[RoomyLayer], torch.Tensor]:
        """Next-token logits ``(U, V)``, keys and values ``(U, H, W, D)`` per layer and attention mask ``(U, W)`` of
        the distinct ``prompts``.

        A prompt whose leading tokens the prefix cache holds computes only the rest: row u is laid out as padding,
        its cached part (ending at column C, the longest cached part), padding, then its new tokens (ending at W).
        """
        found = [self.prefix_cache.lookup(p, limit=len(p) - 1) for p in prompts]
        cached = max(c for _, c in found)
        new = max(len(p) - c for p, (_, c) in zip(prompts, found, strict=True))
        width, count = cached + new, len(prompts)
        num_layers, heads, head_dim = self._kv_shape()
        dtype = next(self.model.parameters()).dtype
        buffers = [(torch.zeros(count, heads, width, head_dim, dtype=dtype, device=device),
                    torch.zeros(count, heads, width, head_dim, dtype=dtype, device=device)) for _ in range(num_layers)]
        mask = torch.zeros(count, width, dtype=torch.long, device=device)
        input_ids = torch.full((count, new), self.tokenizer.pad_token_id or 0, dtype=torch.long, device=device)
        position_ids = torch.zeros(count, new, dtype=torch.long, device=device)
        for u, (prompt, (entry, c)) in enumerate(zip(prompts, found, strict=True)):
            if entry is not None:
                for (keys, values), (k, v) in zip(buffers, entry.kv, strict=True):
                    keys[u, :, cached - c : cached] = k[:, :c]
                    values[u, :, cached - c : cached] = v[:, :c]
                mask[u, cached - c : cached] = 1
            rest = prompt[c:]
            mask[u, width - len(rest) :] = 1
            input_ids[u, new - len(rest) :] = torch.tensor(rest, device=device)
            position_ids[u, new - len(rest) :] = torch.arange(c, len(prompt), device=device)
        layers = [RoomyLayer(keys, values, cached) for keys, values in buffers]
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                         past_key_values=roomy_cache(layers), use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float(), layers, mask

    def _remember(self, layers: list[RoomyLayer], mask: torch.Tensor, batch_rows, live: list[int],
                  ids: list[list[int]], tokens_out: list[list[int]], fed: list[int]) -> None:
        """Keep the keys and values of the finished rows' sequences (prompt and the generated tokens fed back)."""
        if self.prefix_cache.max_bytes == 0:
            return
        length = layers[0].length
        for b in batch_rows:
            j = live[b]
            sequence = list(ids[j]) + tokens_out[j][: fed[j]]
            columns = mask[b, :length].nonzero()[: len(sequence), 0]
            kv = [(layer.keys[b][:, columns], layer.values[b][:, columns]) for layer in layers]
            self.prefix_cache.insert(sequence, kv)


class GenerateEngine(TransformersEngine):
    """The transformers engine on plain ``model.generate`` (micro-batches, left padding, no sharing, no cache).

    What :class:`TransformersEngine` did before its own decode loop: the baseline of ``drift bench throughput`` and
    the reference of the equivalence tests. Not registered as an ``--engine``.
    """

    name = "transformers-generate"

    def _generate_batch(self, ids: list[list[int]], params: SamplingParams,
                        seeds: list[int] | None) -> list[Completion]:
        return _generate_plain(self, ids, params, seeds)


def _choose(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator] | None) -> torch.Tensor:
    """The next token of each row ``(B,)`` from its logits ``(B, V)``: arg-max when greedy, else a draw with the
    row's own generator (or torch's global one when unseeded), shaped by temperature and top-p."""
    if params.greedy:
        return logits.argmax(dim=-1)
    if generators is not None:
        return _seeded_draw(logits, generators, params.temperature, params.top_p).to(logits.device)
    return torch.multinomial(_shaped_probs(logits, params.temperature, params.top_p), 1)[:, 0]


def _shaped_probs(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Softmax at ``temperature``, then top-p (the smallest set of tokens whose mass reaches ``top_p``) ``(B, V)``."""
    return _top_p(torch.softmax(scores.float() / temperature, dim=-1), top_p)


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """``probs`` ``(B, V)`` restricted to each row's smallest set of tokens whose mass reaches ``top_p``."""
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # (B, V)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more likely tokens
        sorted_probs[before >= top_p] = 0.0  # the first token always stays (before = 0)
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_probs)
    return probs


def _seeded_draw(scores: torch.Tensor, generators: list[torch.Generator], temperature: float,
                 top_p: float) -> torch.Tensor:
    """One token per row ``(B,)``, row b drawn with ``generators[b]``: depends on that row's scores only."""
    probs = _top_p(torch.softmax(scores.float() / temperature, dim=-1).cpu(), top_p)  # (B, V)
    return torch.stack([torch.multinomial(row, 1, generator=g)[0]
                        for row, g in zip(probs, generators, strict=True)])  # (B,)


def _generate_plain(engine: TransformersEngine, ids: list[list[int]], params: SamplingParams,
                    seeds: list[int] | None) -> list[Completion]:
    """One micro-batch with ``model.generate`` (left padding; stop strings through its stopping criteria)."""
    tok = engine.tokenizer
    device = next(engine.model.parameters()).device
    width = max(len(x) for x in ids)
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)  # (B, T)
    attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)  # (B, T)
    recorder = _LogprobRecorder() if params.logprobs else None
    processors: list = [recorder] if recorder is not None else []
    kwargs = dict(
        max_new_tokens=params.max_new_tokens,
        pad_token_id=pad,
        eos_token_id=engine.model.generation_config.eos_token_id or tok.eos_token_id,
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
    sequences = engine.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)  # (B, T + S)
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

"""The inference-engine interface: chat conversations in, sampled completions out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Message = dict[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample completions."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0: off)."""
    max_new_tokens: int = 512
    """Token limit per completion."""
    n: int = 1
    """Completions per conversation."""
    seed: int | None = None
    """Seed for a call without per-conversation ``seeds``: conversation i is sampled with
    ``derive_seed(seed, i)`` (``None`` and no ``seeds``: not reseeded)."""
    stop: tuple[str, ...] = ()
    """Stop strings: generation of a completion ends after the first one (kept in the text)."""
    logprobs: bool = False
    """Return the sampled tokens' log-probabilities (online algorithms need them; on a CPU the
    transformers engine pays up to 13x for them when stop strings are set)."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    """One sampled completion."""

    text: str
    """Generated text (without the reply prefix), cut after a stop string."""
    token_ids: list[int]
    """Generated token ids."""
    logprobs: list[float] | None
    """Log-probability of each generated token under the model (before temperature and
    top-p), or ``None`` where the engine cannot give it cheaply."""
    prompt_tokens: int
    """Tokens in the rendered prompt."""
    finish_reason: str
    """``stop`` (EOS or a stop string) or ``length`` (hit ``max_new_tokens``)."""
    prompt_token_ids: list[int] | None = None
    """The prompt token ids the model was fed (chat template and reply prefix), where the engine knows them:
    online training scores exactly these and ``token_ids``, not a re-encoding of the text."""


class Engine(ABC):
    """Generates completions for chat conversations.

    ``reply_prefix`` primes the assistant's reply: it is appended after the chat template's
    generation prompt and the completion continues it (the DRIFT release primes with
    ``<answer>`` or ``<think>``). One prefix for all conversations, or one per conversation.

    ``seeds`` gives one seed per conversation: completion k of conversation i is sampled with
    ``derive_seed(seeds[i], k)`` and must not depend on the other conversations of the call (batch
    size, order, padding). That is what makes a sharded, resumed or differently batched rollout
    sample the same trajectories as one uninterrupted run.
    """

    name: str = "engine"
    remote: bool = False
    """Generates on servers drift does not run: their weights are fixed (no :meth:`update_weights`, no adapters),
    so ``drift run`` evaluates base and trained models on an in-process engine instead."""

    @classmethod
    def from_config(cls, cfg, model: str, *, adapter: str | None = None, loaded: tuple | None = None) -> Engine:
        """Build the engine from an :class:`~drift_algos.engines.EngineConfig` for ``model`` (a ``--model``
        spec), with a PEFT ``adapter`` on top; ``loaded`` is ``(model, tokenizer)`` already in memory."""
        raise NotImplementedError(f"the {cls.__name__} engine cannot be built from a config")

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse settings of an :class:`~drift_algos.engines.EngineConfig` this engine cannot use (a one-line
        :class:`ValueError` naming the flag), before anything loads."""
        if cfg.options:
            raise ValueError(f"--engine-arg: the {cls.name} engine takes no settings (got '{next(iter(cfg.options))}')")

    @abstractmethod
    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        params: SamplingParams,
        *,
        reply_prefix: str | Sequence[str] = "",
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions for each conversation, in input order."""

    def update_weights(self, model) -> None:
        """Load the policy's current weights (``model``, a transformers model) before the next samples.

        Online algorithms call it after each iteration; an engine that cannot take new weights refuses.
        """
        raise NotImplementedError(f"the {type(self).__name__} engine cannot load new weights; online training "
                                  "needs an engine that can (e.g. transformers)")

    def close(self) -> None:  # noqa: B027 - optional hook; most engines hold nothing to release
        """Release resources (servers, GPU memory)."""


class EngineUnavailable(LookupError):
    """An engine's optional package is missing; the message names the command that installs it."""


class GenerationFailed(RuntimeError):
    """A generate call could not be completed: a request failed for good (after the engine's own retries).

    The call returns nothing, so no caller sees part of a batch; the rollout agent stops with
    :class:`~drift_algos.rollout.agent.RolloutFailed` and a resumed collection runs the unfinished groups again.
    """

    def __init__(self, message: str, *, failed: int, total: int):
        super().__init__(message)
        self.failed = failed
        """Requests that failed for good."""
        self.total = total
        """Requests the call needed."""


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers, the same on every machine and run.

    Nearby inputs (seed 0 group 1, seed 1 group 0) give unrelated seeds, unlike ``a * K + b``.
    """
    state = np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


def sample_seeds(params: SamplingParams, seeds: Sequence[int] | None, count: int) -> list[list[int]] | None:
    """The seed of each of ``params.n`` completions of ``count`` conversations, or ``None`` (unseeded)."""
    if seeds is None:
        if params.seed is None:
            return None
        seeds = [derive_seed(params.seed, i) for i in range(count)]
    seeds = list(seeds)
    if len(seeds) != count:
        raise ValueError(f"got {len(seeds)} seeds for {count} conversations")
    return [[derive_seed(seed, k) for k in range(params.n)] for seed in seeds]


def prefixes_for(reply_prefix: str | Sequence[str], count: int) -> list[str]:
    """One prefix per conversation."""
    if isinstance(reply_prefix, str):
        return [reply_prefix] * count
    prefixes = list(reply_prefix)
    if len(prefixes) != count:
        raise ValueError(f"got {len(prefixes)} reply prefixes for {count} conversations")
    return prefixes


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to and including the earliest stop string, and whether one was found."""
    best = None
    for s in stop:
        index = text.find(s)
        if index >= 0 and (best is None or index + len(s) < best):
            best = index + len(s)
    return (text[:best], True) if best is not None else (text, False)

"""Shared fixtures: a tiny real model built offline, an isolated drift cache, and a scripted engine.

Tests never reach the network: Hugging Face libraries are put offline before anything imports them,
and every model is a tiny random one written to a temporary directory.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

# Offline before transformers / datasets / huggingface_hub are imported: they read these at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# What `drift` sets for itself before it imports transformers: no progress bars or warnings on stderr.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# The tiny test models (head size 16) are ones vLLM's CPU attention cannot run, so commands without --engine use the
# transformers engine here, in this process and in the drift subprocesses tests start; the vLLM tests name theirs.
os.environ["DRIFT_ENGINE"] = "transformers"
# A test run started in the background (`nohup make test &`) inherits SIGINT ignored, and so would every drift
# subprocess it starts: the Ctrl-C tests need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# `tests/` has no __init__.py; put it on the path so test modules can `from tiny import ...` whatever
# pytest's import mode.
sys.path.insert(0, str(Path(__file__).parent))

from tiny import build_model_dir  # noqa: E402

from drift_algos.engines.base import Completion, Engine, Message, SamplingParams, prefixes_for  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def drift_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point drift's cache (GGUF conversions) at a temporary directory for the whole session."""
    path = tmp_path_factory.mktemp("drift-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("DRIFT_CACHE_DIR", str(path))
    yield path
    patch.undo()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with a small BPE tokenizer and a chat template, saved once per session.

    Tests that train must load their own copy (``from_pretrained``) and never write into this directory.
    """
    import torch

    # One thread: a model this small spends its time in thread hand-offs, not arithmetic; with two threads
    # on a busy 2-core machine each generate step took 20 ms instead of 1 ms.
    torch.set_num_threads(1)
    return build_model_dir(tmp_path_factory.mktemp("tiny-model") / "model")


Reply = Callable[[Sequence[Message], SamplingParams], str]
"""Decides a scripted engine's completion text from the conversation so far."""


class ScriptedEngine(Engine):
    """An engine whose completions come from a function of the conversation (no model).

    Its tokenizer is character-level: a text's token ids are its characters' code points (``decode`` is
    ``"".join(map(chr, ids))``), for the completion and for the prompt it was fed (each message rendered as
    ``role: content`` lines, then the reply prefix), so recorded ids can be checked against the text they encode
    and token counts stay exact. Each log-prob (when asked for) is -0.5. Every call is kept in :attr:`calls`.
    """

    name = "scripted"

    def __init__(self, reply: Reply):
        self.reply = reply
        self.calls: list[tuple[list[list[Message]], SamplingParams, list[str]]] = []
        self.seeds: list[list[int] | None] = []
        """The per-conversation seeds of each call."""

    def generate(self, conversations, params: SamplingParams, *, reply_prefix: str | Sequence[str] = "",
                 seeds: Sequence[int] | None = None):
        prefixes = prefixes_for(reply_prefix, len(conversations))
        self.calls.append(([list(c) for c in conversations], params, prefixes))
        self.seeds.append(list(seeds) if seeds is not None else None)
        out = []
        for conversation, prefix in zip(conversations, prefixes, strict=True):
            text = self.reply(conversation, params)
            logprobs = [-0.5] * len(text) if params.logprobs else None
            prompt = self.encode("".join(f"{m['role']}: {m['content']}\n" for m in conversation) + prefix)
            out.append([Completion(text=text, token_ids=self.encode(text), logprobs=logprobs,
                                   prompt_tokens=sum(len(m["content"]) for m in conversation), finish_reason="stop",
                                   prompt_token_ids=prompt)
                        for _ in range(params.n)])
        return out

    @staticmethod
    def encode(text: str) -> list[int]:
        return [ord(c) for c in text]

    @staticmethod
    def decode(ids: Sequence[int]) -> str:
        return "".join(map(chr, ids))


@pytest.fixture()
def scripted_engine() -> type[ScriptedEngine]:
    """The :class:`ScriptedEngine` class (build one with a reply function)."""
    return ScriptedEngine

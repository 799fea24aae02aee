"""Tokenisation with loss masks, the losses, and the trainer on the tiny model (weighted SFT, LoRA, checkpoints)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from drift_algos.algorithms import SFT, Drift, DriftConfig
from drift_algos.models import load_model, load_tokenizer
from drift_algos.records import Trajectory
from drift_algos.training.losses import sequence_nll, weighted_nll_loss
from drift_algos.training.samples import LossTarget, Sample, tokenize_sample
from drift_algos.training.trainer import Schedule, TrainConfig, Trainer

SYSTEM = {"role": "system", "content": "You are solving Math problems."}
USER = {"role": "user", "content": "What is 37 + 48?"}
CONVERSATION = [SYSTEM, USER, {"role": "assistant", "content": "<answer>13</answer>"},
                {"role": "user", "content": "Incorrect. Please think again."},
                {"role": "assistant", "content": "<answer>85</answer>"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir))


def fresh_model(tiny_model_dir: Path):
    """A private copy of the tiny model (training changes it in place)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def render(tokenizer, messages) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def response_logp(model, tokenizer, messages) -> float:
    """log pi(last assistant message + end of turn | conversation before it)."""
    t = tokenize_sample(tokenizer, Sample(messages))
    ids, mask = torch.tensor([t.input_ids]), torch.tensor([t.loss_mask])
    with torch.no_grad():
        nll = sequence_nll(model(input_ids=ids).logits, ids, mask)
    return -float(nll) * sum(t.loss_mask)


def logits_of(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([ids_of(tokenizer, render(tokenizer, CONVERSATION[:4]))])
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


# -- tokenize_sample -----------------------------------------------------------------------------------------


def test_last_target_masks_exactly_the_last_reply(tokenizer) -> None:
    t = tokenize_sample(tokenizer, Sample(CONVERSATION, weight=0.25), target=LossTarget.LAST)
    prompt = ids_of(tokenizer, render(tokenizer, CONVERSATION[:4]))
    target = ids_of(tokenizer, "<answer>85</answer>") + [tokenizer.eos_token_id]
    assert t.input_ids == prompt + target
    assert t.loss_mask == [False] * len(prompt) + [True] * len(target)
    assert tokenizer.decode([i for i, m in zip(t.input_ids, t.loss_mask, strict=True) if m]) == (
        "<answer>85</answer><|im_end|>")
    assert t.weight == 0.25 and len(t) == len(prompt) + len(target)


def test_all_target_masks_every_reply(tokenizer) -> None:
    t = tokenize_sample(tokenizer, Sample(CONVERSATION), target="all")
    # The whole conversation, rendered as the template does, each reply closed by the end-of-turn token.
    assert tokenizer.decode(t.input_ids) == render(tokenizer, CONVERSATION[:4]) + "<answer>85</answer><|im_end|>"
    runs, current = [], []
    for token, masked in zip(t.input_ids, t.loss_mask, strict=True):
        if masked:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs.append(current)
    eos = tokenizer.eos_token_id
    assert runs == [ids_of(tokenizer, "<answer>13</answer>") + [eos], ids_of(tokenizer, "<answer>85</answer>") + [eos]]
    first = ids_of(tokenizer, render(tokenizer, CONVERSATION[:2]))
    assert t.input_ids[: len(first)] == first and not any(t.loss_mask[: len(first)])


def test_last_and_all_agree_for_a_single_turn(tokenizer) -> None:
    messages = [USER, {"role": "assistant", "content": "<answer>85</answer>"}]
    last = tokenize_sample(tokenizer, Sample(messages), target=LossTarget.LAST)
    every = tokenize_sample(tokenizer, Sample(messages), target=LossTarget.ALL)
    assert (last.input_ids, last.loss_mask) == (every.input_ids, every.loss_mask)


def test_long_prompts_are_truncated_on_the_left(tokenizer) -> None:
    messages = [{"role": "user", "content": "What is 37 + 48? " * 40}, {"role": "assistant", "content": "85"}]
    full = tokenize_sample(tokenizer, Sample(messages))
    target = ids_of(tokenizer, "85") + [tokenizer.eos_token_id]
    cut = tokenize_sample(tokenizer, Sample(messages), max_prompt_tokens=10, max_completion_tokens=len(target))
    assert len(full) > 10 + len(target)
    assert len(cut) == 10 + len(target)
    assert cut.input_ids == full.input_ids[-len(cut):]  # the end of the conversation is kept
    assert cut.loss_mask == [False] * 10 + [True] * len(target)


def test_prompt_is_capped_whatever_the_completion_length(tokenizer) -> None:
    messages = [{"role": "user", "content": "What is 37 + 48? " * 40}, {"role": "assistant", "content": "85"}]
    cut = tokenize_sample(tokenizer, Sample(messages), max_prompt_tokens=10, max_completion_tokens=512)
    assert cut.loss_mask.count(False) <= 10


def test_long_replies_are_truncated_on_the_right(tokenizer) -> None:
    messages = [USER, {"role": "assistant", "content": "<answer>85</answer> Correct! " * 5}]
    t = tokenize_sample(tokenizer, Sample(messages), max_completion_tokens=3)
    reply = ids_of(tokenizer, messages[1]["content"])
    assert sum(t.loss_mask) == 3
    assert t.input_ids[-3:] == reply[:3]


def test_a_sample_must_end_with_an_assistant_message(tokenizer) -> None:
    with pytest.raises(ValueError, match="must end with an assistant message"):
        tokenize_sample(tokenizer, Sample(CONVERSATION[:4], prompt_id="p7"))
    with pytest.raises(ValueError, match="p7"):
        tokenize_sample(tokenizer, Sample([USER], prompt_id="p7"))


# -- losses --------------------------------------------------------------------------------------------------


def test_sequence_nll_by_hand() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=generator)  # (B, T, V)
    ids = torch.tensor([[1, 2, 3, 4], [0, 1, 2, 3]])
    mask = torch.tensor([[False, True, True, False], [False, False, False, False]])
    got = sequence_nll(logits, ids, mask)

    def nll(row: int, t: int) -> float:  # -log softmax(logits[row, t - 1])[ids[row, t]]: position t-1 predicts t
        scores = logits[row, t - 1].tolist()
        return -(scores[ids[row, t]] - math.log(sum(math.exp(s) for s in scores)))

    assert got.shape == (2,)
    assert got[0].item() == pytest.approx((nll(0, 1) + nll(0, 2)) / 2, rel=1e-5)
    assert got[1].item() == 0.0  # no target tokens


def test_weighted_nll_loss_mean_and_normalised() -> None:
    nll = torch.tensor([1.0, 2.0, 3.0])
    weights = torch.tensor([2.0, 0.0, 2.0])
    assert weighted_nll_loss(nll, weights).item() == pytest.approx((2 + 0 + 6) / 3)
    assert weighted_nll_loss(nll, weights, normalise=True).item() == pytest.approx((2 + 0 + 6) / 4)
    assert weighted_nll_loss(nll, torch.ones(3)).item() == pytest.approx(2.0)  # plain SFT: the mean NLL


@pytest.mark.parametrize("normalise", [False, True])
def test_weighted_nll_loss_with_zero_weights(normalise: bool) -> None:
    nll = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = weighted_nll_loss(nll, torch.zeros(2), normalise=normalise)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(nll.grad, torch.zeros(2))


def test_weighted_nll_loss_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        weighted_nll_loss(torch.ones(3), torch.ones(2))


# -- the key property: weighted SFT separates what plain SFT does not -------------------------------------------


def test_weighted_sft_prefers_the_high_weight_response_and_plain_sft_does_not(tiny_model_dir: Path,
                                                                             tokenizer) -> None:
    """Two replies to one prompt, A solved and B not. DRIFT (beta 0.1) weighs them ~2 and ~0.0001 and must
    raise log p(A) - log p(B) a lot; plain SFT weighs both 1 and must leave the gap near where it was."""
    prompt = [USER]
    a = prompt + [{"role": "assistant", "content": "<answer>A</answer>"}]
    b = prompt + [{"role": "assistant", "content": "<answer>B</answer>"}]
    trajectories = [
        Trajectory("q", a, {"t1": 1}, {"t1": 1.0}, t_star=1, answer_norms=["a"], success=True),
        Trajectory("q", b, {"t1": 0}, {"t1": 0.0}, answer_norms=["b"]),
    ]
    drift_samples = Drift(DriftConfig(beta=0.1)).samples(trajectories).samples
    assert drift_samples[0].weight == pytest.approx(2 / (1 + math.exp(-10)))
    assert drift_samples[1].weight == pytest.approx(2 / (1 + math.exp(10)))
    sft_samples = SFT().samples(trajectories).samples
    assert [s.weight for s in sft_samples] == [1.0, 1.0]

    def train(samples) -> tuple[float, float, float, float]:
        model = fresh_model(tiny_model_dir)
        before = (response_logp(model, tokenizer, a), response_logp(model, tokenizer, b))
        cfg = TrainConfig(learning_rate=1e-2, epochs=30, batch_size=2, warmup_ratio=0.0, weight_decay=0.0, seed=0)
        trainer = Trainer(model, tokenizer, cfg)
        trainer.fit(samples)
        return (*before, response_logp(trainer.model, tokenizer, a), response_logp(trainer.model, tokenizer, b))

    a0, b0, a1, b1 = train(drift_samples)
    drift_change = (a1 - b1) - (a0 - b0)
    s_a0, s_b0, s_a1, s_b1 = train(sft_samples)
    sft_change = (s_a1 - s_b1) - (s_a0 - s_b0)
    assert (a0, b0) == (s_a0, s_b0)  # the same starting model
    assert a1 > a0 + 5  # DRIFT learned A
    assert drift_change > 5.0
    assert s_a1 > s_a0 + 5 and s_b1 > s_b0 + 5  # SFT learned both...
    assert abs(sft_change) < 0.2 * drift_change  # ...without telling them apart


# -- the trainer ---------------------------------------------------------------------------------------------


def samples_abc() -> list[Sample]:
    return [Sample([USER, {"role": "assistant", "content": f"<answer>{c}</answer>"}], weight=w)
            for c, w in zip("ABCD", (1.5, 0.5, 1.0, 1.0), strict=True)]


def test_full_fine_tuning_checkpoint_reloads_to_the_same_logits(tiny_model_dir: Path, tokenizer,
                                                                tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    original = logits_of(fresh_model(tiny_model_dir), tokenizer)
    trainer = Trainer(fresh_model(tiny_model_dir), tokenizer,
                      TrainConfig(learning_rate=1e-2, epochs=2, batch_size=2, warmup_ratio=0.0))
    result = trainer.fit(samples_abc())
    trained = logits_of(trainer.model, tokenizer)
    assert not torch.allclose(trained, original, atol=1e-3)

    path = trainer.save(tmp_path / "ckpt")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    saved_cfg = json.loads((path / "drift_train_config.json").read_text())
    assert saved_cfg["learning_rate"] == 1e-2 and saved_cfg["lora"] is False
    assert torch.allclose(logits_of(AutoModelForCausalLM.from_pretrained(path), tokenizer), trained, atol=1e-6)
    assert torch.allclose(logits_of(load_model(str(path)), tokenizer), trained, atol=1e-6)
    assert load_tokenizer(str(path)).chat_template == tokenizer.chat_template
    assert result.steps == 4 and result.samples == 4
    lengths = [len(t) for t in trainer.tokenize(samples_abc())]
    masked = [sum(t.loss_mask) for t in trainer.tokenize(samples_abc())]
    assert result.tokens == 2 * sum(lengths) and result.target_tokens == 2 * sum(masked)
    assert math.isfinite(result.final_loss) and result.tokens_per_s > 0


def test_lora_adapter_reloads_with_peft_to_the_same_logits(tiny_model_dir: Path, tokenizer, tmp_path: Path) -> None:
    from peft import PeftModel

    original = logits_of(fresh_model(tiny_model_dir), tokenizer)
    cfg = TrainConfig(learning_rate=2e-2, epochs=3, batch_size=2, warmup_ratio=0.0, lora=True, lora_r=4)
    trainer = Trainer(fresh_model(tiny_model_dir), tokenizer, cfg)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in trainer.model.parameters()) / 4
    trainer.fit(samples_abc())
    trained = logits_of(trainer.model, tokenizer)
    assert not torch.allclose(trained, original, atol=1e-4)

    path = trainer.save(tmp_path / "adapter")
    assert (path / "adapter_config.json").is_file()
    assert (path / "adapter_model.safetensors").is_file()
    assert not (path / "model.safetensors").exists()  # an adapter, not a copy of the model
    reloaded = PeftModel.from_pretrained(fresh_model(tiny_model_dir), path).eval()
    assert torch.allclose(logits_of(reloaded, tokenizer), trained, atol=1e-6)
    assert torch.allclose(logits_of(load_model(str(tiny_model_dir), adapter=str(path)), tokenizer), trained,
                          atol=1e-6)


def test_lora_needs_existing_target_modules(tiny_model_dir: Path, tokenizer) -> None:
    with pytest.raises(ValueError, match="none of the LoRA target modules"):
        Trainer(fresh_model(tiny_model_dir), tokenizer, TrainConfig(lora=True, lora_targets=("c_attn",)))


def test_metrics_log_rows(tiny_model_dir: Path, tokenizer, tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    trainer = Trainer(fresh_model(tiny_model_dir), tokenizer,
                      TrainConfig(learning_rate=1e-3, epochs=2, batch_size=1, warmup_ratio=0.0))
    calls: list[tuple[int, int]] = []
    result = trainer.fit(samples_abc(), log_path=log, progress=lambda step, total, loss: calls.append((step, total)))
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == result.steps == 8
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["epoch"] for r in rows] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])
    for row, entry in zip(rows, result.history, strict=True):
        assert set(row) == {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"}
        assert row == pytest.approx(entry)
        assert row["lr"] == pytest.approx(1e-3)  # constant schedule, no warm-up
        assert math.isfinite(row["loss"]) and row["loss"] > 0 and math.isfinite(row["grad_norm"])
    assert [r["tokens"] for r in rows] == sorted(r["tokens"] for r in rows)
    assert calls == [(s, 8) for s in range(1, 9)]


def test_log_every_and_a_linear_schedule(tiny_model_dir: Path, tokenizer) -> None:
    cfg = TrainConfig(learning_rate=1e-3, epochs=1, batch_size=1, warmup_ratio=0.0, schedule="linear", log_every=3)
    result = Trainer(fresh_model(tiny_model_dir), tokenizer, cfg).fit(samples_abc())
    assert [h["step"] for h in result.history] == [3, 4]  # every third step, and the last one
    # The logged rate is the one each step used: 1e-3 * (1 - k/4) at the k-th step (k from 0).
    assert [h["lr"] for h in result.history] == pytest.approx([5e-4, 2.5e-4])


def test_gradient_accumulation_equals_a_larger_batch(tiny_model_dir: Path, tokenizer) -> None:
    """Two micro-batches of 1 accumulated make the same update as one batch of 2 (equal-length samples)."""
    samples = samples_abc()[:2]
    results = {}
    for batch_size, grad_accum in ((2, 1), (1, 2)):
        cfg = TrainConfig(learning_rate=1e-3, batch_size=batch_size, grad_accum=grad_accum, warmup_ratio=0.0)
        trainer = Trainer(fresh_model(tiny_model_dir), tokenizer, cfg)
        result = trainer.fit(samples)
        assert result.steps == 1
        results[grad_accum] = trainer.model.state_dict()
    for name, value in results[1].items():
        assert torch.allclose(value, results[2][name], atol=1e-5), name
    original = fresh_model(tiny_model_dir).state_dict()
    assert any(not torch.equal(original[k], v) for k, v in results[2].items())


def test_gradient_accumulation_counts_optimiser_steps(tiny_model_dir: Path, tokenizer) -> None:
    cfg = TrainConfig(learning_rate=1e-3, batch_size=1, grad_accum=2, epochs=1, warmup_ratio=0.0)
    result = Trainer(fresh_model(tiny_model_dir), tokenizer, cfg).fit(samples_abc())
    assert result.steps == 2
    assert all(math.isfinite(h["grad_norm"]) for h in result.history)


def test_a_partial_accumulation_window_at_the_end_is_applied(tiny_model_dir: Path, tokenizer) -> None:
    cfg = TrainConfig(learning_rate=1e-2, batch_size=1, grad_accum=4, epochs=1, warmup_ratio=0.0)
    trainer = Trainer(fresh_model(tiny_model_dir), tokenizer, cfg)
    result = trainer.fit(samples_abc()[:3])  # 3 micro-batches, one window of 4 that never fills
    assert result.steps == 1
    original = fresh_model(tiny_model_dir).state_dict()
    assert any(not torch.equal(original[k], v) for k, v in trainer.model.state_dict().items())


def test_fit_needs_samples(tiny_model_dir: Path, tokenizer) -> None:
    with pytest.raises(ValueError, match="no samples"):
        Trainer(fresh_model(tiny_model_dir), tokenizer, TrainConfig()).fit([])


def test_train_config_coerces_strings() -> None:
    cfg = TrainConfig(schedule="cosine", loss_target="all", lora_targets=["q_proj"])
    assert cfg.schedule is Schedule.COSINE and cfg.loss_target is LossTarget.ALL and cfg.lora_targets == ("q_proj",)


@pytest.mark.parametrize(
    "kwargs",
    [{"learning_rate": 0.0}, {"epochs": 0}, {"batch_size": 0}, {"grad_accum": 0}, {"max_prompt_tokens": 0},
     {"max_completion_tokens": 0}, {"lora_r": 0}, {"log_every": 0}, {"warmup_ratio": 1.0}, {"warmup_ratio": -0.1},
     {"weight_decay": -0.1}, {"max_grad_norm": -1.0}, {"schedule": "exponential"}, {"loss_target": "first"}],
)
def test_train_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


# -- the objective over an optimiser step ----------------------------------------------------------------------


def test_per_sample_nll_token_mean_and_sum_by_hand() -> None:
    from drift_algos.training.losses import SequenceLoss, per_sample_nll

    logprobs = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, -8.0, -1.0]])  # (B, T-1)
    mask = torch.tensor([[False, True, True], [True, False, False]])
    assert per_sample_nll(logprobs, mask).tolist() == pytest.approx([3.0, 0.5])  # (2 + 4) / 2, 0.5 / 1
    assert per_sample_nll(logprobs, mask, SequenceLoss.SUM).tolist() == pytest.approx([6.0, 0.5])
    assert per_sample_nll(logprobs, torch.zeros_like(mask)).tolist() == [0.0, 0.0]


LENGTHY = [Sample([USER, {"role": "assistant", "content": content}], weight=w) for content, w in (
    ("<answer>85</answer>", 3.0), ("<answer>84</answer> Incorrect", 0.2), ("85", 1.0), ("A B C D", 0.5),
    ("def return python 12 + 10", 1.5))]


@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("sequence_loss", ["token-mean", "sum"])
def test_gradient_accumulation_equals_one_large_batch(tiny_model_dir: Path, normalise: bool,
                                                      sequence_loss: str) -> None:
    # 5 samples as micro-batches of 2, 2 and 1 in one optimiser step must move the weights as one batch of 5:
    # the short last micro-batch counts for its one sample, and sum w nll / sum w spans all five.
    def train(batch_size: int, grad_accum: int):
        cfg = TrainConfig(learning_rate=1e-2, batch_size=batch_size, grad_accum=grad_accum, warmup_ratio=0.0,
                          normalise_weights=normalise, sequence_loss=sequence_loss, max_grad_norm=0.0)
        model = fresh_model(tiny_model_dir)
        grads: dict[str, torch.Tensor] = {}  # the gradient accumulated so far, seen after each backward
        for name, param in model.named_parameters():
            param.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, p.grad.clone()))
        result = Trainer(model, load_tokenizer(str(tiny_model_dir)), cfg).fit(LENGTHY)
        assert result.steps == 1
        return result.history[0]["loss"], grads

    big_loss, big = train(5, 1)
    small_loss, small = train(2, 3)
    assert small_loss == pytest.approx(big_loss, rel=1e-5)
    assert set(small) == set(big)
    for name, grad in big.items():
        torch.testing.assert_close(small[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_sequence_sum_loss_is_the_reply_log_likelihood(tiny_model_dir: Path, tokenizer) -> None:
    model = fresh_model(tiny_model_dir)
    samples = [Sample(CONVERSATION, weight=2.0), Sample(LENGTHY[4].messages, weight=0.5)]
    expected = sum(-s.weight * response_logp(model, tokenizer, s.messages) for s in samples) / 2
    cfg = TrainConfig(learning_rate=1e-3, batch_size=2, warmup_ratio=0.0, sequence_loss="sum")
    result = Trainer(model, tokenizer, cfg).fit(samples)
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-5)


def test_zero_total_weight_normalised_gives_zero_loss_and_no_change(tiny_model_dir: Path, tokenizer) -> None:
    model = fresh_model(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(learning_rate=1e-2, batch_size=2, warmup_ratio=0.0, normalise_weights=True, weight_decay=0.0)
    result = Trainer(model, tokenizer, cfg).fit([Sample(CONVERSATION, weight=0.0)] * 2)
    assert result.history[0]["loss"] == 0.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_small_lr_step_changes_the_weights_on_cuda(tiny_model_dir: Path, tokenizer) -> None:
    # bf16 weights would round a 5e-6 update away; fp32 master weights under bf16 autocast keep it.
    model = fresh_model(tiny_model_dir).to(torch.bfloat16)
    before = {k: v.detach().float().cpu().clone() for k, v in model.named_parameters()}
    cfg = TrainConfig(learning_rate=5e-6, batch_size=2, warmup_ratio=0.0, max_grad_norm=0.0)
    trainer = Trainer(model, tokenizer, cfg)
    trainer.fit([Sample(CONVERSATION)] * 2)
    after = dict(trainer.model.named_parameters())
    assert after["model.embed_tokens.weight"].dtype == torch.float32
    changed = sum(not torch.equal(after[k].detach().float().cpu(), v) for k, v in before.items())
    assert changed >= len(before) - 2  # every matrix moved (norm weights may sit at a stationary point)


def test_keep_optimizer_continues_adam_across_fits(tiny_model_dir: Path, tokenizer) -> None:
    # The online loop fits once per iteration: AdamW's moments must carry over, not restart at a first step.
    cfg = TrainConfig(learning_rate=1e-3, batch_size=1, warmup_ratio=0.0, seed=0)
    carried = Trainer(fresh_model(tiny_model_dir), tokenizer, cfg)
    first = carried.fit(samples_abc(), keep_optimizer=True)
    second = carried.fit(samples_abc(), keep_optimizer=True)
    steps = [entry["step"] for entry in carried.optimizer_state["state"].values()]
    assert steps and all(float(s) == first.steps + second.steps for s in steps)
    # Two fits of a fresh optimiser each end elsewhere.
    fresh = Trainer(fresh_model(tiny_model_dir), tokenizer, cfg)
    fresh.fit(samples_abc())
    fresh.fit(samples_abc())
    assert fresh.optimizer_state is None
    difference = max((a - b).abs().max().item() for a, b in zip(carried.model.parameters(), fresh.model.parameters(),
                                                                 strict=True))
    assert difference > 1e-5

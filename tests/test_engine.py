"""TransformersEngine with a tiny real model: order, sampling, stop strings, log-probs, reply prefixes, and its
speed-ups (shared prompts, finished rows leaving the batch, the prefix cache) against plain ``model.generate``."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest
import torch

from drift_algos.engines.base import SamplingParams, cut_at_stop, derive_seed, prefixes_for
from drift_algos.engines.transformers_engine import GenerateEngine, TransformersEngine
from drift_algos.rollout.agent import RolloutAgent, RolloutConfig

# Prompts of different lengths, deliberately not in length order, so the engine's length sort matters.
PROMPTS = ["What is 37 + 48? " * 3, "hi", "Correct! Incorrect. " * 4, "A B C D", "def return python 12 " * 2]
CONVERSATIONS = [[{"role": "user", "content": p}] for p in PROMPTS]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TransformersEngine:
    """The tiny model with larger random weights, so its greedy replies depend on the prompt.

    With the default initialisation (std 0.02) every prompt greedily continues with the same token,
    which would hide a mix-up of conversations.
    """
    eng = TransformersEngine.from_pretrained(str(tiny_model_dir), batch_size=2)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in eng.model.parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return eng


def single(engine: TransformersEngine) -> TransformersEngine:
    """The same model run one conversation at a time (no padding, no sorting)."""
    return TransformersEngine(engine.model, engine.tokenizer, batch_size=1)


def prompt_ids(engine: TransformersEngine, conversation, prefix: str = "") -> list[int]:
    return engine.tokenizer(engine.render(conversation, prefix), add_special_tokens=False)["input_ids"]


def test_n_samples_per_conversation_in_input_order(engine: TransformersEngine) -> None:
    params = SamplingParams(n=3, max_new_tokens=4, seed=0)
    results = engine.generate(CONVERSATIONS, params)  # 15 jobs in micro-batches of 2
    assert len(results) == len(CONVERSATIONS)
    for conversation, completions in zip(CONVERSATIONS, results, strict=True):
        assert len(completions) == 3
        # Each completion belongs to its own conversation: the prompt length says which one it is.
        assert {c.prompt_tokens for c in completions} == {len(prompt_ids(engine, conversation))}
        for c in completions:
            assert 1 <= len(c.token_ids) <= 4
            assert c.finish_reason in ("stop", "length")


def test_greedy_batched_matches_one_at_a_time(engine: TransformersEngine) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=10)
    batched = engine.generate(CONVERSATIONS, params)
    alone = [single(engine).generate([c], params)[0][0] for c in CONVERSATIONS]
    assert [r[0].token_ids for r in batched] == [a.token_ids for a in alone]
    assert [r[0].text for r in batched] == [a.text for a in alone]
    # The replies differ between prompts, so a permutation of the outputs would have been caught.
    assert len({tuple(a.token_ids) for a in alone}) == len(CONVERSATIONS)


def test_greedy_is_deterministic(engine: TransformersEngine) -> None:
    params = SamplingParams(temperature=0, max_new_tokens=8, n=3)
    first = engine.generate(CONVERSATIONS[:3], params)
    second = engine.generate(CONVERSATIONS[:3], params)
    for a, b in zip(first, second, strict=True):
        assert [c.token_ids for c in a] == [c.token_ids for c in b]
        assert a[0].token_ids == a[1].token_ids == a[2].token_ids  # n greedy samples are one sample


def test_sampling_seed_reproducibility(engine: TransformersEngine) -> None:
    def tokens(seed: int) -> list[list[list[int]]]:
        out = engine.generate(CONVERSATIONS, SamplingParams(temperature=1.0, max_new_tokens=8, n=2, seed=seed))
        return [[c.token_ids for c in cs] for cs in out]

    assert tokens(7) == tokens(7)
    assert tokens(7) != tokens(8)


def test_stop_string_cuts_the_text(engine: TransformersEngine) -> None:
    conversation = CONVERSATIONS[0]
    full = single(engine).generate([conversation], SamplingParams(temperature=0, max_new_tokens=10))[0][0]
    assert full.finish_reason == "length"
    # A stop string taken from the middle of the greedy reply: the first printable ASCII token after the start.
    tok = engine.tokenizer
    stop = next(piece for k in range(2, len(full.token_ids) - 1)
                if (piece := tok.decode(full.token_ids[k : k + 1])).strip() and piece.isascii()
                and piece.isprintable() and full.text.find(piece) >= len(tok.decode(full.token_ids[:k])))
    stopped = engine.generate([conversation], SamplingParams(temperature=0, max_new_tokens=10, stop=(stop,)))[0][0]
    end = full.text.index(stop) + len(stop)
    assert stopped.text == full.text[:end]
    assert stopped.text.endswith(stop)
    assert stopped.finish_reason == "stop"
    assert len(stopped.token_ids) < len(full.token_ids)
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)]


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("37</answer> and more", ("</answer>",), ("37</answer>", True)),
        ("no stop here", ("</answer>",), ("no stop here", False)),
        ("anything", (), ("anything", False)),
        ("a</b>c</a>d", ("</a>", "</b>"), ("a</b>", True)),  # the earliest end wins, not the first listed
        ("abcd", ("bcd", "bc"), ("abc", True)),  # overlapping stops: the one that ends first
        ("xx</answer>", ("</answer>", "</answer>"), ("xx</answer>", True)),
        ("", ("x",), ("", False)),
    ],
)
def test_cut_at_stop(text: str, stop: tuple[str, ...], expected: tuple[str, bool]) -> None:
    assert cut_at_stop(text, stop) == expected


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9)])
@pytest.mark.parametrize("stop", [(), ("</answer>",)])
def test_logprobs_match_a_forward_pass(engine: TransformersEngine, temperature: float, top_p: float,
                                      stop: tuple[str, ...]) -> None:
    """Log-probs are the model's own (temperature 1, before top-p), whatever the sampling settings."""
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=12, n=2, seed=3, logprobs=True,
                            stop=stop)
    results = engine.generate(CONVERSATIONS, params)
    for conversation, completions in zip(CONVERSATIONS, results, strict=True):
        prompt = prompt_ids(engine, conversation)
        for c in completions:
            assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
            ids = torch.tensor([prompt + c.token_ids])
            with torch.no_grad():
                logp = torch.log_softmax(engine.model(ids).logits[0].float(), dim=-1)  # (T, V)
            expected = [logp[len(prompt) - 1 + k, token].item() for k, token in enumerate(c.token_ids)]
            assert c.logprobs == pytest.approx(expected, abs=1e-4)


def test_logprobs_can_be_switched_off(engine: TransformersEngine) -> None:
    out = engine.generate(CONVERSATIONS[:2], SamplingParams(max_new_tokens=3, seed=0, logprobs=False))
    assert all(c.logprobs is None for cs in out for c in cs)


def test_reply_prefix_per_conversation(engine: TransformersEngine) -> None:
    prefixes = ["<answer>", "", "<think>"]
    params = SamplingParams(temperature=0, max_new_tokens=6)
    out = engine.generate(CONVERSATIONS[:3], params, reply_prefix=prefixes)
    model, tok = engine.model, engine.tokenizer
    for conversation, prefix, (completion,) in zip(CONVERSATIONS[:3], prefixes, out, strict=True):
        ids = prompt_ids(engine, conversation, prefix)
        assert completion.prompt_tokens == len(ids)
        # The completion continues the prompt *with* the prefix, and its text leaves the prefix out.
        expected = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id)[0, len(ids):].tolist()
        assert completion.token_ids == expected[: len(completion.token_ids)]
    # One prefix for all is the same as that prefix repeated.
    shared = engine.generate(CONVERSATIONS[:3], params, reply_prefix="<answer>")
    repeated = engine.generate(CONVERSATIONS[:3], params, reply_prefix=["<answer>"] * 3)
    assert [c[0].token_ids for c in shared] == [c[0].token_ids for c in repeated]


def test_reply_prefix_count_must_match(engine: TransformersEngine) -> None:
    with pytest.raises(ValueError, match="2 reply prefixes for 3 conversations"):
        engine.generate(CONVERSATIONS[:3], SamplingParams(max_new_tokens=2), reply_prefix=["a", "b"])
    assert prefixes_for("p", 2) == ["p", "p"]


def test_render_appends_the_prefix_after_the_generation_prompt(engine: TransformersEngine) -> None:
    text = engine.render([{"role": "user", "content": "hi"}], "<answer>")
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<answer>"


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_new_tokens": 0}, {"n": 0}],
)
def test_sampling_params_validation(kwargs: dict) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kwargs)


def test_sampling_params_greedy() -> None:
    assert SamplingParams(temperature=0).greedy
    assert not SamplingParams(temperature=0.5).greedy


def test_engine_batch_size_validation(engine: TransformersEngine) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TransformersEngine(engine.model, engine.tokenizer, batch_size=0)


def sampled_tokens(engine: TransformersEngine, conversations, seeds, **kwargs) -> list[list[list[int]]]:
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=2, **kwargs)
    return [[c.token_ids for c in cs] for cs in engine.generate(conversations, params, seeds=seeds)]


def test_per_conversation_seeds_do_not_depend_on_the_batch(engine: TransformersEngine) -> None:
    """A conversation's samples depend on its own seed only: not on batch size, order or neighbours."""
    seeds = [11, 12, 13, 14, 15]
    together = sampled_tokens(engine, CONVERSATIONS, seeds)
    alone = [sampled_tokens(single(engine), [c], [s])[0] for c, s in zip(CONVERSATIONS, seeds, strict=True)]
    reversed_ = sampled_tokens(engine, CONVERSATIONS[::-1], seeds[::-1])[::-1]
    wide = sampled_tokens(TransformersEngine(engine.model, engine.tokenizer, batch_size=16), CONVERSATIONS, seeds)
    assert together == alone == reversed_ == wide
    # The n samples of a conversation differ from each other, and another seed gives another draw.
    assert any(a != b for a, b in together)
    assert sampled_tokens(engine, CONVERSATIONS, [21, 12, 13, 14, 15])[0] != together[0]
    assert together[1:] == sampled_tokens(engine, CONVERSATIONS, [21, 12, 13, 14, 15])[1:]


def test_seeds_must_match_the_conversations(engine: TransformersEngine) -> None:
    with pytest.raises(ValueError, match="2 seeds for 3 conversations"):
        engine.generate(CONVERSATIONS[:3], SamplingParams(max_new_tokens=2), seeds=[1, 2])


def test_tiny_top_p_with_seeds_is_greedy(engine: TransformersEngine) -> None:
    """top-p keeps the smallest set of tokens reaching the mass: at 1e-6, only the most likely one."""
    greedy = engine.generate(CONVERSATIONS, SamplingParams(temperature=0, max_new_tokens=6))
    nucleus = engine.generate(CONVERSATIONS, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=6),
                              seeds=range(len(CONVERSATIONS)))
    assert [g[0].token_ids for g in greedy] == [t[0].token_ids for t in nucleus]


def test_derive_seed_is_stable_and_mixes() -> None:
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(a, b) for a in range(20) for b in range(20)}) == 400
    assert derive_seed(0, 1) != derive_seed(1, 0)
    assert 0 <= derive_seed(-5, 2**70) < 2**63


@pytest.mark.parametrize("engine_cls", [TransformersEngine, GenerateEngine])
def test_rows_stopped_early_keep_no_padding(engine: TransformersEngine, engine_cls: type) -> None:
    """A batch where a stop string ends only some rows: those rows keep exactly the tokens up to the stop
    (no pad ids, whose id here is not EOS), with one log-prob each; the other rows are untouched."""
    tok = engine.tokenizer
    assert tok.pad_token_id not in (engine.model.generation_config.eos_token_id, tok.eos_token_id)
    free = SamplingParams(temperature=0, max_new_tokens=12, logprobs=True)
    full = [single(engine).generate([c], free)[0][0] for c in CONVERSATIONS]
    # A stop string from the middle of the first reply that the other replies do not contain.
    first = full[0]
    stop = next(piece for k in range(1, len(first.token_ids) - 2)
                if (piece := tok.decode(first.token_ids[: k + 1])[len(tok.decode(first.token_ids[:k])):]).strip()
                and all(piece not in f.text for f in full[1:]) and first.text.find(piece) == len(tok.decode(
                    first.token_ids[:k])))
    batched = engine_cls(engine.model, tok, batch_size=len(CONVERSATIONS))  # every row in one batch
    stopped = batched.generate(CONVERSATIONS, SamplingParams(temperature=0, max_new_tokens=12, logprobs=True,
                                                             stop=(stop,)))
    fired = [c[0].finish_reason == "stop" and c[0].text.endswith(stop) for c in stopped]
    assert fired[0] and not all(fired)  # the stop fired in some rows only
    for f, (s,) in zip(full, stopped, strict=True):
        assert tok.pad_token_id not in s.token_ids
        assert len(s.logprobs) == len(s.token_ids)
        assert s.token_ids == f.token_ids[: len(s.token_ids)]
        assert s.logprobs == pytest.approx(f.logprobs[: len(s.token_ids)], abs=1e-4)
        if s.text.endswith(stop):
            assert tok.decode(s.token_ids, skip_special_tokens=True) == s.text
        else:
            assert s.token_ids == f.token_ids


# -- the speed-ups give what plain model.generate gives ----------------------------------------------------------


def plain(engine: TransformersEngine, batch_size: int = 2) -> GenerateEngine:
    return GenerateEngine(engine.model, engine.tokenizer, batch_size=batch_size)


def fresh(engine: TransformersEngine, **kwargs) -> TransformersEngine:
    return TransformersEngine(engine.model, engine.tokenizer, **{"batch_size": 2, **kwargs})


def same_completions(a, b) -> None:
    for xs, ys in zip(a, b, strict=True):
        assert [x.token_ids for x in xs] == [y.token_ids for y in ys]
        assert [x.text for x in xs] == [y.text for y in ys]
        assert [x.finish_reason for x in xs] == [y.finish_reason for y in ys]
        assert [x.prompt_token_ids for x in xs] == [y.prompt_token_ids for y in ys]
        assert [x.prompt_tokens for x in xs] == [y.prompt_tokens for y in ys]
        for x, y in zip(xs, ys, strict=True):
            assert (x.logprobs is None) == (y.logprobs is None)
            if x.logprobs is not None:
                assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
@pytest.mark.parametrize(("temperature", "top_p", "n"), [(0.0, 1.0, 2), (1.0, 1.0, 3), (0.8, 0.9, 2)])
def test_same_outputs_as_plain_generate(engine: TransformersEngine, batch_size: int, temperature: float,
                                        top_p: float, n: int) -> None:
    params = SamplingParams(temperature=temperature, top_p=top_p, n=n, max_new_tokens=9, logprobs=True, seed=5)
    ours = fresh(engine, batch_size=batch_size).generate(CONVERSATIONS, params, reply_prefix="<answer>")
    same_completions(ours, plain(engine, batch_size).generate(CONVERSATIONS, params, reply_prefix="<answer>"))


def test_same_outputs_with_stop_strings_that_end_some_rows(engine: TransformersEngine) -> None:
    params = SamplingParams(temperature=1.0, n=3, max_new_tokens=10, stop=reply_stops(engine), logprobs=True, seed=1)
    ours = fresh(engine, batch_size=16).generate(CONVERSATIONS, params)
    same_completions(ours, plain(engine, 16).generate(CONVERSATIONS, params))
    reasons = {c.finish_reason for cs in ours for c in cs}
    assert reasons == {"stop", "length"}  # some rows stopped, others ran on: the batch shrank in between


class ForwardSpy:
    """The number of rows and new tokens of each forward pass of a model."""

    def __init__(self, model):
        self.calls: list[tuple[int, int]] = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append(tuple(kwargs["input_ids"].shape))

    def __enter__(self) -> ForwardSpy:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def reply_stops(engine: TransformersEngine, count: int = 2) -> tuple[str, ...]:
    """Stop strings from the greedy replies (their third tokens): they end some rows early, at different steps."""
    free = single(engine).generate(CONVERSATIONS, SamplingParams(temperature=0, max_new_tokens=10))
    pieces = (engine.tokenizer.decode(c[0].token_ids[2:3]) for c in free)
    return tuple(dict.fromkeys(p for p in pieces if p.strip()))[:count]


def test_a_shared_prompt_is_computed_once_and_finished_rows_leave_the_batch(engine: TransformersEngine) -> None:
    eng = fresh(engine, batch_size=12, prefix_cache_mib=0)
    params = SamplingParams(temperature=1.0, n=4, max_new_tokens=12, seed=2, stop=reply_stops(engine))
    with ForwardSpy(eng.model) as spy:
        out = eng.generate(CONVERSATIONS[:3], params)
    prompt_lengths = [len(prompt_ids(eng, c)) for c in CONVERSATIONS[:3]]
    assert spy.calls[0] == (3, max(prompt_lengths))  # 3 prompts prefilled once each for their 12 samples
    rows = [r for r, _ in spy.calls[1:]]
    assert all(t == 1 for _, t in spy.calls[1:])  # then one token per row per step
    # Each step feeds exactly the samples still running: a sample that ends leaves the batch.
    assert rows == [sum(1 for cs in out for c in cs if _steps(c, params) > k) for k in range(1, len(rows) + 1)]
    assert rows[0] == 12 and rows[-1] < 12  # some samples ended early and stopped costing compute
    same_completions(out, plain(engine, 12).generate(CONVERSATIONS[:3], params))


def _steps(completion, params: SamplingParams) -> int:
    """Tokens a completion sampled (EOS included)."""
    ended_by_eos = completion.finish_reason == "stop" and len(completion.token_ids) < params.max_new_tokens and not (
        params.stop and completion.text.endswith(params.stop))
    return len(completion.token_ids) + int(ended_by_eos)


def test_the_next_turn_reuses_the_conversation_so_far(engine: TransformersEngine) -> None:
    eng = fresh(engine, batch_size=8)
    params = SamplingParams(temperature=1.0, n=2, max_new_tokens=6, seed=3)
    first = eng.generate(CONVERSATIONS[:2], params)
    follow = [c + [{"role": "assistant", "content": first[i][0].text}, {"role": "user", "content": "Incorrect."}]
              for i, c in enumerate(CONVERSATIONS[:2])]
    with ForwardSpy(eng.model) as spy:
        second = eng.generate(follow, params)
    assert eng.prefix_cache.hits >= 2
    longest = max(len(prompt_ids(eng, c)) for c in follow)
    assert spy.calls[0][1] < longest - 5  # the prefill computed only the new part of the prompts
    same_completions(second, plain(engine).generate(follow, params))
    same_completions(second, fresh(engine, prefix_cache_mib=0).generate(follow, params))


def test_a_multi_turn_rollout_matches_plain_generate(engine: TransformersEngine) -> None:
    def rollout(eng):
        make = lambda: gym.make("drift/MathCorrection-v0", disable_env_checker=True, max_turns=3,  # noqa: E731
                                max_actions=3, num_problems=10)
        agent = RolloutAgent(eng, make, env_id="math")
        records, _ = agent.run(RolloutConfig(num_prompts=3, n=3, temperature=1.0, max_new_tokens=8, seed=4,
                                             logprobs=True, record_token_ids=True))
        return sorted(records, key=lambda r: (r.group_index, r.sample_index))

    ours = fresh(engine, batch_size=4)
    mine, theirs = rollout(ours), rollout(plain(engine, 4))
    assert ours.prefix_cache.hits > 0
    assert [r.messages for r in mine] == [r.messages for r in theirs]
    assert [r.turn_completion_ids for r in mine] == [r.turn_completion_ids for r in theirs]
    assert [r.turn_prompt_ids for r in mine] == [r.turn_prompt_ids for r in theirs]
    for a, b in zip(mine, theirs, strict=True):
        assert a.turn_logprobs == pytest.approx(b.turn_logprobs, abs=1e-3)
    assert max(r.num_turns for r in mine) > 1


def test_changed_weights_are_never_served_from_the_cache(tiny_model_dir: Path) -> None:
    eng = TransformersEngine.from_pretrained(str(tiny_model_dir), batch_size=4)
    params = SamplingParams(temperature=0, max_new_tokens=6, logprobs=True)
    eng.generate(CONVERSATIONS, params)
    assert eng.prefix_cache.entries
    with torch.no_grad():  # training the shared model in place, as offline training does between rollout and eval
        for p in eng.model.parameters():
            p.mul_(1.5)
    after = eng.generate(CONVERSATIONS, params)
    same_completions(after, GenerateEngine(eng.model, eng.tokenizer, batch_size=4).generate(CONVERSATIONS, params))


def test_prefix_cache_setting(engine: TransformersEngine) -> None:
    from drift_algos.engines import EngineConfig

    with pytest.raises(ValueError, match="prefix_cache_mib"):
        TransformersEngine.check_config(EngineConfig(options={"prefix_cache_mib": -1}))
    with pytest.raises(ValueError, match="takes no settings but prefix_cache_mib"):
        TransformersEngine.check_config(EngineConfig(options={"cache": 1}))
    built = TransformersEngine.from_config(EngineConfig(options={"prefix_cache_mib": 0}), "unused",
                                           loaded=(engine.model, engine.tokenizer))
    assert built.prefix_cache.max_bytes == 0

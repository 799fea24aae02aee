"""Token-faithful samples: online training scores exactly the ids the engine saw and generated."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pytest
from tiny import build_tokenizer

from drift_algos.engines.transformers_engine import TransformersEngine
from drift_algos.records import Trajectory, read_trajectories, write_trajectories
from drift_algos.rollout.agent import RolloutAgent, RolloutConfig
from drift_algos.training.samples import turn_samples

REPLY = "= 69 + 13 = 92</answer>"


def test_re_encoding_the_text_can_change_the_ids() -> None:
    # A tokenizer that learned the merge ">=" (the embedded SmolLM2 tokenizer has it too): the engine encodes the
    # prompt, which ends with the reply prefix "<answer>", and generates "= 69 ..."; re-encoding prompt + reply as
    # one text, as the offline path does, merges ">" and "=" across the boundary.
    tok = build_tokenizer(["<answer>= 69 + 13 = 92</answer> a>=b x >= y"] * 50)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 69 + 13?"}], tokenize=False,
                                     add_generation_prompt=True) + "<answer>"
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    reply_ids = tok(REPLY, add_special_tokens=False)["input_ids"]
    together = tok(prompt + REPLY, add_special_tokens=False)["input_ids"]
    assert together != prompt_ids + reply_ids
    assert tok.decode(together) == tok.decode(prompt_ids + reply_ids)  # same text, other tokens

    # The online sample of a recorded turn is exactly the engine's ids, the prompt masked out.
    t = Trajectory("p", [{"role": "user", "content": "What is 69 + 13?"},
                         {"role": "assistant", "content": "<answer>" + REPLY}], {"t1": 1}, {"t1": 1.0},
                   turn_prompt_ids=[prompt_ids], turn_completion_ids=[reply_ids])
    (sample,) = turn_samples(t)
    assert sample.input_ids == prompt_ids + reply_ids
    assert sample.loss_mask == [False] * len(prompt_ids) + [True] * len(reply_ids)


def test_recorded_ids_are_the_generated_ids_and_survive_a_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    from drift_algos.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    engine = TransformersEngine(load_model(str(tiny_model_dir)), tokenizer)
    generated: list[tuple[list[int], list[int]]] = []
    original = engine._generate_batch

    def spy(ids, *args, **kwargs):  # what the model was fed and what it produced, seen inside the engine
        out = original(ids, *args, **kwargs)
        generated.extend((list(i), list(c.token_ids)) for i, c in zip(ids, out, strict=True))
        return out

    engine._generate_batch = spy
    agent = RolloutAgent(engine, lambda: gym.make("drift/MathCorrection-v0", max_turns=2), env_id="math")
    records, _ = agent.run(RolloutConfig(num_prompts=2, n=2, temperature=1.0, max_new_tokens=6,
                                         record_token_ids=True))
    turns = [(p, c) for r in records for p, c in zip(r.turn_prompt_ids, r.turn_completion_ids, strict=True)]
    assert sorted(turns) == sorted(generated) and len(turns) == sum(r.num_turns for r in records)
    for record in records:
        samples = turn_samples(record)
        assert len(samples) == record.num_turns
        for sample, prompt, completion in zip(samples, record.turn_prompt_ids, record.turn_completion_ids,
                                              strict=True):
            assert sample.input_ids == prompt + completion  # trained ids == generated ids
            assert [i for i, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m] == completion

    path = tmp_path / "t.jsonl"
    write_trajectories(path, records)
    assert [r.turn_completion_ids for r in read_trajectories(path)] == [r.turn_completion_ids for r in records]
    # Older files without the fields still load, with empty lists.
    row = json.loads(path.read_text().splitlines()[0])
    del row["turn_prompt_ids"], row["turn_completion_ids"]
    old = Trajectory.from_dict(row)
    assert old.turn_prompt_ids == [] and old.turn_completion_ids == []


def test_the_scripted_engine_ids_encode_its_text(scripted_engine) -> None:
    from drift_algos.engines.base import SamplingParams

    engine = scripted_engine(lambda conversation, params: "<answer>5</answer>")
    (completion,) = engine.generate([[{"role": "user", "content": "hi"}]], SamplingParams())[0]
    assert engine.decode(completion.token_ids) == completion.text
    assert engine.decode(completion.prompt_token_ids) == "user: hi\n"


def test_offline_training_can_use_the_recorded_ids(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from drift_algos.algorithms import SFT
    from drift_algos.models import load_tokenizer
    from drift_algos.training.trainer import TrainConfig, Trainer

    tok = build_tokenizer(["<answer>= 69 + 13 = 92</answer> a>=b x >= y"] * 50)
    prompt_ids = [1, 2, 3]
    t = Trajectory("p", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<answer>" + REPLY}],
                   {"t1": 1}, {"t1": 1.0}, success=True, turn_prompt_ids=[prompt_ids],
                   turn_completion_ids=[tok(REPLY, add_special_tokens=False)["input_ids"]])
    (sample,) = SFT().samples([t]).samples
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    recorded = Trainer(model, tokenizer, TrainConfig(recorded_ids=True)).tokenize([sample])
    assert recorded[0].input_ids == prompt_ids + t.turn_completion_ids[0] and recorded[0].weight == 1.0
    rendered = Trainer(model, tokenizer, TrainConfig()).tokenize([sample])
    assert rendered[0].input_ids != recorded[0].input_ids  # the default re-renders the text
    no_ids = SFT().samples([Trajectory("p", t.messages, {"t1": 1}, {"t1": 1.0}, success=True)]).samples
    with pytest.raises(ValueError, match="no recorded token ids"):
        Trainer(model, tokenizer, TrainConfig(recorded_ids=True)).tokenize(no_ids)

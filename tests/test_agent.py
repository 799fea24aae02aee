"""The rollout agent: groups, records in the release's schema, batching limits, scripted and real engines."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.spaces import Text

from drift_algos.engines.transformers_engine import TransformersEngine
from drift_algos.records import Sampling, Trajectory, TrajectoryWriter, read_trajectories
from drift_algos.rollout.agent import RolloutAgent, RolloutConfig
from drift_envs import Problem
from drift_envs.base import SIMPLE_FEEDBACK, SYSTEM_PROMPT

MATH = "drift/MathCorrection-v0"
RELEASE_FIELDS = ("prompt_id", "gold", "messages", "verifier", "turn_rewards", "reward_details", "t_star",
                  "answer_norms", "format_penalty")
DRIFT_FIELDS = ("env_id", "model", "sampling", "seed", "sample_index", "group_index", "turn_tokens", "turn_logprobs",
                "repetition_penalty", "success")

PROBLEMS = [Problem("p-a", "What is 1 + 1?", "2"), Problem("p-b", "What is 3 + 4?", "7"),
            Problem("p-c", "What is 5 + 5?", "10")]
# Replies (after the "<answer>" prefix) per problem and turn: p-a solved at turn 1, p-b at turn 2, p-c never
# (an unclosed answer, a repeat, then a reply without any answer).
SCRIPT = {"What is 1 + 1?": ["2</answer>"], "What is 3 + 4?": ["6</answer>", "7</answer>"],
          "What is 5 + 5?": ["9", "9</answer>", ""]}


def math_env(**kwargs):
    return lambda: gym.make(MATH, disable_env_checker=True, **kwargs)


def scripted_reply(conversation, params) -> str:
    question = next(q for q in SCRIPT if q in conversation[1]["content"])
    turn = sum(m["role"] == "assistant" for m in conversation)
    return SCRIPT[question][turn]


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir: Path) -> TransformersEngine:
    return TransformersEngine.from_pretrained(str(tiny_model_dir), batch_size=8)


# -- with the tiny model -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_rollout(tiny_engine: TransformersEngine, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("rollout") / "trajectories.jsonl"
    agent = RolloutAgent(tiny_engine, math_env(max_turns=2, max_actions=2, num_problems=20), env_id=MATH,
                         model_name="tiny")
    cfg = RolloutConfig(num_prompts=3, n=2, max_new_tokens=6, seed=1, logprobs=True)
    with TrajectoryWriter(path) as writer:
        records, summary = agent.run(cfg, writer=writer)
    return records, summary, path, cfg


def test_groups_share_prompt_and_first_messages(tiny_rollout) -> None:
    records, summary, _, _ = tiny_rollout
    assert len(records) == 6 and summary.prompts == 3
    groups: dict[str, list[Trajectory]] = {}
    for record in records:
        groups.setdefault(record.prompt_id, []).append(record)
    assert len(groups) == 3
    for members in groups.values():
        assert sorted(m.sample_index for m in members) == [0, 1]
        assert len({m.gold for m in members}) == 1
        assert len({json.dumps(m.messages[:2]) for m in members}) == 1  # system + first user message
        assert members[0].messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert members[0].messages[1]["role"] == "user"


def test_records_follow_the_release_schema(tiny_rollout) -> None:
    records, summary, _, cfg = tiny_rollout
    for record in records:
        row = record.to_dict()
        assert set(RELEASE_FIELDS) | set(DRIFT_FIELDS) <= set(row)
        turns = record.num_turns
        assert 1 <= turns <= 2
        assert record.messages[-1]["role"] == "assistant"
        assert [m["role"] for m in record.messages[1:]] == ["user", "assistant"] * turns
        assert list(record.turn_rewards) == ["t1", "t2"]  # padded to the turn limit
        assert list(record.verifier) == ["t1", "t2"]
        assert list(record.reward_details) == [f"t{t}" for t in range(1, turns + 1)]
        for detail in record.reward_details.values():
            assert set(detail) == {"env_reward", "format_penalty", "actions", "success"}
        assert record.t_star in (None, 1, 2)
        assert record.success == (record.t_star is not None)
        assert record.format_penalty <= 0
        assert record.format_penalty == pytest.approx(sum(d["format_penalty"] for d in record.reward_details.values()))
        assert len(record.answer_norms) == sum(d["actions"] for d in record.reward_details.values())
        assert (record.env_id, record.model, record.seed) == (MATH, "tiny", 1)
        assert record.sampling == Sampling(cfg.temperature, cfg.top_p, 6)
        assert len(record.turn_tokens) == turns and all(1 <= t <= 6 for t in record.turn_tokens)
        assert len(record.turn_logprobs) == turns and all(lp is not None and lp <= 0 for lp in record.turn_logprobs)
        assert record.repetition_penalty is not None and record.repetition_penalty >= 0
    assert summary.replies == sum(r.num_turns for r in records)
    assert summary.generated_tokens == sum(sum(r.turn_tokens) for r in records)
    assert summary.metrics.episodes == 6 and summary.metrics.max_turns == 2


def test_file_loads_with_datasets_and_read_trajectories(tiny_rollout, tmp_path: Path) -> None:
    import datasets

    records, _, path, _ = tiny_rollout
    table = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
    assert table.num_rows == len(records)
    assert set(RELEASE_FIELDS) <= set(table.column_names)
    assert table["prompt_id"] == [r.prompt_id for r in records]
    assert [m[-1]["content"] for m in table["messages"]] == [r.messages[-1]["content"] for r in records]
    assert [r.to_dict() for r in read_trajectories(path)] == [r.to_dict() for r in records]


def test_fewer_live_episodes_than_requested_still_completes(tiny_engine: TransformersEngine) -> None:
    agent = RolloutAgent(tiny_engine, math_env(max_turns=2, max_actions=2, num_problems=20))
    records, summary = agent.run(RolloutConfig(num_prompts=3, n=2, max_new_tokens=4, max_live=3))
    assert len(records) == 6 and summary.metrics.episodes == 6
    assert sorted(len([r for r in records if r.prompt_id == p]) for p in {r.prompt_id for r in records}) == [2, 2, 2]


def test_plain_gymnasium_env_with_the_tiny_model(tiny_engine: TransformersEngine) -> None:
    agent = RolloutAgent(tiny_engine, SayHelloEnv, env_id="hello")
    records, summary = agent.run(RolloutConfig(num_prompts=2, n=2, max_new_tokens=3))
    assert len(records) == 4
    assert {r.prompt_id for r in records} == {"hello-0", "hello-1"}
    assert all(r.messages[0] == {"role": "user", "content": "Say hello."} for r in records)
    assert all(r.num_turns == 3 and r.messages[-1]["role"] == "assistant" for r in records)


# -- with a scripted engine: exact records and metrics -------------------------------------------------------


def test_scripted_engine_gives_exact_records_and_metrics(scripted_engine) -> None:
    engine = scripted_engine(scripted_reply)
    agent = RolloutAgent(engine, math_env(problems=PROBLEMS, max_turns=3, max_actions=3), env_id=MATH,
                         model_name="script")
    cfg = RolloutConfig(num_prompts=3, n=2, temperature=0.5, max_new_tokens=16, seed=4, shuffle=False, logprobs=True)
    records, summary = agent.run(cfg)

    m = summary.metrics
    assert m.episodes == 6 and m.max_turns == 3
    assert m.running == [6, 4, 2]
    assert m.accuracy == pytest.approx([1 / 3, 1 / 2, 0.0])
    assert m.multi == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert m.correction[1:] == pytest.approx([1 / 2, 0.0])
    assert m.overall == pytest.approx(2 / 3)
    assert summary.replies == 12 and summary.malformed_replies == 4  # p-c's turns 1 and 3, twice
    assert summary.generated_tokens == 2 * (10 + 10 + 10 + 1 + 10 + 0)
    assert summary.prompts == 3

    # One engine call per turn, with every live episode in it; each asks for one completion.
    assert [len(convs) for convs, _, _ in engine.calls] == [6, 4, 2]
    for _, params, prefixes in engine.calls:
        assert (params.n, params.temperature, params.max_new_tokens, params.stop, params.logprobs) == (
            1, 0.5, 16, ("</answer>",), True)
        assert set(prefixes) == {"<answer>"}
    # A seed per episode and turn: 6 + 4 + 2 distinct seeds.
    seeds = [seed for call in engine.seeds for seed in call]
    assert len(seeds) == 12 and len(set(seeds)) == 12

    by_id = {(r.prompt_id, r.sample_index): r for r in records}
    assert set(by_id) == {(p.id, s) for p in PROBLEMS for s in (0, 1)}
    b = by_id[("p-b", 1)]
    prompt = b.messages[1]["content"]
    assert "What is 3 + 4?" in prompt
    expected_b = Trajectory(
        prompt_id="p-b", gold="7",
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt},
                  {"role": "assistant", "content": "<answer>6</answer>"},
                  {"role": "user", "content": SIMPLE_FEEDBACK},
                  {"role": "assistant", "content": "<answer>7</answer>"}],
        verifier={"t1": 0, "t2": 1, "t3": 0}, turn_rewards={"t1": 0.0, "t2": 1.0, "t3": 0.0},
        reward_details={"t1": {"env_reward": 0.0, "format_penalty": 0.0, "actions": 1, "success": False},
                        "t2": {"env_reward": 1.0, "format_penalty": 0.0, "actions": 1, "success": True}},
        t_star=2, answer_norms=["6", "7"], format_penalty=0.0, env_id=MATH, model="script",
        sampling=Sampling(0.5, 1.0, 16), seed=4, sample_index=1, group_index=1, turn_tokens=[10, 10],
        turn_logprobs=[-5.0, -5.0], repetition_penalty=0.0, success=True,
    )
    assert b == expected_b

    c = by_id[("p-c", 0)]
    assert [m["content"] for m in c.messages if m["role"] == "assistant"] == [
        "<answer>9</answer>", "<answer>9</answer>", "<answer>"]  # an unreadable reply is kept as it was
    assert c.verifier == {"t1": 0, "t2": 0, "t3": 0} and c.t_star is None and not c.success
    assert c.format_penalty == pytest.approx(-0.2)
    assert [d["actions"] for d in c.reward_details.values()] == [1, 1, 0]
    assert c.answer_norms == ["9", "9"]
    assert c.repetition_penalty == pytest.approx(0.25)  # 0.5 * (1 - 1 unique / 2 answers)
    assert c.turn_tokens == [1, 10, 0]

    a = by_id[("p-a", 0)]
    assert a.num_turns == 1 and a.t_star == 1 and a.verifier == {"t1": 1, "t2": 0, "t3": 0}
    assert a.turn_rewards == {"t1": 1.0, "t2": 0.0, "t3": 0.0}


def test_logprobs_are_recorded_only_when_asked_for(scripted_engine) -> None:
    engine = scripted_engine(scripted_reply)
    agent = RolloutAgent(engine, math_env(problems=PROBLEMS, max_turns=3))
    records, _ = agent.run(RolloutConfig(num_prompts=3, n=1, shuffle=False, logprobs=False))
    assert all(r.turn_logprobs == [None] * r.num_turns for r in records)
    assert all(not params.logprobs for _, params, _ in engine.calls)
    records, _ = agent.run(RolloutConfig(num_prompts=3, n=1, shuffle=False, logprobs=True))
    assert [r.turn_logprobs for r in records] == [[-5.0], [-5.0, -5.0], [-0.5, -5.0, 0.0]]


def test_writer_streams_every_finished_episode(scripted_engine, tmp_path: Path) -> None:
    agent = RolloutAgent(scripted_engine(scripted_reply), math_env(problems=PROBLEMS, max_turns=3))
    path = tmp_path / "out.jsonl"
    seen: list[tuple[int, int]] = []
    with TrajectoryWriter(path) as writer:
        records, _ = agent.run(RolloutConfig(num_prompts=3, n=1, shuffle=False), writer=writer,
                               progress=lambda done, total, tokens: seen.append((done, total)))
    assert writer.count == 3
    assert [r.to_dict() for r in read_trajectories(path)] == [r.to_dict() for r in records]
    # Finished in the order they ended: p-a after turn 1, p-b after turn 2, p-c after turn 3.
    assert [r.prompt_id for r in records] == ["p-a", "p-b", "p-c"]
    assert seen == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize(("max_live", "largest_call"), [(2, 2), (1, 2), (4, 4)])
def test_max_live_bounds_the_batch(scripted_engine, max_live: int, largest_call: int) -> None:
    engine = scripted_engine(scripted_reply)
    agent = RolloutAgent(engine, math_env(problems=PROBLEMS, max_turns=3))
    records, summary = agent.run(RolloutConfig(num_prompts=3, n=2, max_live=max_live, shuffle=False))
    assert len(records) == 6
    assert summary.metrics.multi == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    # Whole groups start together, so a group of 2 runs even when max_live is 1.
    assert max(len(convs) for convs, _, _ in engine.calls) == largest_call


def test_problem_choice(scripted_engine) -> None:
    agent = RolloutAgent(scripted_engine(scripted_reply), math_env(max_turns=2, num_problems=20))
    assert agent.num_problems == 20 and agent.max_turns == 2
    assert agent.choose_problems(RolloutConfig(num_prompts=4, shuffle=False)) == [0, 1, 2, 3]
    drawn = agent.choose_problems(RolloutConfig(num_prompts=5, seed=3))
    assert drawn == agent.choose_problems(RolloutConfig(num_prompts=5, seed=3))
    assert len(set(drawn)) == 5 and all(0 <= i < 20 for i in drawn)
    with pytest.raises(ValueError, match="asked for 21 prompts"):
        agent.choose_problems(RolloutConfig(num_prompts=21))


# -- a plain (non-drift) Gymnasium text environment ----------------------------------------------------------


class SayHelloEnv(gym.Env):
    """A minimal text env: say hello within three turns."""

    def __init__(self) -> None:
        self.observation_space = Text(64)
        self.action_space = Text(64)
        self.turn = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.turn = 0
        return "Say hello.", {}

    def step(self, action: str):
        self.turn += 1
        ok = "hello" in action.lower()
        return ("Well done." if ok else "Try again."), float(ok), ok, not ok and self.turn >= 3, {"success": ok}


def test_plain_gymnasium_env_with_a_scripted_engine(scripted_engine) -> None:
    def reply(conversation, params) -> str:
        return "hello" if len(conversation) >= 3 else "bye"

    engine = scripted_engine(reply)
    agent = RolloutAgent(engine, SayHelloEnv, env_id="hello", model_name="script")
    assert (agent.reply_prefix, agent.system_prompt, agent.stop, agent.max_turns, agent.num_problems) == (
        "", None, (), None, None)
    records, summary = agent.run(RolloutConfig(num_prompts=2, n=1))
    assert [r.prompt_id for r in records] == ["hello-0", "hello-1"]
    for r in records:
        assert r.messages == [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "bye"},
                              {"role": "user", "content": "Try again."}, {"role": "assistant", "content": "hello"}]
        assert r.verifier == {"t1": 0, "t2": 1}
        assert r.turn_rewards == {"t1": 0.0, "t2": 1.0}
        assert (r.t_star, r.success, r.answer_norms, r.repetition_penalty, r.gold) == (2, True, [], None, "")
    assert summary.metrics.max_turns == 2
    assert summary.metrics.accuracy == pytest.approx([0.0, 1.0])
    assert summary.metrics.multi == pytest.approx([0.0, 1.0])
    assert summary.malformed_replies == 0
    assert all(params.stop == () for _, params, _ in engine.calls)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_prompts": 0}, {"n": 0}, {"max_new_tokens": 0}, {"max_live": 0}, {"temperature": -1.0}, {"top_p": 0.0},
     {"top_p": 1.1}],
)
def test_rollout_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RolloutConfig(**kwargs)


def test_trajectories_do_not_depend_on_batching(tiny_engine: TransformersEngine) -> None:
    """Seeds per episode and turn: the same trajectories whether 2 or 8 episodes share an engine call."""
    def collect(max_live: int, batch_size: int) -> list[dict]:
        engine = TransformersEngine(tiny_engine.model, tiny_engine.tokenizer, batch_size=batch_size)
        agent = RolloutAgent(engine, math_env(max_turns=2, max_actions=2, num_problems=20), env_id=MATH)
        records, _ = agent.run(RolloutConfig(num_prompts=4, n=2, temperature=1.0, max_new_tokens=6, seed=3,
                                             max_live=max_live))
        return sorted((r.to_dict() for r in records), key=lambda d: (d["prompt_id"], d["sample_index"]))

    wide, narrow = collect(256, 8), collect(2, 1)
    assert wide == narrow
    assert len({json.dumps(d["messages"]) for d in wide}) > 4  # samples differ within groups

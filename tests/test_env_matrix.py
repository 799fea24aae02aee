"""The same checks on every built-in environment: Gymnasium's API, determinism, robustness to
arbitrary replies, and rollouts with a tiny model through the agent and through `drift rollout`.

New built-in environments join the matrix by being added to ``drift_envs.registry.BUILTIN``.
An environment whose module does not exist yet is skipped; one that exists but fails to
import fails.
"""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from typer.testing import CliRunner

from drift_algos.algorithms import ALGORITHMS
from drift_algos.evaluation.metrics import compute_metrics
from drift_algos.records import TrajectoryWriter, read_trajectories
from drift_algos.rollout.agent import RolloutAgent, RolloutConfig
from drift_cli.main import app
from drift_envs import EpisodeStats, TextEnv
from drift_envs.registry import ALIASES, BUILTIN

MAX_TURNS = 2
MAX_NEW_TOKENS = 8
ENV_KWARGS = {"max_turns": MAX_TURNS, "max_actions": MAX_TURNS}
"""What every environment gets here; everything else is the environment's default (offline by design)."""

ODD_REPLIES = (
    "",
    "<answer>",
    "<answer></answer>",
    "<answer> [your answer] </answer>",
    "<answer>" + "9" * 5000 + "</answer>",
    "<answer>\u00fc\U0001f600\x00\x1b[31m</answer>",
    "<think>hmm</think><answer>A</answer>",
    "```python\nimport os\nos._exit(3)\n```",
    "```python\ndef f(:\n```",
    "</answer><answer>1</answer><answer>2</answer>",
)
"""Replies a model can write: empty, unclosed, placeholder, huge, control characters, code that kills its process."""


def _module(env_id: str) -> str:
    return BUILTIN[env_id].partition(":")[0]


def _require(env_id: str) -> None:
    # A module another contributor has not written yet skips; an import error in a written one fails.
    if importlib.util.find_spec(_module(env_id)) is None:
        pytest.skip(f"{_module(env_id)} does not exist yet")
    importlib.import_module(_module(env_id))


ENV_IDS = sorted(BUILTIN)
FIRST_ALIAS = {target: alias for alias, target in reversed(list(ALIASES.items()))}
"""One CLI alias per built-in id (the first listed)."""


def make(env_id: str, **kwargs) -> gym.Env:
    return gym.make(env_id, disable_env_checker=True, **{**ENV_KWARGS, **kwargs})


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path):
    from drift_algos.engines.transformers_engine import TransformersEngine

    return TransformersEngine.from_pretrained(str(tiny_model_dir), batch_size=8)


def test_every_builtin_env_has_a_cli_alias() -> None:
    assert set(FIRST_ALIAS) == set(BUILTIN)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(env_id: str) -> None:
    _require(env_id)
    env = gym.make(env_id, **ENV_KWARGS)  # with Gymnasium's passive checker around it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checker reports problems as warnings
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        check_env(env.unwrapped)
        env.reset(seed=0)
        env.step(env.action_space.sample())


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reset_is_deterministic(env_id: str) -> None:
    _require(env_id)
    first, second = make(env_id), make(env_id)
    observations = set()
    for seed in range(8):
        observation, info = first.reset(seed=seed)
        assert second.reset(seed=seed) == (observation, info)
        first.step("<answer>0</answer>")  # stepping must not change what the next reset with this seed gives
        assert first.reset(seed=seed) == (observation, info)
        observations.add(observation)
        picked = first.reset(seed=seed, options={"problem_index": 1})
        assert second.reset(seed=seed, options={"problem_index": 1}) == picked
        assert picked[1]["problem_id"] == first.unwrapped.problems[1].id
    assert len(observations) > 1, "every seed gave the same problem"


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_arbitrary_replies_do_not_crash(env_id: str) -> None:
    _require(env_id)
    env = make(env_id)
    env.action_space.seed(0)
    replies = [env.action_space.sample() for _ in range(6)] + list(ODD_REPLIES)
    reply_iter = iter(replies)
    seed = 0
    while (reply := next(reply_iter, None)) is not None:
        observation, _ = env.reset(seed=seed)
        seed += 1
        total, steps, done = 0.0, 0, False
        while not done and reply is not None:
            observation, reward, terminated, truncated, info = env.step(reply)
            steps += 1
            assert isinstance(observation, str) and observation and env.observation_space.contains(observation)
            assert isinstance(reward, float) and math.isfinite(reward)
            assert isinstance(terminated, bool) and isinstance(truncated, bool)
            total += reward
            done = terminated or truncated
            if not done:
                reply = next(reply_iter, None)
        if not done:
            break
        assert steps <= MAX_TURNS
        stats = info["episode"]
        assert isinstance(stats, EpisodeStats) and stats.num_turns == steps
        # The Gymnasium rewards of an episode add up to its record's undiscounted return.
        expected = sum(stats.turn_rewards.values()) + stats.format_penalty - stats.repetition_penalty
        assert total == pytest.approx(expected)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_rollout_agent_records(env_id: str, engine, tmp_path: Path) -> None:
    _require(env_id)
    agent = RolloutAgent(engine, lambda: make(env_id), env_id=env_id, model_name="tiny")
    cfg = RolloutConfig(num_prompts=2, n=2, max_new_tokens=MAX_NEW_TOKENS, seed=0)
    out = tmp_path / "rollouts.jsonl"
    with TrajectoryWriter(out) as writer:
        records, summary = agent.run(cfg, writer=writer)
    assert summary.metrics.episodes == len(records) == 4
    assert summary.replies == sum(r.num_turns for r in records)

    release_fields = {"prompt_id", "gold", "messages", "verifier", "turn_rewards", "reward_details", "t_star",
                      "answer_norms", "format_penalty"}
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4 and all(release_fields <= set(row) for row in rows)
    reread = read_trajectories(out)
    assert [r.to_dict() for r in reread] == [r.to_dict() for r in records]

    probe = make(env_id).unwrapped
    assert isinstance(probe, TextEnv)
    problems = {p.id: p for p in probe.problems}
    groups: dict[str, list] = {}
    for record in records:
        groups.setdefault(record.prompt_id, []).append(record)
        assert record.env_id == env_id and record.model == "tiny"
        assert record.gold == problems[record.prompt_id].answer
        roles = [m["role"] for m in record.messages]
        assert roles[0] == ("system" if probe.system_prompt else "user") and roles[-1] == "assistant"
        assert 1 <= record.num_turns <= MAX_TURNS
        assert set(record.verifier) == set(record.turn_rewards) == {f"t{t}" for t in range(1, MAX_TURNS + 1)}
        assert len(record.turn_tokens) == record.num_turns and max(record.turn_tokens) <= MAX_NEW_TOKENS
        assert record.format_penalty == pytest.approx(sum(d["format_penalty"] for d in record.reward_details.values()))
        assert record.success == (record.t_star is not None)
    assert len(groups) == 2
    for prompt_id, members in groups.items():
        assert sorted(r.sample_index for r in members) == [0, 1]
        first_user = {next(m["content"] for m in r.messages if m["role"] == "user") for r in members}
        assert len(first_user) == 1  # one prompt per group
        # ... and it is what the environment shows for that problem. With seed 0 the agent resets
        # group g with seed g (the seed matters where the prompt does: the options' lettering).
        shown = {make(env_id).reset(seed=g, options={"problem_id": prompt_id})[0] for g in range(cfg.num_prompts)}
        assert first_user <= shown


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_cli_rollout(env_id: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    _require(env_id)
    alias = FIRST_ALIAS[env_id]
    out = tmp_path / "x.jsonl"
    result = CliRunner().invoke(app, [
        "rollout", "--env", alias, "--model", str(tiny_model_dir), "--num-prompts", "2", "--n", "2",
        "--max-turns", str(MAX_TURNS), "--max-new-tokens", str(MAX_NEW_TOKENS), "--out", str(out),
    ])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    records = read_trajectories(out)
    assert len(records) == 4 and {r.env_id for r in records} == {env_id}
    assert len({r.prompt_id for r in records}) == 2
    assert all(r.num_turns <= MAX_TURNS and max(r.turn_tokens) <= MAX_NEW_TOKENS for r in records)
    summary = json.loads(out.with_suffix(".summary.json").read_text(encoding="utf-8"))
    assert summary["env_id"] == env_id and summary["episodes"] == 4


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_cli_run_every_env_with_every_algorithm(env_id: str, algo: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    """`drift run` (rollout, weigh, train, evaluate) on each built-in environment with each algorithm."""
    _require(env_id)
    out = tmp_path / "run"
    trajectories = None
    if algo == "rft":
        # A tiny random model never succeeds; RFT needs a successful trajectory, so it starts from one.
        trajectories = tmp_path / "solved.jsonl"
        env = gym.make(env_id).unwrapped
        _, info = env.reset(options={"problem_index": 0})
        reply = {"drift/CodeFeedback-v0": "```python\n" + env.problems[0].answer + "\n```"}.get(
            env_id, f"<answer>{info.get('gold_letter', info['gold'])}</answer>")
        *_, step_info = env.step(reply)
        assert step_info["success"], reply
        trajectories.write_text(json.dumps({
            "prompt_id": info["problem_id"], "gold": info["gold"], "turn_rewards": {"t1": 1.0},
            "verifier": {"t1": 1}, "t_star": 1, "success": True,
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": reply}],
        }) + "\n")
    args = ["run", "--env", FIRST_ALIAS[env_id], "--algo", algo, "--model", str(tiny_model_dir), "--preset", "smoke",
            "--num-prompts", "2", "--n", "2", "--eval-problems", "2", "--out", str(out)]
    if trajectories is not None:
        args += ["--trajectories", str(trajectories)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["algo"] == algo and metrics["base"]["episodes"] == metrics["trained"]["episodes"] == 2
    assert (out / "checkpoint" / "config.json").is_file() and (out / "multi_at_k.png").is_file()
    check_run_directory(out, metrics, env_id, rolled_out=trajectories is None)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_run_directory(out: Path, metrics: dict, env_id: str, *, rolled_out: bool) -> None:
    """What a smoke `drift run` wrote agrees with itself: metrics.json against the JSONL files it came from."""
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["env_id"] == env_id and config["preset"]["name"] == "smoke"
    max_turns = config["preset"]["max_turns"]

    if config["algo"] in ("grpo", "ppo"):  # online: no reference rollouts; one log row per iteration
        log = _jsonl(out / "online_log.jsonl")
        assert len(log) == config["preset"]["online"]["iterations"]
        assert all(math.isfinite(row["loss"]) for row in log)
    else:
        check_offline_stages(out, metrics, config, rolled_out=rolled_out)
    check_evaluation(out, metrics, max_turns)


def check_offline_stages(out: Path, metrics: dict, config: dict, *, rolled_out: bool) -> None:
    # Rollouts: 2 prompts x 2 samples (or the one given trajectory); weighing keeps every row, in order.
    trajectories = read_trajectories(out / "trajectories.jsonl")
    assert len(trajectories) == (4 if rolled_out else 1)
    if rolled_out:
        assert metrics["rollout"]["episodes"] == 4 and len({t.prompt_id for t in trajectories}) == 2
        assert metrics["rollout"]["success_within_T"] == sum(t.success for t in trajectories) / 4
    else:
        assert metrics["rollout"] is None
    weighted = _jsonl(out / "weighted.jsonl")
    assert [row["prompt_id"] for row in weighted] == [t.prompt_id for t in trajectories]
    assert metrics["weights"]["num_trajectories"] == len(weighted)
    groups: dict[str, list[float]] = {}
    for row in weighted:
        assert math.isfinite(row["return"]) and row["weight"] >= 0
        groups.setdefault(row["prompt_id"], []).append(row["weight"])
    for weights in groups.values():  # self-normalised within the prompt group: mean 1
        assert sum(weights) == pytest.approx(len(weights))

    # Training: the algorithm's samples plus what it left out are the trajectories; one optimiser step per
    # batch of 4 (the smoke preset, one epoch), each logged.
    train = metrics["train"]
    assert train["samples"] + train["skipped_trajectories"] == len(trajectories) and train["samples"] >= 1
    assert train["steps"] == math.ceil(train["samples"] / config["preset"]["train"]["batch_size"])
    assert len(_jsonl(out / "train_log.jsonl")) == train["steps"]
    assert train["tokens"] >= train["target_tokens"] > 0 and math.isfinite(train["final_loss"])


def check_evaluation(out: Path, metrics: dict, max_turns: int) -> None:
    # Evaluation: the numbers in metrics.json are those of the episodes in eval_*.jsonl.
    for which in ("base", "trained"):
        episodes = sorted(read_trajectories(out / f"eval_{which}.jsonl"), key=lambda t: t.prompt_id)
        evaluation = metrics[which]
        assert len(episodes) == evaluation["episodes"] == 2 and evaluation["max_turns"] == max_turns
        assert all(1 <= e.num_turns <= max_turns for e in episodes)
        expected = compute_metrics([e.outcome for e in episodes], max_turns)
        assert evaluation["running_per_turn"] == expected.running
        assert evaluation["multi_at_k"] == pytest.approx(expected.multi)
        assert evaluation["overall"] == pytest.approx(expected.overall)
        assert all(a == pytest.approx(b) or (a is None and math.isnan(b))  # NaN is written as null
                   for a, b in zip(evaluation["accuracy_per_turn"], expected.accuracy, strict=True))
        multi = evaluation["multi_at_k"]
        assert all(a <= b for a, b in zip(multi, multi[1:], strict=False))  # multi@k never falls with k
        for value, (low, high) in zip(multi, evaluation["multi_ci"], strict=True):
            assert low <= value <= high
        # Every built-in environment ends an episode on success: no flip rates.
        assert "wrong_to_right" not in evaluation and "right_to_wrong" not in evaluation
    # Both models saw the same problems, so the paired difference is the difference of the two multi@k.
    ids = {which: sorted(e.prompt_id for e in read_trajectories(out / f"eval_{which}.jsonl"))
           for which in ("base", "trained")}
    assert ids["base"] == ids["trained"]
    for k in range(1, max_turns + 1):
        difference = metrics["paired_difference"][f"multi@{k}"]["difference"]
        base, trained = metrics["base"]["multi_at_k"][k - 1], metrics["trained"]["multi_at_k"][k - 1]
        assert difference == pytest.approx(trained - base)

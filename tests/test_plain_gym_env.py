"""A plain ``gymnasium.Env`` (not a drift ``TextEnv``) through `drift rollout`, `drift eval` and `drift run`.

Its constructor takes one argument, ``max_turns``: drift's own settings that it cannot take (``split``, the
``max_actions`` that a turn limit implies) are left out with one warning and recorded; an argument the user gives
explicitly that it cannot take is a one-line error naming the flag.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.spaces import Text
from typer.testing import CliRunner

from drift_cli.main import app
from drift_envs.registry import accepted_arguments, env_factory, resolve_env_id

SPEC = "test_plain_gym_env:SumEnv"
"""The command-line spec of the environment below (``tests/`` is on ``sys.path``, conftest.py)."""
DEFAULT_MAX_TURNS = 4
"""The environment's own turn limit; drift's settings (2 or 3 below) differ, so applying them shows."""


class SumEnv(gym.Env[str, str]):
    """Add two numbers; a wrong reply gets "No, try again." until the turn limit."""

    max_reply_tokens = 6
    """Read by the rollout agent (a free-form reply would otherwise get 512 tokens)."""

    def __init__(self, max_turns: int = DEFAULT_MAX_TURNS):
        self.observation_space = Text(max_length=4096, min_length=0, charset=string.printable)
        self.action_space = Text(max_length=4096, min_length=0, charset=string.printable)
        self.max_turns = max_turns
        self.terms = (0, 0)
        self.turn = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        a, b = (int(x) for x in self.np_random.integers(0, 1000, size=2))
        self.terms, self.turn = (a, b), 0
        return f"What is {a} + {b}? Reply with the number only.", {"problem_id": f"sum-{a}-{b}", "gold": str(a + b)}

    def step(self, action: str):
        self.turn += 1
        success = action.strip() == str(sum(self.terms))
        truncated = not success and self.turn >= self.max_turns
        return ("Correct!" if success else "No, try again."), float(success), success, truncated, {"success": success}


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def stderr_text(result) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def check_not_applied_warning(result, names: tuple[str, ...]) -> None:
    """One warning, naming each left-out setting and what leaving it out means."""
    text = stderr_text(result)
    assert text.count("does not accept") == 1, result.stderr
    for name in names:
        assert f"{name}:" in text, result.stderr
    if "split" in names:
        assert text.count("train and evaluation problems may overlap") == 1, result.stderr


def episodes(path: Path) -> list[dict]:
    # Read as JSON, not with drift's record reader: greedy decoding of the tiny random model writes replies of
    # blank lines, which the reader refuses as empty (an environment without a reply prefix does not hide them).
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_episodes(path: Path, *, groups: int, n: int, turns: int) -> list[dict]:
    """``groups`` groups of ``n``: one prompt per group, a distinct problem per group, the turn limit applied."""
    records = episodes(path)
    assert len(records) == groups * n
    by_group: dict[int, list[dict]] = {}
    for record in records:
        by_group.setdefault(record["group_index"], []).append(record)
    assert sorted(by_group) == list(range(groups)) and all(len(g) == n for g in by_group.values())
    for members in by_group.values():
        assert len({m["messages"][0]["content"] for m in members}) == 1  # one reset seed per group
        assert len({m["prompt_id"] for m in members}) == 1
    # Each group its own reset seed: the problems differ (no `problems` attribute to choose from).
    assert len({g[0]["prompt_id"] for g in by_group.values()}) == groups
    for record in records:
        a, b = map(int, record["prompt_id"].removeprefix("sum-").split("-"))
        assert record["messages"][0]["content"].startswith(f"What is {a} + {b}?") and record["gold"] == str(a + b)
        replies = [m for m in record["messages"] if m["role"] == "assistant"]
        assert len(replies) <= turns and (record["success"] or len(replies) == turns)
    return records


def test_accepted_arguments() -> None:
    env_id = resolve_env_id(SPEC)
    assert accepted_arguments(env_id) == {"max_turns"}
    # drift's own environments take every field of their config (and get what drift gives them, unchanged).
    math_args = accepted_arguments(resolve_env_id("math"))
    assert {"split", "max_turns", "max_actions", "source", "path", "config", "render_mode"} <= math_args
    kwargs = {"split": "test", "max_turns": 2, "max_actions": 2, "num_problems": 40}
    factory = env_factory(resolve_env_id("math"), kwargs)
    assert factory.kwargs == kwargs and factory.not_applied == {}


class NoArgumentsEnv(gym.Env[str, str]):
    """Defines no ``__init__``: its constructor takes nothing."""


def test_an_env_without_init_takes_no_arguments() -> None:
    gym.register("test_plain/NoArguments-v0", entry_point=NoArgumentsEnv)
    try:
        assert accepted_arguments("test_plain/NoArguments-v0") == frozenset()
        factory = env_factory("test_plain/NoArguments-v0", {"split": "train"}, warn=False)
        assert factory.kwargs == {} and set(factory.not_applied) == {"split"}
        assert isinstance(factory().unwrapped, NoArgumentsEnv)
    finally:
        del gym.registry["test_plain/NoArguments-v0"]


def test_settings_left_out_are_recorded_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    env_id = resolve_env_id(SPEC)
    with caplog.at_level("WARNING"):
        factory = env_factory(env_id, {"split": "train", "max_turns": 2, "max_actions": 2, "think": True})
        second = env_factory(env_id, {"split": "test", "max_turns": 2, "max_actions": 2, "think": True}, warn=False)
    assert factory.kwargs == second.kwargs == {"max_turns": 2}
    assert set(factory.not_applied) == {"split", "max_actions", "think"}
    assert "train and evaluation problems may overlap" in factory.not_applied["split"]
    assert "answer limit" in factory.not_applied["max_actions"]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "split" in warnings[0].getMessage() and "think" in warnings[0].getMessage()
    env = factory()
    assert env.unwrapped.max_turns == 2


def test_the_id_of_a_module_class_spec_resolves_in_a_new_process() -> None:
    # A run's config.json holds the id the spec was registered under; a new process has not registered it yet.
    env_id = resolve_env_id(SPEC)
    del gym.registry[env_id]
    assert resolve_env_id(env_id) == env_id and env_id in gym.registry


def test_rollout(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sum.jsonl"
    result = invoke("rollout", "--env", SPEC, "--model", tiny_model_dir, "--num-prompts", 3, "--n", 2,
                    "--max-turns", 2, "--out", out)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    check_episodes(out, groups=3, n=2, turns=2)
    check_not_applied_warning(result, ("split", "max_actions"))
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert set(summary["env_args_not_applied"]) == {"split", "max_actions"}


def test_eval(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    result = invoke("eval", "--env", SPEC, "--model", tiny_model_dir, "--num-problems", 3, "--out", out)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    # `drift eval`'s default turn limit (3, a setting) applies: the environment's own is 4.
    check_episodes(out.with_suffix(".jsonl"), groups=3, n=1, turns=3)
    check_not_applied_warning(result, ("split", "max_actions"))
    metrics = json.loads(out.read_text())
    assert metrics["episodes"] == 3 and set(metrics["env_args_not_applied"]) == {"split", "max_actions"}


def test_run_smoke_and_eval_from_its_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = invoke("run", "--env", SPEC, "--model", tiny_model_dir, "--preset", "smoke", "--num-prompts", 2,
                    "--n", 2, "--eval-problems", 2, "--out", run_dir)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    check_not_applied_warning(result, ("split", "max_actions"))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["preset"]["max_turns"] == 2
    assert set(config["env_args_not_applied"]) == {"split", "max_actions"}
    assert "train and evaluation problems may overlap" in config["env_args_not_applied"]["split"]
    rollouts = check_episodes(run_dir / "trajectories.jsonl", groups=2, n=2, turns=2)  # the preset's turn limit
    trained = check_episodes(run_dir / "eval_trained.jsonl", groups=2, n=1, turns=2)
    # Without a split only the reset seeds tell evaluation from training: they must not be the rollouts' seeds.
    assert "evaluation episodes use the reset seeds of seed + 1,000,000" in config["env_args_not_applied"]["split"]
    assert config["preset"]["eval"]["seed"] == 1_000_000
    assert not {r["prompt_id"] for r in rollouts} & {r["prompt_id"] for r in trained}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["base"]["episodes"] == metrics["trained"]["episodes"] == 2
    assert (run_dir / "weighted.jsonl").is_file() and (run_dir / "checkpoint").is_dir()

    again = tmp_path / "again.json"
    result = invoke("eval", "--run", run_dir, "--out", again)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    check_not_applied_warning(result, ("split", "max_actions"))
    repeated = episodes(again.with_suffix(".jsonl"))
    assert [r["messages"] for r in repeated] == [r["messages"] for r in trained]


@pytest.mark.parametrize("command", ["rollout", "eval"])
@pytest.mark.parametrize(("flags", "flag", "name"), [
    (["--env-arg", "levels=[1]"], "--env-arg", "levels"),
    (["--split", "test"], "--split", "split"),
    (["--source", "gsm8k"], "--source", "source"),
    (["--data", "problems.jsonl"], "--data", "path"),
])
def test_an_explicit_argument_it_does_not_accept_is_an_error(command: str, flags: list[str], flag: str, name: str,
                                                             tmp_path: Path) -> None:
    result = invoke(command, "--env", SPEC, "--model", tmp_path / "no-model", *flags)
    assert result.exit_code == 2, f"{result.output}\n{result.exception!r}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}: "), result.stderr
    assert f"does not accept '{name}'" in lines[0] and "max_turns" in lines[0], result.stderr


def test_run_with_an_env_arg_it_does_not_accept_is_an_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = invoke("run", "--env", SPEC, "--model", tmp_path / "no-model", "--preset", "smoke",
                    "--env-arg", "levels=[1]", "--out", run_dir)
    assert result.exit_code == 2, f"{result.output}\n{result.exception!r}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --env-arg: ") and "'levels'" in lines[0], result.stderr
    assert not run_dir.exists()

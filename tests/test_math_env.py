"""``drift/MathCorrection-v0`` through Gymnasium: turns, actions, rewards, feedback and records."""

from __future__ import annotations

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import drift_envs
from drift_envs import EpisodeStats, Problem
from drift_envs.base import CORRECT_MESSAGE, SIMPLE_FEEDBACK
from drift_envs.math.env import MathCorrectionEnv, MathEnvConfig

ENV_ID = "drift/MathCorrection-v0"
PROBLEMS = (
    Problem("p-add", "What is 37 + 48?", "85", "test"),
    Problem("p-half", "What is 1/4 + 1/4?", "1/2", "test"),
    Problem("p-neg", "What is 3 - 10?", "-7", "test"),
)


def make(**kwargs) -> gym.Env:
    kwargs.setdefault("problems", PROBLEMS)
    return gym.make(ENV_ID, **kwargs)


def run(env: gym.Env, replies: list[str], problem_id: str = "p-add") -> list[tuple]:
    """Reset on ``problem_id`` and step through ``replies``; the step results."""
    env.reset(options={"problem_id": problem_id})
    return [env.step(reply) for reply in replies]


def test_registered_by_importing_drift_envs() -> None:
    assert ENV_ID in gym.registry and drift_envs.ALIASES["math"] == ENV_ID
    env = gym.make(ENV_ID)  # the built-in procedural problems, offline
    assert isinstance(env.unwrapped, MathCorrectionEnv)
    observation, info = env.reset(seed=0)
    assert isinstance(observation, str) and info["gold"] and info["turn"] == 0


@pytest.mark.filterwarnings("error")  # check_env reports most problems as warnings
def test_check_env_passes() -> None:
    check_env(gym.make(ENV_ID).unwrapped, skip_render_check=True)
    check_env(gym.make(ENV_ID, render_mode="ansi", feedback="full").unwrapped)


def test_reset_is_deterministic_per_seed() -> None:
    env = gym.make(ENV_ID)
    first = [env.reset(seed=seed) for seed in range(8)]
    again = [env.reset(seed=seed) for seed in range(8)]
    assert first == again
    assert len({info["problem_id"] for _, info in first}) > 1


def test_reset_options_pick_the_problem() -> None:
    env = make()
    observation, info = env.reset(options={"problem_index": 1})
    assert info["problem_id"] == "p-half" and info["gold"] == "1/2"
    assert "What is 1/4 + 1/4?" in observation and "<answer>" in observation
    _, info = env.reset(seed=5, options={"problem_id": "p-neg"})
    assert info["problem_id"] == "p-neg"
    with pytest.raises(IndexError):
        env.reset(options={"problem_index": 3})
    with pytest.raises(KeyError):
        env.reset(options={"problem_id": "nope"})


def test_correct_well_formed_answer_terminates_with_reward_one() -> None:
    env = make()
    [(observation, reward, terminated, truncated, info)] = run(env, ["<answer>37 + 48 = 85</answer>"])
    assert (observation, reward, terminated, truncated) == (CORRECT_MESSAGE, 1.0, True, False)
    assert info["success"] and info["well_formed"] and info["parsed_answer"] == "37 + 48 = 85"
    assert info["rendered_reply"] == "<answer>37 + 48 = 85</answer>"
    stats = info["episode"]
    assert isinstance(stats, EpisodeStats)
    assert stats.success and stats.t_star == 1 and stats.verifier == {"t1": 1}


def test_equivalent_forms_are_correct() -> None:
    env = make()
    for problem_id, reply in [("p-half", "<answer>0.5</answer>"), ("p-half", "<answer>\\frac{1}{2}</answer>"),
                              ("p-neg", "<answer>-7</answer>"), ("p-add", "<answer>\\boxed{85}</answer>")]:
        [(_, reward, terminated, _, _)] = run(env, [reply], problem_id)
        assert terminated and reward == 1.0, reply


def test_lenient_unclosed_correct_answer_costs_the_format_penalty() -> None:
    env = make()  # lenient is the default
    [(observation, reward, terminated, _, info)] = run(env, ["<answer>85\nbecause 37 + 48 = 85"])
    assert terminated and observation == CORRECT_MESSAGE
    assert reward == pytest.approx(0.9)
    assert info["format_penalty"] == pytest.approx(-0.1) and not info["well_formed"]
    assert info["rendered_reply"] == "<answer>85</answer>"
    assert info["episode"].format_penalty == pytest.approx(-0.1)


def test_wrong_answer_gets_simple_feedback() -> None:
    env = make()
    [(observation, reward, terminated, truncated, info)] = run(env, ["<answer>84</answer>"])
    assert observation == SIMPLE_FEEDBACK == "Incorrect. Please think again."
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["is_action"] and info["actions_left"] == 4 and "episode" not in info


def test_strict_format_failure_is_not_an_action() -> None:
    env = make(parse="strict")
    [(observation, reward, terminated, truncated, info)] = run(env, ["<answer>85"])
    assert observation == SIMPLE_FEEDBACK
    assert reward == pytest.approx(-0.1) and not terminated and not truncated
    assert not info["is_action"] and info["parsed_answer"] is None
    assert info["actions_left"] == 5  # unchanged
    assert info["rendered_reply"] == "<answer>85"
    _, reward, terminated, _, info = env.step("<answer>85</answer>")
    assert terminated and reward == 1.0 and info["episode"].t_star == 2
    assert info["episode"].num_actions == 1 and info["episode"].num_turns == 2


def test_max_turns_truncates() -> None:
    env = make(parse="strict", max_turns=2)
    steps = run(env, ["no tags", "<answer>"])
    assert [s[3] for s in steps] == [False, True] and not any(s[2] for s in steps)
    stats = steps[-1][4]["episode"]
    assert stats.num_turns == 2 and stats.num_actions == 0 and not stats.success and stats.t_star is None
    assert stats.format_penalty == pytest.approx(-0.2)
    assert stats.repetition_penalty == 0.0 and stats.answer_norms == []


def test_max_actions_truncates_before_the_turn_limit() -> None:
    env = make(max_actions=2, max_turns=5)
    steps = run(env, ["<answer>1</answer>", "<answer>2</answer>"])
    assert [s[3] for s in steps] == [False, True]
    assert steps[-1][4]["actions_left"] == 0
    stats = steps[-1][4]["episode"]
    assert stats.num_turns == 2 and stats.num_actions == 2 and stats.repetition_penalty == 0.0


def test_repetition_penalty_charged_at_the_end() -> None:
    env = make(max_actions=2)
    # Equivalent forms of one answer count as a repeat.
    steps = run(env, ["<answer>84</answer>", "<answer>42 + 42 = 84</answer>"])
    first, last = steps
    assert first[1] == 0.0  # nothing charged before the end
    assert last[1] == pytest.approx(-0.5 * (1 - 1 / 2))
    stats = last[4]["episode"]
    assert stats.repetition_penalty == pytest.approx(0.25)
    assert len(stats.answer_norms) == 2 and len(set(stats.answer_norms)) == 1


def test_repetition_lambda_and_format_penalty_are_settings() -> None:
    env = make(max_actions=2, repetition_lambda=0.2, format_penalty=-0.3)
    _, (_, reward, _, truncated, _) = run(env, ["<answer>84", "<answer>84"])
    assert truncated and reward == pytest.approx(-0.3 - 0.2 * 0.5)


def test_episode_stats_pad_turn_rewards_but_not_verifier() -> None:
    env = make(max_turns=5)
    steps = run(env, ["<answer>84</answer>", "<answer>84</answer>", "<answer>85"])
    stats = steps[-1][4]["episode"]
    assert stats.verifier == {"t1": 0, "t2": 0, "t3": 1}
    assert stats.turn_rewards == {"t1": 0.0, "t2": 0.0, "t3": 1.0, "t4": 0.0, "t5": 0.0}
    assert stats.t_star == 3 and stats.success and stats.num_turns == 3 and stats.num_actions == 3
    rep = 0.5 * (1 - 2 / 3)
    assert stats.repetition_penalty == pytest.approx(rep)
    assert stats.format_penalty == pytest.approx(-0.1)
    # The undiscounted Gymnasium return is sum r_t + format penalty - repetition penalty.
    total = sum(s[1] for s in steps)
    assert total == pytest.approx(sum(stats.turn_rewards.values()) + stats.format_penalty - stats.repetition_penalty)


def test_full_feedback_mode() -> None:
    env = make(feedback="full")
    observation, _ = env.reset(options={"problem_id": "p-add"})
    assert "Turn 1:" in observation and "What is 37 + 48?" in observation and "5 actions left" in observation
    observation, *_ = env.step("<answer>84</answer>")
    assert "Reward:" in observation and "Turn 2:" in observation and "You have 4 actions left" in observation
    assert SIMPLE_FEEDBACK in observation
    observation, *_ = env.step("<think>hmm")  # unreadable: no action, so still 4 left
    assert "Turn 3:" in observation and "You have 4 actions left" in observation


def test_step_out_of_order_raises() -> None:
    env = MathCorrectionEnv(problems=PROBLEMS)
    with pytest.raises(RuntimeError):
        env.step("<answer>85</answer>")
    env.reset(options={"problem_id": "p-add"})
    with pytest.raises(TypeError):
        env.step(85)  # type: ignore[arg-type]
    env.step("<answer>85</answer>")
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("<answer>85</answer>")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_turns": 0}, "max_turns"),
        ({"max_actions": 0}, "max_actions"),
        ({"feedback": "verbose"}, "verbose"),
        ({"parse": "loose"}, "loose"),
        ({"format_penalty": 0.1}, "format_penalty"),
        ({"repetition_lambda": -1.0}, "repetition_lambda"),
        ({"source": "mathqa"}, "source"),
        ({"num_problems": 0}, "num_problems"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MathEnvConfig(**kwargs)
    with pytest.raises(ValueError, match=message):
        gym.make(ENV_ID, **kwargs)


def test_render_ansi() -> None:
    env = make(render_mode="ansi")
    run(env, ["<answer>84", "<answer>85</answer>"])
    text = env.render()
    assert text.count("[user]") == 3 and text.count("[assistant]") == 2
    assert "<answer>84</answer>" in text and CORRECT_MESSAGE in text
    assert make().unwrapped.render() is None
    with pytest.raises(ValueError, match="render_mode"):
        MathCorrectionEnv(render_mode="human", problems=PROBLEMS)


def test_think_mode_primes_reasoning() -> None:
    env = make(think=True)
    observation, _ = env.reset(options={"problem_index": 0})
    assert "<think>" in observation
    assert env.unwrapped.reply_prefix == "<think>" and env.unwrapped.stop_strings == ("</answer>",)
    _, reward, terminated, _, info = env.step("<think>37 + 48 = 85</think><answer>85</answer>")
    assert terminated and reward == 1.0
    assert info["rendered_reply"] == "<think>37 + 48 = 85</think>\n<answer>85</answer>"


def test_config_object_and_keyword_settings() -> None:
    env = gym.make(ENV_ID, config=MathEnvConfig(max_turns=2, problems=PROBLEMS))
    assert env.unwrapped.config.max_turns == 2 and env.unwrapped.problems == PROBLEMS


def test_keyword_settings_beside_a_config_apply() -> None:
    """A keyword setting overrides the given config's field (what `drift` does with `--env-arg` beside a config);
    the config's other fields stay, and the given config object is not changed."""
    config = MathEnvConfig(max_turns=2, feedback="full", problems=PROBLEMS)
    for env in (MathCorrectionEnv(config, max_turns=3), gym.make(ENV_ID, config=config, max_turns=3).unwrapped):
        assert env.config.max_turns == 3
        assert env.config.feedback.value == "full" and env.problems == PROBLEMS
        env.reset(options={"problem_id": "p-add"})
        results = [env.step("<answer>1</answer>") for _ in range(3)]
        assert [truncated for *_, truncated, _ in results] == [False, False, True]  # the third reply ends it
    assert config.max_turns == 2
    with pytest.raises(ValueError, match="max_turns"):  # an override is validated like the field itself
        MathCorrectionEnv(config, max_turns=0)

"""GRPO on the shared core: one step moves probability to the better completion; `drift run --algo grpo` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from drift_algos.algorithms import GRPO, GRPOConfig
from drift_algos.records import Trajectory
from drift_algos.training.samples import turn_samples
from drift_algos.training.trainer import TrainConfig, Trainer
from drift_cli.main import app


def recorded(tokenizer, prompt_id: str, reply: str, reward: float) -> Trajectory:
    messages = [{"role": "user", "content": "What is 37 + 48?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return Trajectory(prompt_id, messages + [{"role": "assistant", "content": reply}], {"t1": int(reward == 1.0)},
                      {"t1": reward}, success=reward == 1.0,
                      turn_prompt_ids=[tokenizer(prompt, add_special_tokens=False)["input_ids"]],
                      turn_completion_ids=[tokenizer(reply, add_special_tokens=False)["input_ids"]])


def sequence_logp(trainer: Trainer, trajectory: Trajectory) -> float:
    (sample,) = turn_samples(trajectory)
    (logp,) = trainer.logprobs([sample])
    return sum(lp for lp, m in zip(logp, sample.loss_mask, strict=True) if m)


def test_grpo_batch_advantages_and_flat_groups(tiny_model_dir: Path) -> None:
    from drift_algos.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    trajectories = [recorded(tok, "a", "<answer>85</answer>", 1.0), recorded(tok, "a", "<answer>84</answer>", 0.0),
                    recorded(tok, "b", "<answer>1</answer>", 0.0), recorded(tok, "b", "<answer>2</answer>", 0.0)]
    batch = GRPO().batch(trajectories)
    assert batch.info == {"flat_groups": 1, "groups": 2}  # group b: equal returns, no gradient, reported
    assert len(batch.samples) == 2
    assert [s.advantages[0] for s in batch.samples] == pytest.approx([1.0, -1.0], abs=1e-5)
    assert batch.samples[0].input_ids == trajectories[0].turn_prompt_ids[0] + trajectories[0].turn_completion_ids[0]


@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_one_grpo_step_raises_the_better_completion(tiny_model_dir: Path, kl_coef: float) -> None:
    from transformers import AutoModelForCausalLM

    from drift_algos.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    good, bad = recorded(tok, "a", "<answer>85</answer>", 1.0), recorded(tok, "a", "<answer>84</answer>", 0.0)
    trainer = Trainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok,
                      TrainConfig(learning_rate=1e-3, batch_size=2, warmup_ratio=0.0))
    before_good, before_bad = sequence_logp(trainer, good), sequence_logp(trainer, bad)
    algorithm = GRPO(GRPOConfig(kl_coef=kl_coef))
    batch = algorithm.batch([good, bad])
    for sample, logp in zip(batch.samples, trainer.logprobs(batch.samples), strict=True):
        sample.old_logprobs = sample.ref_logprobs = logp
    result = trainer.fit(batch.samples, objective=algorithm.objective())
    assert result.steps == 1
    # At ratio 1 the loss is -mean_t A_t = -(n_good - n_bad) / (n_good + n_bad) over the assistant tokens.
    n_good, n_bad = len(good.turn_completion_ids[0]), len(bad.turn_completion_ids[0])
    assert result.history[0]["loss"] == pytest.approx(-(n_good - n_bad) / (n_good + n_bad), abs=1e-5)
    assert ("kl" in result.history[0]) == (kl_coef > 0)
    assert result.history[0].get("kl", 0.0) == pytest.approx(0.0, abs=1e-6)  # old = ref = current policy
    after_good, after_bad = sequence_logp(trainer, good), sequence_logp(trainer, bad)
    assert after_good > before_good
    assert after_bad < before_bad


def test_grpo_config_validation() -> None:
    for kwargs in ({"clip": 0.0}, {"clip": 1.5}, {"kl_coef": -1.0}, {"gamma": 2.0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            GRPOConfig(**kwargs)


@pytest.mark.parametrize("env", ["math", "mc", "code"])
def test_drift_run_grpo_on_every_builtin_env(env: str, tiny_model_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--env", env, "--algo", "grpo", "--model", str(tiny_model_dir),
                                      "--preset", "smoke", "--num-prompts", "2", "--n", "2", "--iterations", "2",
                                      "--eval-problems", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (out / "online_log.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in log] == [1, 2]
    for entry in log:
        assert entry["trajectories"] == 4 and entry["groups"] == 2
        assert {"reward", "success", "kl", "clip_fraction", "entropy", "tokens_per_s", "flat_groups"} <= set(entry)
        assert 0 <= entry["clip_fraction"] <= 1 and entry["kl"] >= 0
        if entry["samples"]:
            assert entry["entropy"] > 0 and entry["trained_tokens"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["algo"] == "grpo" and metrics["train"]["iterations"] == 2
    assert metrics["train"]["generated_tokens"] == sum(e["generated_tokens"] for e in log)
    for name in ("online_curve.png", "multi_at_k.png", "checkpoint/config.json", "eval_base.jsonl",
                 "eval_trained.jsonl", "config.json"):
        assert (out / name).is_file(), name
    assert "online iterations" in result.output


def test_grpo_weights_change_across_iterations(tiny_model_dir: Path, tmp_path: Path) -> None:
    # The policy the engine samples from is the one trained: after the run the checkpoint differs from the base.
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--env", "math", "--algo", "grpo", "--model", str(tiny_model_dir),
                                      "--preset", "smoke", "--num-prompts", "2", "--n", "4", "--iterations", "2",
                                      "--temperature", "1.0", "--lr", "1e-2", "--eval-problems", "2",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (out / "online_log.jsonl").read_text().splitlines()]
    trained = AutoModelForCausalLM.from_pretrained(out / "checkpoint")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = any(not torch.equal(a, b) for a, b in zip(trained.parameters(), base.parameters(), strict=True))
    assert changed == any(e["samples"] for e in log)


def test_drift_run_grpo_on_a_custom_env(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "examples" / "word_env"))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--env", "word_env:WordEnv", "--algo", "grpo", "--model",
                                      str(tiny_model_dir), "--preset", "smoke", "--num-prompts", "2", "--n", "2",
                                      "--iterations", "1", "--eval-problems", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (entry,) = [json.loads(line) for line in (out / "online_log.jsonl").read_text().splitlines()]
    assert entry["trajectories"] == 4
    assert json.loads((out / "config.json").read_text())["env_id"] == "word_env/WordEnv"


# -- PPO -------------------------------------------------------------------------------------------------------


def test_turn_level_rewards_carry_format_and_repetition_penalties() -> None:
    from drift_algos.algorithms.ppo import turn_level_rewards

    t = Trajectory("p", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                         {"role": "user", "content": "again"}, {"role": "assistant", "content": "a"}],
                   {"t1": 0, "t2": 0}, {"t1": 0.0, "t2": 0.0}, answer_norms=["4", "4"], format_penalty=-0.1,
                   reward_details={"t1": {"format_penalty": -0.1}, "t2": {"format_penalty": 0.0}})
    # Repeating one answer twice: 0.5 * (1 - 1/2) = 0.25 on the last turn; the format penalty on its own turn.
    assert turn_level_rewards(t, 0.5) == pytest.approx([-0.1, -0.25])


def test_turn_level_rewards_keep_a_reward_recorded_past_the_turns_taken() -> None:
    # The code environment pays an unsolved episode's partial credit at the turn limit (t3 here), also when the
    # answer limit ended it after two turns: PPO's last turn carries it, so the rewards still sum to the return.
    from drift_algos.algorithms.ppo import turn_level_rewards
    from drift_algos.weighting import WeighConfig

    t = Trajectory("p", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                         {"role": "user", "content": "again"}, {"role": "assistant", "content": "b"}],
                   {"t1": 0, "t2": 0, "t3": 0}, {"t1": 0.0, "t2": 0.0, "t3": 0.3}, answer_norms=["a", "b"],
                   reward_details={"t1": {"format_penalty": 0.0}, "t2": {"format_penalty": 0.0}})
    rewards = turn_level_rewards(t, 0.5)
    assert rewards == pytest.approx([0.0, 0.3])
    assert sum(rewards) == pytest.approx(WeighConfig(gamma=1.0, beta=1.0).return_of(t))


def test_ppo_advantages_follow_gae_over_the_turns(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from drift_algos.advantages import gae
    from drift_algos.algorithms import PPO, PPOConfig
    from drift_algos.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    good, bad = recorded(tok, "a", "<answer>85</answer>", 1.0), recorded(tok, "a", "<answer>84</answer>", 0.0)
    trainer = Trainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok, TrainConfig(warmup_ratio=0.0))
    algorithm = PPO(PPOConfig(whiten=False, gamma=1.0, lam=0.9))
    batch = algorithm.batch([good, bad])
    algorithm.complete(batch, trainer)
    sample = batch.samples[0]
    n = len(good.turn_completion_ids[0])
    assert sample.old_values == [0.0] * len(sample)  # the head starts at zero
    expected, targets = gae([0.0] * (n - 1) + [1.0], [0.0] * n, gamma=1.0, lam=0.9)
    assert [a for a, m in zip(sample.advantages, sample.loss_mask, strict=True) if m] == pytest.approx(expected)
    assert [g for g, m in zip(sample.returns, sample.loss_mask, strict=True) if m] == pytest.approx(targets)
    assert all(a == 0 for a, m in zip(sample.advantages, sample.loss_mask, strict=True) if not m)


def test_ppo_value_loss_falls_on_a_fixed_batch(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from drift_algos.algorithms import PPO, PPOConfig
    from drift_algos.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    trajectories = [recorded(tok, "a", "<answer>85</answer>", 1.0), recorded(tok, "a", "<answer>84</answer>", 0.0)]
    trainer = Trainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tok,
                      TrainConfig(learning_rate=1e-3, batch_size=2, warmup_ratio=0.0, epochs=1))
    algorithm = PPO(PPOConfig(value_clip=100.0))  # no value clipping: a plain regression to the fixed targets
    batch = algorithm.batch(trajectories)
    for sample, logp in zip(batch.samples, trainer.logprobs(batch.samples), strict=True):
        sample.old_logprobs = logp
    algorithm.complete(batch, trainer)
    objective = algorithm.objective()
    losses = [trainer.fit(batch.samples, objective=objective).history[0]["value_loss"] for _ in range(25)]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("env", ["math", "mc"])
def test_drift_run_ppo(env: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--env", env, "--algo", "ppo", "--model", str(tiny_model_dir),
                                      "--preset", "smoke", "--num-prompts", "2", "--n", "2", "--iterations", "2",
                                      "--eval-problems", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (out / "online_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(e["value_loss"] >= 0 and e["samples"] > 0 for e in log)
    assert log[0]["value_loss"] > 0  # rewards are nonzero (format penalties at least) or the head is not at zero


def test_online_checkpoints_on_a_schedule(tiny_model_dir: Path, tmp_path: Path) -> None:
    import dataclasses

    from drift_algos.pipeline import RunConfig, run
    from drift_algos.presets import smoke
    from drift_algos.training.online import OnlineConfig

    preset = smoke()
    preset.online = OnlineConfig(iterations=3, prompts_per_iteration=1, group_size=2, checkpoint_every=1)
    preset.eval = dataclasses.replace(preset.eval, num_problems=1)
    result = run(RunConfig(env="mc", model=str(tiny_model_dir), algo="grpo", preset=preset, out_dir=tmp_path / "r"))
    assert len(result.online.iterations) == 3
    # Every iteration but the last (which is the final checkpoint/) leaves a numbered checkpoint.
    assert sorted(p.name for p in (tmp_path / "r").glob("checkpoint*")) == ["checkpoint", "checkpoint-1",
                                                                           "checkpoint-2"]


@pytest.mark.parametrize("kwargs", [{"iterations": 0}, {"prompts_per_iteration": 0}, {"group_size": 0},
                                    {"checkpoint_every": -1}])
def test_online_config_validation(kwargs: dict) -> None:
    from drift_algos.training.online import OnlineConfig

    with pytest.raises(ValueError, match=next(iter(kwargs))):
        OnlineConfig(**kwargs)

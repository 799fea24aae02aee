"""Greedy multi-turn evaluation (scripted engine: exact numbers) and the whole `run` pipeline on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import pytest
import torch
import typer
from typer.testing import CliRunner

from drift_algos.algorithms import DriftConfig
from drift_algos.engines.transformers_engine import TransformersEngine
from drift_algos.evaluation.evaluator import (
    EvalConfig,
    evaluate,
    paired_difference,
    paired_multi_difference,
    run_evaluation,
)
from drift_algos.evaluation.metrics import rate_interval
from drift_algos.pipeline import RunConfig, env_factory, run
from drift_algos.presets import PRESETS, Preset, get_preset
from drift_algos.records import Trajectory, read_trajectories, write_trajectories
from drift_algos.rollout.agent import RolloutConfig
from drift_algos.training.trainer import TrainConfig
from drift_cli.main import app
from drift_envs import Problem, resolve_env_id

PROBLEMS = [Problem("p-c", "What is 5 + 5?", "10"), Problem("p-a", "What is 1 + 1?", "2"),
            Problem("p-b", "What is 3 + 4?", "7")]
# p-a solved at turn 1, p-b at turn 2, p-c never.
SCRIPT = {"What is 1 + 1?": ["2</answer>"], "What is 3 + 4?": ["6</answer>", "7</answer>"],
          "What is 5 + 5?": ["9</answer>", "8</answer>", "9</answer>"]}


def scripted_reply(conversation, params) -> str:
    question = next(q for q in SCRIPT if q in conversation[1]["content"])
    return SCRIPT[question][sum(m["role"] == "assistant" for m in conversation)]


def always_wrong(conversation, params) -> str:
    return "0</answer>"


def math_env(problems=PROBLEMS):
    return lambda: gym.make("drift/MathCorrection-v0", disable_env_checker=True, problems=problems, max_turns=3,
                            max_actions=3)


# -- evaluate ------------------------------------------------------------------------------------------------


def test_evaluate_with_a_scripted_engine(scripted_engine, tmp_path: Path) -> None:
    from drift_algos.records import TrajectoryWriter

    engine = scripted_engine(scripted_reply)
    with TrajectoryWriter(tmp_path / "eval.jsonl") as writer:
        result = evaluate(engine, math_env(), EvalConfig(num_problems=10, max_new_tokens=16, bootstrap_samples=200),
                          env_id="drift/MathCorrection-v0", model_name="script", writer=writer)
    m = result.metrics
    assert (m.episodes, m.max_turns, m.running) == (3, 3, [3, 2, 1])  # capped at the 3 problems there are
    assert m.accuracy == pytest.approx([1 / 3, 1 / 2, 0.0])
    assert m.multi == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert math.isnan(m.correction[0]) and m.correction[1:] == pytest.approx([1 / 2, 0.0])
    assert result.problem_ids == ["p-a", "p-b", "p-c"]  # sorted, so two evaluations pair up
    assert result.outcomes == [[True], [False, True], [False, False, False]]
    assert result.generated_tokens == 10 + 2 * 10 + 3 * 10
    for value, (low, high) in zip(m.multi, result.multi_ci, strict=True):
        assert low <= value <= high
    for value, (low, high) in zip(m.accuracy, result.accuracy_ci, strict=True):
        assert low <= value <= high

    # Greedy, one episode per problem, the first problems of the split in order.
    for _, params, _ in engine.calls:
        assert (params.temperature, params.n, params.max_new_tokens) == (0.0, 1, 16)
    assert [c[1]["content"].count("What is 5 + 5?") for c in engine.calls[0][0]] == [1, 0, 0]

    records = read_trajectories(tmp_path / "eval.jsonl")
    assert len(records) == 3 and {r.model for r in records} == {"script"}

    # Accuracy at turn 3 is 0 of the 1 episode still running: the count-based interval, not a bootstrap's [0, 0].
    assert result.accuracy_ci[2] == rate_interval(0, 1) and result.accuracy_ci[2][1] > 0.75
    assert result.accuracy_ci[1] == rate_interval(1, 2)

    d = result.to_dict()
    assert d["episodes"] == 3 and d["overall"] == pytest.approx(2 / 3)
    assert d["multi_at_k"] == m.multi and d["accuracy_per_turn"] == m.accuracy
    assert {"multi_ci", "accuracy_ci", "correction_rate", "running_per_turn", "generated_tokens", "elapsed_s",
            "tokens_per_s"} <= set(d)
    # The math environment ends an episode on success: no flip rates (they would only repeat accuracy).
    assert m.wrong_to_right is None and not {"wrong_to_right", "right_to_wrong"} & set(d)


def test_evaluate_takes_the_first_problems(scripted_engine) -> None:
    result = evaluate(scripted_engine(scripted_reply), math_env(), EvalConfig(num_problems=2, bootstrap_samples=10))
    assert result.problem_ids == ["p-a", "p-c"]  # PROBLEMS[:2], sorted by id
    assert result.metrics.multi == pytest.approx([0.5, 0.5, 0.5])


def test_paired_difference(scripted_engine) -> None:
    cfg = EvalConfig(num_problems=3, bootstrap_samples=300)
    base = evaluate(scripted_engine(always_wrong), math_env(), cfg)
    trained = evaluate(scripted_engine(scripted_reply), math_env(), cfg)
    assert base.metrics.multi == [0.0, 0.0, 0.0]
    diff, (low, high) = paired_difference(base, trained, 1, samples=300, seed=2)
    assert diff == pytest.approx(1 / 3)
    assert 0.0 <= low <= diff <= high <= 1.0  # trained is never worse on any problem
    diff3, ci3 = paired_difference(base, trained, 3, samples=300, seed=2)
    assert diff3 == pytest.approx(2 / 3)
    assert ci3 == paired_difference(base, trained, 3, samples=300, seed=2)[1]
    assert paired_difference(trained, base, 3)[0] == pytest.approx(-2 / 3)
    assert paired_difference(trained, trained, 2, samples=50) == (0.0, (0.0, 0.0))


def test_paired_difference_needs_the_same_problems(scripted_engine) -> None:
    cfg = EvalConfig(num_problems=3, bootstrap_samples=10)
    a = evaluate(scripted_engine(always_wrong), math_env(), cfg)
    b = evaluate(scripted_engine(always_wrong), math_env(PROBLEMS[:2] + [Problem("p-z", "What is 5 + 5?", "10")]),
                 cfg)
    with pytest.raises(ValueError, match="different problems"):
        paired_difference(a, b, 1)


@pytest.mark.parametrize("kwargs", [{"num_problems": 0}, {"max_new_tokens": 0}, {"bootstrap_samples": 0}])
def test_eval_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        EvalConfig(**kwargs)


# -- presets -------------------------------------------------------------------------------------------------


def test_presets() -> None:
    assert set(PRESETS) == {"smoke", "default", "paper"}
    for name in PRESETS:
        preset = get_preset(name)
        assert preset.name == name and preset.max_turns >= 1
    paper = get_preset("paper")
    assert (paper.rollout.num_prompts, paper.rollout.n, paper.max_turns) == (1800, 16, 5)
    assert (paper.drift.gamma, paper.drift.beta) == (0.9, 0.1)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_preset_descriptions_are_the_one_source_of_run_times() -> None:
    """`drift run --help` and the README's preset table say what each preset's description says."""
    params = {p.name: p.help for p in typer.main.get_command(app).commands["run"].params}
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(" `"): line.split("|")[5].strip() for line in readme.splitlines()
            if line.startswith("| `") and line.count("|") == 6}
    for name in PRESETS:
        description = get_preset(name).description
        assert f"{name}: {description}" in params["preset"]
        assert rows[name] == description


# -- the pipeline on the tiny model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with larger random weights: its greedy replies depend on the prompt and on training,
    so "the checkpoint reproduces the evaluation" compares varied text, not one repeated token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    path = tmp_path_factory.mktemp("sharp") / "model"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def tiny_preset() -> Preset:
    return Preset(
        "tiny", "a test-sized run", max_turns=2,
        rollout=RolloutConfig(num_prompts=2, n=2, temperature=1.0, max_new_tokens=8),
        drift=DriftConfig(),
        train=TrainConfig(learning_rate=1e-2, epochs=1, batch_size=4, warmup_ratio=0.0),
        eval=EvalConfig(num_problems=4, max_new_tokens=8, bootstrap_samples=50),
        env_args={"num_problems": 40},
    )


RUN_FILES = ("config.json", "trajectories.jsonl", "weighted.jsonl", "weight_stats.json", "train_log.jsonl",
             "checkpoint", "eval_base.jsonl", "eval_trained.jsonl", "metrics.json", "multi_at_k.png")


def comparable(result) -> str:
    """An evaluation's numbers without its timings, NaN-safe (NaN != NaN, but "NaN" == "NaN")."""
    return json.dumps({k: v for k, v in result.to_dict().items() if k not in ("elapsed_s", "tokens_per_s")})


def episodes(path: Path) -> list[list[dict[str, str]]]:
    return [r.messages for r in sorted(read_trajectories(path), key=lambda r: r.prompt_id)]


def test_pipeline_run_writes_the_run_directory_and_a_reproducible_checkpoint(sharp_model_dir: Path,
                                                                             tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "run"
    preset = tiny_preset()
    result = run(RunConfig(env="math", model=str(sharp_model_dir), algo="drift", preset=preset, out_dir=out))
    for name in RUN_FILES:
        assert (out / name).exists(), name
    assert (out / "multi_at_k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    config = json.loads((out / "config.json").read_text())
    assert config["algo"] == "drift" and config["env_id"] == "drift/MathCorrection-v0"
    assert config["env_args"] == {"num_problems": 40, "max_turns": 2, "max_actions": 2}
    trajectories = read_trajectories(out / "trajectories.jsonl")
    assert len(trajectories) == 4 and len({t.prompt_id for t in trajectories}) == 2
    weighted = [json.loads(line) for line in (out / "weighted.jsonl").read_text().splitlines()]
    assert len(weighted) == 4 and all("weight" in row and "return" in row for row in weighted)
    assert json.loads((out / "weight_stats.json").read_text())["num_trajectories"] == 4
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == result.train.steps == 1

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["algo"] == "drift" and metrics["preset"] == "tiny"
    assert metrics["base"]["episodes"] == metrics["trained"]["episodes"] == 4
    assert set(metrics["paired_difference"]) == {"multi@1", "multi@2"}
    assert metrics["rollout"]["episodes"] == 4
    assert metrics["train"]["samples"] == result.samples == 4
    assert result.rollout is not None and result.rollout.metrics.episodes == 4
    assert result.base.problem_ids == result.trained.problem_ids

    # The checkpoint holds the trained weights...
    base_weights = load_file(sharp_model_dir / "model.safetensors")
    trained_weights = load_file(out / "checkpoint" / "model.safetensors")
    assert any(not torch.equal(base_weights[k], trained_weights[k]) for k in base_weights)
    # ...and, loaded again, reproduces the trained model's evaluation exactly.
    engine = TransformersEngine.from_pretrained(str(out / "checkpoint"))
    test_env = env_factory(resolve_env_id("math"), {**config["env_args"], "split": "test"})
    again = evaluate(engine, test_env, preset.eval)
    assert again.outcomes == result.trained.outcomes and again.problem_ids == result.trained.problem_ids
    assert comparable(again) == comparable(result.trained)
    from drift_algos.records import TrajectoryWriter

    with TrajectoryWriter(tmp_path / "again.jsonl") as writer:
        evaluate(engine, test_env, preset.eval, writer=writer)
    assert episodes(tmp_path / "again.jsonl") == episodes(out / "eval_trained.jsonl")

    # One documented command repeats the run's evaluations exactly: `drift eval --run RUN`.
    runner = CliRunner()
    for which in ("trained", "base"):
        again_json = tmp_path / f"again_{which}.json"
        done = runner.invoke(app, ["eval", "--run", str(out), "--which", which, "--out", str(again_json)])
        assert done.exit_code == 0, done.output
        assert episodes(again_json.with_suffix(".jsonl")) == episodes(out / f"eval_{which}.jsonl")
        assert ({r.model for r in read_trajectories(again_json.with_suffix(".jsonl"))}
                == {r.model for r in read_trajectories(out / f"eval_{which}.jsonl")})
        timings = ("elapsed_s", "tokens_per_s")
        written = {k: v for k, v in json.loads(again_json.read_text()).items() if k not in timings}
        recorded = {k: v for k, v in metrics[which].items() if k not in timings}
        assert json.dumps({k: written[k] for k in recorded}) == json.dumps(recorded)
    spec = run_evaluation(out)
    assert spec.eval == preset.eval and spec.env_args == {**config["env_args"], "split": "test"}
    assert spec.model == str(out / "checkpoint") and spec.adapter is None
    assert run_evaluation(out, "base").model == str(sharp_model_dir)
    clash = runner.invoke(app, ["eval", "--run", str(out), "--seed", "1", "--num-problems", "3"])
    assert clash.exit_code == 2 and "--num-problems, --seed" in clash.output and "Traceback" not in clash.output

    with pytest.raises(FileExistsError, match="already holds a finished run"):
        run(RunConfig(env="math", model=str(sharp_model_dir), algo="drift", preset=preset, out_dir=out))


def test_eval_run_refuses_what_is_not_a_run_directory(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["eval", "--run", str(tmp_path)])
    assert missing.exit_code == 2 and "config.json: not found" in missing.output
    (tmp_path / "config.json").write_text('{"env": "math"}')
    broken = runner.invoke(app, ["eval", "--run", str(tmp_path)])
    assert broken.exit_code == 2 and "not a `drift run` configuration" in broken.output
    with pytest.raises(ValueError, match="'base' or 'trained'"):
        run_evaluation(tmp_path, "best")
    alone = runner.invoke(app, ["eval", "--which", "base"])
    assert alone.exit_code == 2 and "give --run RUN_DIR too" in alone.output


def test_eval_defaults_match_the_default_preset() -> None:
    # `drift eval` with no flags evaluates what `drift run` (default preset, seed 0) evaluates.
    default = get_preset("default")
    assert EvalConfig().num_problems == default.eval.num_problems and EvalConfig().seed == 0
    params = {p.name: p.default for p in typer.main.get_command(app).commands["eval"].params}
    assert (params["num_problems"], params["max_turns"], params["seed"]) == (
        default.eval.num_problems, default.max_turns, 0)


def test_paired_multi_difference_by_hand() -> None:
    # Three problems: the first evaluation solves problem 1 at turn 1; the second solves 1 and 2 at turn 2.
    first = [[True], [False, False], [False, False]]
    second = [[False, True], [False, True], [False, False]]
    assert paired_multi_difference(first, second, 1, samples=50)[0] == pytest.approx(-1 / 3)
    # multi@2 gains per problem are 0, 1, 0: a resample of three has 0, 1, 2 or 3 gains with probabilities
    # 8/27, 12/27, 6/27, 1/27, so the 2.5th percentile is 0 and the 97.5th is 1 (P(at most 2) = 26/27 < 0.975).
    diff, ci = paired_multi_difference(first, second, 2, samples=4000)
    assert diff == pytest.approx(1 / 3) and ci == (0.0, 1.0)
    with pytest.raises(ValueError):
        paired_multi_difference(first, second[:2], 1)


def test_pipeline_from_a_trajectory_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Rejection SFT needs a success, which the random model never produces: give it trajectories."""
    user = {"role": "user", "content": "What is 1 + 1?"}
    given = tmp_path / "given.jsonl"
    write_trajectories(given, [
        Trajectory("q1", [user, {"role": "assistant", "content": "<answer>2</answer>"}], {"t1": 1, "t2": 0},
                   {"t1": 1.0, "t2": 0.0}, gold="2", t_star=1, answer_norms=["2"], success=True),
        Trajectory("q1", [user, {"role": "assistant", "content": "<answer>3</answer>"}], {"t1": 0, "t2": 0},
                   {"t1": 0.0, "t2": 0.0}, gold="2", answer_norms=["3"]),
    ])
    out = tmp_path / "run"
    result = run(RunConfig(env="math", model=str(tiny_model_dir), algo="rft", preset=tiny_preset(), out_dir=out,
                           trajectories=given))
    assert (out / "trajectories.jsonl").read_text() == given.read_text()
    assert result.rollout is None and result.samples == 1 and result.skipped == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rollout"] is None
    assert metrics["train"]["samples"] == 1 and metrics["train"]["weight_mass_skipped"] == pytest.approx(0.5)
    for name in RUN_FILES:
        assert (out / name).exists(), name


def test_pipeline_refuses_an_algorithm_without_samples(tiny_model_dir: Path, tmp_path: Path) -> None:
    given = tmp_path / "given.jsonl"
    user = {"role": "user", "content": "What is 1 + 1?"}
    write_trajectories(given, [Trajectory("q1", [user, {"role": "assistant", "content": "<answer>3</answer>"}],
                                          {"t1": 0}, {"t1": 0.0})])
    with pytest.raises(ValueError, match="no training samples"):
        run(RunConfig(env="math", model=str(tiny_model_dir), algo="rft", preset=tiny_preset(),
                      out_dir=tmp_path / "run", trajectories=given))


def test_run_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown algorithm 'a2c'"):
        RunConfig(env="math", model="m", algo="a2c", preset=tiny_preset(), out_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="trajectories file not found"):
        RunConfig(env="math", model="m", algo="drift", preset=tiny_preset(), out_dir=tmp_path,
                  trajectories=tmp_path / "missing.jsonl")


def test_eval_run_reloads_a_lora_checkpoint_on_its_base_model(sharp_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    preset = tiny_preset()
    preset.train = TrainConfig(learning_rate=1e-2, epochs=1, batch_size=4, warmup_ratio=0.0, lora=True)
    run(RunConfig(env="math", model=str(sharp_model_dir), algo="drift", preset=preset, out_dir=out))
    spec = run_evaluation(out)
    assert (spec.model, spec.adapter) == (str(sharp_model_dir), str(out / "checkpoint"))
    # The adapter changed the replies, so reproducing them needs it loaded.
    assert episodes(out / "eval_trained.jsonl") != episodes(out / "eval_base.jsonl")
    again = tmp_path / "again.json"
    done = CliRunner().invoke(app, ["eval", "--run", str(out), "--out", str(again)])
    assert done.exit_code == 0, done.output
    assert episodes(again.with_suffix(".jsonl")) == episodes(out / "eval_trained.jsonl")
    assert json.loads(again.read_text())["adapter"] == str(out / "checkpoint")

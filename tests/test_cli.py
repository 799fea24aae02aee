"""The `drift` command end to end with the tiny model, and its one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drift_algos.records import Trajectory, read_trajectories, write_trajectories
from drift_cli.main import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every command in a temporary directory: default outputs (runs/...) must not land in the repo."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def ok(*args: str):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture()
def trajectories_file(tmp_path: Path) -> Path:
    """Two groups, each with one solved trajectory."""
    records = []
    for q, gold, wrong in (("q1", "2", "3"), ("q2", "7", "6")):
        user = {"role": "user", "content": f"Problem {q}"}
        records.append(Trajectory(q, [user, {"role": "assistant", "content": f"<answer>{gold}</answer>"}],
                                  {"t1": 1, "t2": 0}, {"t1": 1.0, "t2": 0.0}, gold=gold, t_star=1, answer_norms=[gold],
                                  success=True))
        records.append(Trajectory(q, [user, {"role": "assistant", "content": f"<answer>{wrong}</answer>"},
                                      {"role": "user", "content": "Incorrect. Please think again."},
                                      {"role": "assistant", "content": f"<answer>{wrong}</answer>"}],
                                  {"t1": 0, "t2": 0}, {"t1": 0.0, "t2": 0.0}, gold=gold, answer_norms=[wrong, wrong]))
    path = tmp_path / "given.jsonl"
    write_trajectories(path, records)
    return path


# -- commands that work ----------------------------------------------------------------------------------------


def test_envs_lists_the_builtins() -> None:
    out = ok("envs").output
    for env_id in ("drift/MathCorrection-v0", "drift/MultipleChoice-v0", "drift/CodeFeedback-v0"):
        assert env_id in out
    assert "math" in out and "builtin" in out


def test_rollout_writes_jsonl_and_summary(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    result = ok("rollout", "--model", tiny_model_dir, "--num-prompts", 2, "--n", 2, "--max-turns", 2,
                "--max-new-tokens", 6, "--seed", 3, "--out", out)
    records = read_trajectories(out)
    assert len(records) == 4 and len({r.prompt_id for r in records}) == 2
    assert all(r.num_turns <= 2 and r.seed == 3 and r.sampling.max_new_tokens == 6 for r in records)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["env_id"] == "drift/MathCorrection-v0" and summary["episodes"] == 4
    assert len(summary["accuracy_per_turn"]) == len(summary["multi_at_k"]) == 2
    assert summary["config"]["n"] == 2 and summary["config"]["max_new_tokens"] == 6
    # The per-turn table, and where the file went.
    assert "Rollout: 4 episodes over 2 prompts" in result.output
    for column in ("turn", "running", "accuracy", "multi@k"):
        assert column in result.output
    assert "wrote 4 trajectories" in result.output


def test_rollout_default_output_goes_under_runs(tiny_model_dir: Path, in_tmp: Path) -> None:
    ok("rollout", "--model", tiny_model_dir, "--num-prompts", 1, "--n", 1, "--max-turns", 1, "--max-new-tokens", 2)
    written = list((in_tmp / "runs" / "rollouts").glob("math-*.jsonl"))
    assert len(written) == 1 and len(read_trajectories(written[0])) == 1


def test_eval_writes_metrics(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    result = ok("eval", "--model", tiny_model_dir, "--num-problems", 4, "--max-turns", 2, "--max-new-tokens", 6,
                "--out", out)
    metrics = json.loads(out.read_text())
    assert metrics["episodes"] == 4 and metrics["max_turns"] == 2 and metrics["adapter"] is None
    assert len(metrics["multi_at_k"]) == len(metrics["multi_ci"]) == 2
    assert len(read_trajectories(out.with_suffix(".jsonl"))) == 4
    assert "greedy" in result.output and "multi@1" in result.output  # the table (its title wraps at 80 columns)


def test_train_then_eval_with_the_adapter(tiny_model_dir: Path, trajectories_file: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "adapter"
    result = ok("train", trajectories_file, "--out", ckpt, "--model", tiny_model_dir, "--preset", "smoke",
                "--lora", "--epochs", 2, "--batch-size", 2, "--lr", 1e-3)
    assert (ckpt / "adapter_config.json").is_file() and (ckpt / "train_log.jsonl").is_file()
    assert json.loads((ckpt / "drift_train_config.json").read_text())["epochs"] == 2
    assert "drift: 4 samples" in result.output
    out = tmp_path / "eval.json"
    ok("eval", "--model", tiny_model_dir, "--adapter", ckpt, "--num-problems", 2, "--max-turns", 1,
       "--max-new-tokens", 4, "--out", out)
    assert json.loads(out.read_text())["adapter"] == str(ckpt)


def test_train_full_with_rft(tiny_model_dir: Path, trajectories_file: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "full"
    result = ok("train", trajectories_file, "--out", ckpt, "--algo", "rft", "--model", tiny_model_dir,
                "--preset", "smoke", "--full", "--batch-size", 2)
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
    assert "rft: 2 samples" in result.output  # the two successes


def test_full_training_into_an_adapter_folder_loads_the_new_model(tiny_model_dir: Path, trajectories_file: Path,
                                                                  tmp_path: Path) -> None:
    import shutil

    import torch

    from drift_algos.models import load_model

    ckpt = tmp_path / "ckpt"
    ok("train", trajectories_file, "--out", ckpt, "--model", tiny_model_dir, "--preset", "smoke", "--lora",
       "--batch-size", 2, "--lr", 1e-2)
    ok("train", trajectories_file, "--out", ckpt, "--model", tiny_model_dir, "--preset", "smoke", "--full",
       "--batch-size", 2)
    assert not (ckpt / "adapter_config.json").exists() and not list(ckpt.glob("adapter_model.*"))
    # The full model alone, copied where no adapter can be found, against what loading the folder gives.
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(ckpt / name, alone / name)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        loaded = load_model(str(ckpt), device="cpu")(ids).logits
        expected = load_model(str(alone), device="cpu")(ids).logits
    assert torch.equal(loaded, expected)


def test_failed_run_removes_the_folder_it_created_but_never_an_existing_one(tmp_path: Path) -> None:
    def failed(result) -> None:  # run prints its stage lines before the error
        assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1].startswith("error: model")

    failed(invoke("run", "--out", tmp_path / "new", "--model", tmp_path / "no-model"))
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    failed(invoke("run", "--out", existing, "--model", tmp_path / "no-model"))
    assert (existing / "notes.txt").read_text() == "mine"


def test_failed_train_leaves_no_checkpoint_folder(trajectories_file: Path, tmp_path: Path) -> None:
    one_line_error(invoke("train", trajectories_file, "--out", tmp_path / "ckpt", "--model", tmp_path / "no-model"))
    assert not (tmp_path / "ckpt").exists()


def test_run_smoke_preset_with_overrides(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = ok("run", "--model", tiny_model_dir, "--preset", "smoke", "--num-prompts", 2, "--n", 2,
                "--eval-problems", 4, "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["preset"] == "smoke" and metrics["base"]["episodes"] == 4
    assert metrics["rollout"]["episodes"] == 4
    assert (out / "checkpoint" / "config.json").is_file() and (out / "multi_at_k.png").is_file()
    assert "multi@1" in result.output and "run directory" in result.output


def test_run_from_trajectories(tiny_model_dir: Path, trajectories_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    ok("run", "--model", tiny_model_dir, "--preset", "smoke", "--algo", "sft", "--trajectories", trajectories_file,
       "--eval-problems", 2, "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rollout"] is None and metrics["train"]["samples"] == 4
    assert (out / "trajectories.jsonl").read_text() == trajectories_file.read_text()


# -- bad input: exit code 2, one line, no traceback ------------------------------------------------------------


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture()
def bad_dataset(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "What is 1 + 1?", "answer": "#### 2"}\n{"q": "no fields we know"}\n')
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rollout", "--env", "nope"], "unknown environment 'nope'"),
        (["eval", "--env", "nope"], "unknown environment 'nope'"),
        (["rollout", "--model", "no-such-model", "--out", "r.jsonl"], "model 'no-such-model' not found"),
        (["eval", "--model", "./missing-dir"], "model './missing-dir' not found"),
        (["rollout", "--source", "gsm8k", "--data", "{bad}", "--out", "r.jsonl"], "bad.jsonl:2: missing field"),
        (["rollout", "--model", "{tiny}", "--out", "missing/r.jsonl"], "output directory does not exist"),
        (["eval", "--model", "{tiny}", "--out", "missing/e.json"], "output directory does not exist"),
        (["train", "{trajectories}", "--out", "missing/ckpt"], "parent directory does not exist"),
        (["run", "--out", "missing/run"], "parent directory does not exist"),
        (["run", "--algo", "a2c", "--model", "{tiny}"], "unknown algorithm 'a2c'"),
        (["train", "{trajectories}", "--out", "ckpt", "--algo", "a2c"], "unknown algorithm 'a2c'"),
        (["run", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "{trajectories}", "--out", "ckpt", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "missing.jsonl", "--out", "ckpt"], "missing.jsonl: no such file"),
        (["run", "--trajectories", "missing.jsonl", "--model", "{tiny}"], "trajectories file not found"),
        (["rollout", "--env-arg", "novalue", "--out", "r.jsonl"], "--env-arg expects key=value"),
        (["rollout", "--model", "{tiny}", "--num-prompts", "5000", "--out", "r.jsonl"], "asked for 5000 prompts"),
        (["rollout", "--engine", "nope", "--out", "r.jsonl"], "unknown engine 'nope' (available: transformers"),
        (["eval", "--engine", "nope"], "unknown engine 'nope'"),
        (["run", "--engine", "nope", "--out", "run"], "unknown engine 'nope'"),
    ],
)
def test_bad_input_is_a_one_line_error(args: list[str], message: str, tiny_model_dir: Path, bad_dataset: Path,
                                       trajectories_file: Path, in_tmp: Path) -> None:
    args = [a.format(tiny=tiny_model_dir, bad=bad_dataset, trajectories=trajectories_file) for a in args]
    line = one_line_error(invoke(*args))
    assert message in line
    assert not (in_tmp / "runs").exists()  # nothing started


@pytest.mark.parametrize(
    ("args", "option"),
    [(["rollout", "--n", "0"], "--n"), (["run", "--num-prompts", "0"], "--num-prompts"),
     (["eval", "--max-turns", "0"], "--max-turns"), (["rollout", "--top-p", "1.5"], "--top-p"),
     (["train", "x.jsonl", "--out", "c", "--threads", "0"], "--threads"), (["run", "--threads", "0"], "--threads")],
)
def test_out_of_range_options_are_usage_errors(args: list[str], option: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.stderr
    assert result.stdout == ""


def test_no_arguments_shows_help() -> None:
    result = invoke()
    assert result.exit_code == 2  # a missing command is a usage error, with the help shown
    for command in ("envs", "rollout", "weigh", "train", "eval", "run"):
        assert command in result.output

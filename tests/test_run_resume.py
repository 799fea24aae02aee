"""`drift run --resume RUN_DIR`: a run stopped at any stage (a crash during the rollouts, the training, the evaluation;
Ctrl-C of a real `drift run`) finishes as the uninterrupted run with the same seed: the same trajectories row for row,
the same training log and weights (parameters within ``atol=1e-7``: on CPU the resumed arithmetic is the same), the
same evaluation episodes and metrics (timings aside; every other number is equal, not only close)."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from drift_algos.evaluation.evaluator import EvalConfig
from drift_algos.pipeline import Reporter, RunConfig, run
from drift_algos.presets import smoke
from drift_algos.rollout.agent import RolloutConfig
from drift_algos.training.online import OnlineConfig
from drift_algos.training.trainer import TrainConfig
from drift_cli.main import app

TIMINGS = ("elapsed_s", "tokens_per_s", "finished")


class Boom(Exception):
    """Stands for a crash."""


class CrashAt(Reporter):
    """Raises :class:`Boom` at the ``count``-th progress report of ``stage``."""

    def __init__(self, stage: str, count: int):
        self.target, self.count, self.calls = stage, count, 0

    def progress(self, stage: str):
        if stage != self.target:
            return None

        def update(done: int, total: int, extra: float) -> None:
            self.calls += 1
            if self.calls == self.count:
                raise Boom(f"{stage} #{self.calls}")

        return update


def tiny_preset(algo: str):
    preset = smoke()
    # max_live 2: one group at a time, so a crash in the rollouts leaves whole groups behind it.
    preset.rollout = RolloutConfig(num_prompts=4, n=2, temperature=1.0, max_new_tokens=8, max_live=2)
    preset.train = TrainConfig(learning_rate=1e-2, epochs=2, batch_size=2, warmup_ratio=0.0, save_every=1)
    preset.eval = EvalConfig(num_problems=3, max_new_tokens=8, bootstrap_samples=50)
    preset.online = OnlineConfig(iterations=3, prompts_per_iteration=2, group_size=2)
    preset.env_args = {"num_problems": 40}
    if algo == "ppo":
        preset.train = dataclasses.replace(preset.train, learning_rate=1e-3)
    return preset


def config(model_dir: Path, out: Path, algo: str) -> RunConfig:
    return RunConfig(env="math", model=str(model_dir), algo=algo, preset=tiny_preset(algo), out_dir=out)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(checkpoint / "model.safetensors")


def assert_same_run(out: Path, reference: Path, *, online: bool) -> None:
    if online:
        assert without_timings(rows(out / "online_log.jsonl")) == without_timings(rows(reference / "online_log.jsonl"))
    else:
        assert rows(out / "trajectories.jsonl") == rows(reference / "trajectories.jsonl")
        assert rows(out / "weighted.jsonl") == rows(reference / "weighted.jsonl")
        log, expected = rows(out / "train_log.jsonl"), rows(reference / "train_log.jsonl")
        assert [r["step"] for r in log] == [r["step"] for r in expected]
        assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in expected], rel=1e-9)
    trained, expected_weights = weights(out / "checkpoint"), weights(reference / "checkpoint")
    assert set(trained) == set(expected_weights)
    for name, value in expected_weights.items():
        torch.testing.assert_close(trained[name], value, atol=1e-7, rtol=0.0, msg=name)
    assert rows(out / "eval_base.jsonl") == rows(reference / "eval_base.jsonl")
    # The trained model's episodes name its checkpoint folder, which differs: everything else is equal.
    unnamed = [{**r, "model": None} for r in rows(out / "eval_trained.jsonl")]
    assert unnamed == [{**r, "model": None} for r in rows(reference / "eval_trained.jsonl")]
    metrics, expected_metrics = (json.loads((d / "metrics.json").read_text()) for d in (out, reference))
    assert without_timings(metrics) == without_timings(expected_metrics)


@pytest.fixture(scope="module")
def references(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted runs, one per algorithm, made on first use."""
    made: dict[str, Path] = {}

    def get(algo: str) -> Path:
        if algo not in made:
            out = tmp_path_factory.mktemp(f"reference-{algo}") / "run"
            run(config(tiny_model_dir, out, algo))
            made[algo] = out
        return made[algo]

    return get


def test_offline_run_crashed_in_every_stage_resumes_to_the_uninterrupted_run(tiny_model_dir: Path, tmp_path: Path,
                                                                              references) -> None:
    reference = references("drift")
    out = tmp_path / "run"
    cfg = config(tiny_model_dir, out, "drift")
    with pytest.raises(Boom):  # in the rollouts, after the first group's two turns: one whole group on disk
        run(cfg, CrashAt("rollout", 3))
    kept = rows(out / "trajectories.jsonl")
    assert 0 < len(kept) < 8 and {r["group_index"] for r in kept} == {0}
    with pytest.raises(Boom):  # in the training, at step 2 (step 1 saved)
        run(cfg, CrashAt("train", 2), resume=True)
    assert rows(out / "trajectories.jsonl") == rows(reference / "trajectories.jsonl")
    assert [p.name for p in (out / "resume").iterdir()] == ["step-1"]
    base_written = (out / "eval_base.jsonl").stat()
    with pytest.raises(Boom):  # in the evaluation of the trained model
        run(cfg, CrashAt("eval trained", 1), resume=True)
    assert not (out / "eval_trained.jsonl").exists() and not (out / "metrics.json").exists()
    # The CLI's way: the run's own settings from its config.json.
    done = CliRunner().invoke(app, ["run", "--resume", str(out)])
    assert done.exit_code == 0, done.output
    assert (out / "eval_base.jsonl").stat().st_mtime_ns == base_written.st_mtime_ns  # written once, not redone
    assert_same_run(out, reference, online=False)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_online_run_resumes_after_its_last_finished_iteration(algo: str, tiny_model_dir: Path, tmp_path: Path,
                                                             references) -> None:
    reference = references(algo)
    out = tmp_path / "run"
    cfg = config(tiny_model_dir, out, algo)
    with pytest.raises(Boom):  # after iteration 1 (saved): iterations 2 and 3 are left
        run(cfg, CrashAt("iterations", 1))
    assert [r["iteration"] for r in rows(out / "online_log.jsonl")] == [1]
    assert [p.name for p in (out / "resume").iterdir()] == ["iteration-1"]
    if algo == "ppo":
        assert (out / "resume" / "iteration-1" / "algorithm.safetensors").is_file()  # the value head
    result = run(cfg, resume=True)
    assert [int(e["iteration"]) for e in result.online.iterations] == [1, 2, 3]
    assert_same_run(out, reference, online=True)
    assert sorted(p.name for p in (out / "resume").iterdir()) == ["iteration-2", "iteration-3"]  # keep_last 2


def test_a_fresh_run_refuses_an_unfinished_one_and_resume_refuses_other_flags(tiny_model_dir: Path,
                                                                              tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(Boom):
        run(config(tiny_model_dir, out, "drift"), CrashAt("rollout", 3))
    settings = (out / "config.json").read_text()
    other = config(tiny_model_dir, out, "drift")
    other.preset.rollout = dataclasses.replace(other.preset.rollout, seed=7)
    with pytest.raises(FileExistsError, match=f"drift run --resume {out}"):
        run(other)
    assert (out / "config.json").read_text() == settings  # the unfinished run's settings are left alone
    result = CliRunner().invoke(app, ["run", "--resume", str(out), "--lr", "0.1"])
    assert result.exit_code == 2
    assert "--lr: --resume takes the run's settings from" in result.output
    missing = CliRunner().invoke(app, ["run", "--resume", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "config.json not found" in missing.output


def test_resume_keeps_the_evaluation_seeds_of_an_environment_without_split(tiny_model_dir: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Such an environment evaluates on seed + EVAL_SEED_OFFSET; config.json holds the shifted seed, and a resumed
    # run must use it as it is, not shift it again.
    from drift_algos.pipeline import EVAL_SEED_OFFSET

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "run"
    cfg = dataclasses.replace(config(tiny_model_dir, out, "drift"), env="reply_env:SplitlessReplyEnv")
    cfg.preset.env_args = {}
    with pytest.raises(Boom):
        run(cfg, CrashAt("eval base", 1))
    assert json.loads((out / "config.json").read_text())["preset"]["eval"]["seed"] == EVAL_SEED_OFFSET
    done = CliRunner().invoke(app, ["run", "--resume", str(out)])
    assert done.exit_code == 0, done.output
    for which in ("base", "trained"):
        assert {r["seed"] for r in rows(out / f"eval_{which}.jsonl")} == {EVAL_SEED_OFFSET}
    assert {r["seed"] for r in rows(out / "trajectories.jsonl")} == {0}


def test_ctrl_c_of_a_real_drift_run_then_resume(tiny_model_dir: Path, tmp_path: Path, references) -> None:
    # A real `drift run` (grpo) stopped with SIGINT once its first iteration is saved: exit code 130 and how to
    # resume; `drift run --resume` then finishes it as the uninterrupted run.
    reference = references("grpo")
    out = tmp_path / "run"
    with pytest.raises(Boom):  # a run directory with the tiny settings (config.json), stopped at its first eval
        run(config(tiny_model_dir, out, "grpo"), CrashAt("eval base", 1))
    cmd = [sys.executable, "-m", "drift_cli.main", "run", "--resume", str(out), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "resume" / "iteration-1").is_dir():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"drift run --resume {out}" in stderr and "Traceback" not in stderr, stderr
    assert not (out / "metrics.json").exists()
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, reference, online=True)

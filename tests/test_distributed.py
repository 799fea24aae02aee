"""Training under `accelerate launch`: 2 CPU processes (gloo) equal one process on the same global batch.

One real `accelerate launch --config_file examples/accelerate/cpu_ddp.yaml` subprocess starts 2 processes that run,
in one process group (tests/launch_commands.py), three drift commands on the tiny model, each with
``--batch-size 2 --grad-accum 1``:

- `drift train` with DRIFT's weights and the batch-normalised loss ``sum w nll / sum w`` (the weight sum reduced over
  both processes);
- `drift run --algo drift`: the rollout groups collected in two shards and merged, the evaluations sharded and
  gathered, training with ``mean_i(w_i nll_i)`` (the sample count reduced over both processes);
- `drift run --algo grpo`: each process rolls out its share of each iteration's groups, training data-parallel.

The same commands in this one process with ``--grad-accum 2`` see the same two micro-batches per optimiser step.
Tolerance: parameters within ``atol=1e-6`` and logged losses within ``rel=1e-6``. Measured on the 2-core build
machine: equal to the bit, since each micro-batch is computed alone in both settings and gloo's sum of two
gradients, scaled by powers of two, rounds as one process's accumulation does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from drift_algos.records import Trajectory, write_trajectories
from drift_cli.main import app

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
CONFIG = REPO / "examples" / "accelerate" / "cpu_ddp.yaml"
PARAMS = {"atol": 1e-6, "rtol": 0.0}
LOSS_REL = 1e-6


def trajectories_file(path: Path) -> Path:
    """9 trajectories of varied length and return in 3 groups: unequal weights, 5 micro-batches of 2 an epoch (so
    the last optimiser step has one micro-batch and the second process runs a zero-weight padding one)."""
    records = []
    for q in range(3):
        user = {"role": "user", "content": f"What is {q} + {q}?"}
        for k in range(3):
            solved = k == q % 3
            reply = f"<answer>{2 * q + k}</answer>" + " 1 2 3" * k
            records.append(Trajectory(f"q{q}", [user, {"role": "assistant", "content": reply}], {"t1": int(solved)},
                                      {"t1": float(solved)}, gold=str(2 * q), t_star=1 if solved else None,
                                      answer_norms=[str(2 * q + k)], success=solved))
    write_trajectories(path, records)
    return path


def commands(model: Path, data: Path, out: Path, grad_accum: int) -> list[list[str]]:
    common = ["--model", str(model), "--preset", "smoke", "--batch-size", "2", "--grad-accum", str(grad_accum),
              "--lr", "1e-2", "--threads", "1"]
    env = ["--env", "reply_env:ReplyEnv", "--eval-problems", "3", "--n", "2"]
    return [
        ["train", str(data), "--out", str(out / "train"), "--beta", "0.5", "--normalise-weights", "--epochs", "2",
         *common],
        ["run", "--algo", "drift", "--num-prompts", "5", "--epochs", "2", "--out", str(out / "drift"), *env, *common],
        ["run", "--algo", "grpo", "--num-prompts", "3", "--iterations", "2", "--out", str(out / "grpo"), *env,
         *common],
    ]


def free_port() -> int:
    """A loopback port nobody listens on now (other jobs on the machine may launch torchrun too)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def assert_close_weights(folder: Path, reference: Path, base: Path) -> None:
    got, expected, start = weights(folder), weights(reference), weights(base)
    assert set(got) == set(expected)
    assert any(not torch.equal(expected[k], start[k]) for k in start), f"{reference}: training changed nothing"
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, **PARAMS, msg=name)


def assert_same_losses(log: list[dict], expected: list[dict], key: str) -> None:
    assert [r[key] for r in log] == [r[key] for r in expected]  # one line per step: the main process alone writes
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in expected], rel=LOSS_REL, abs=1e-12)


def test_two_cpu_processes_train_as_one_on_the_same_global_batch(tiny_model_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("accelerate's launcher is not installed beside this Python")
    data = trajectories_file(tmp_path / "data.jsonl")
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(CONFIG),
              "--main_process_port", str(free_port()), str(TESTS / "launch_commands.py"),
              *(" ".join(c) for c in commands(tiny_model_dir, data, two, grad_accum=1))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(launch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)

    monkeypatch.syspath_prepend(str(TESTS))  # the single-process runs, here, while the launch runs
    for command in commands(tiny_model_dir, data, one, grad_accum=2):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-4000:]
    assert "Traceback" not in stderr

    # drift train, sum w nll / sum w
    assert_close_weights(two / "train", one / "train", tiny_model_dir)
    assert_same_losses(rows(two / "train" / "train_log.jsonl"), rows(one / "train" / "train_log.jsonl"), "step")
    assert len(rows(one / "train" / "train_log.jsonl")) == 6  # 3 steps an epoch, the last of one micro-batch

    # drift run --algo drift: merged shards, sharded evaluation, mean w nll
    assert rows(two / "drift" / "trajectories.jsonl") == rows(one / "drift" / "trajectories.jsonl")
    assert len(rows(one / "drift" / "trajectories.jsonl")) == 10
    assert sorted(p.name for p in (two / "drift" / "shards").iterdir()) == [
        "trajectories-0-of-2.jsonl", "trajectories-0-of-2.meta.json", "trajectories-1-of-2.jsonl",
        "trajectories-1-of-2.meta.json"]
    assert_close_weights(two / "drift" / "checkpoint", one / "drift" / "checkpoint", tiny_model_dir)
    assert_same_losses(rows(two / "drift" / "train_log.jsonl"), rows(one / "drift" / "train_log.jsonl"), "step")

    # drift run --algo grpo: groups rolled out by their process, data-parallel updates
    log, expected = rows(two / "grpo" / "online_log.jsonl"), rows(one / "grpo" / "online_log.jsonl")
    assert_same_losses(log, expected, "iteration")
    assert any(e["samples"] > 0 for e in expected)
    for key in ("reward", "trajectories", "generated_tokens", "samples", "trained_tokens", "flat_groups"):
        assert [e[key] for e in log] == [e[key] for e in expected], key
    for key in ("kl", "clip_fraction", "entropy"):
        assert [e[key] for e in log] == pytest.approx([e[key] for e in expected], rel=LOSS_REL, abs=1e-9), key
    assert_close_weights(two / "grpo" / "checkpoint", one / "grpo" / "checkpoint", tiny_model_dir)

    for run in ("drift", "grpo"):  # the evaluations: sharded, gathered, written in one process's order
        assert rows(two / run / "eval_base.jsonl") == rows(one / run / "eval_base.jsonl")
        trained = [{**r, "model": None} for r in rows(two / run / "eval_trained.jsonl")]
        assert trained == [{**r, "model": None} for r in rows(one / run / "eval_trained.jsonl")]
        assert len(trained) == 3
        assert (two / run / "metrics.json").is_file() and (two / run / "multi_at_k.png").is_file()

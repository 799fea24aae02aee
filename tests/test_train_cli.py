"""`drift train` trains on a file's ``weight`` column when it has one (from ``drift weigh``), recomputes otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drift_algos.records import Trajectory, write_trajectories
from drift_cli.main import app

runner = CliRunner()


@pytest.fixture()
def trajectories_file(tmp_path: Path) -> Path:
    """Two groups, each with one success and one failure."""
    records = []
    for q, gold, wrong in (("q1", "2", "3"), ("q2", "7", "6")):
        user = {"role": "user", "content": f"Problem {q}"}
        records.append(Trajectory(q, [user, {"role": "assistant", "content": f"<answer>{gold}</answer>"}],
                                  {"t1": 1}, {"t1": 1.0}, gold=gold, t_star=1, answer_norms=[gold], success=True))
        records.append(Trajectory(q, [user, {"role": "assistant", "content": f"<answer>{wrong}</answer>"}],
                                  {"t1": 0}, {"t1": 0.0}, gold=gold, answer_norms=[wrong]))
    path = tmp_path / "given.jsonl"
    write_trajectories(path, records)
    return path


def with_weights(path: Path, weights: list[object]) -> Path:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row, weight in zip(rows, weights, strict=True):
        if weight is not None:
            row["weight"] = weight
    out = path.with_name("weighted.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def train(tiny_model_dir: Path, path: Path, tmp_path: Path):
    # --min-weight 0.5 tells the two apart: at beta 0.1 the failures weigh ~1e-4 and are skipped, while the
    # file's own weights (all 1) keep every sample.
    return runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "ckpt"), "--model", str(tiny_model_dir),
                               "--preset", "smoke", "--min-weight", "0.5", "--batch-size", "4"])


def test_train_uses_the_weight_column(tiny_model_dir: Path, trajectories_file: Path, tmp_path: Path) -> None:
    result = train(tiny_model_dir, with_weights(trajectories_file, [1.0, 1.0, 1.0, 1.0]), tmp_path)
    assert result.exit_code == 0, result.output
    assert "training on the file's 'weight' column" in result.output
    assert "drift: 4 samples" in result.output


def test_train_recomputes_weights_without_the_column(tiny_model_dir: Path, trajectories_file: Path,
                                                     tmp_path: Path) -> None:
    result = train(tiny_model_dir, trajectories_file, tmp_path)
    assert result.exit_code == 0, result.output
    assert "no 'weight' column; weights computed with beta 0.1" in result.output
    assert "drift: 2 samples" in result.output


@pytest.mark.parametrize(("weights", "message"), [
    ([1.0, None, 1.0, 1.0], "weighted.jsonl:2: field 'weight' missing"),
    ([1.0, -1.0, 1.0, 1.0], "field 'weight' must be a finite number >= 0"),
    ([1.0, "x", 1.0, 1.0], "field 'weight' must be a finite number >= 0"),
])
def test_a_bad_weight_column_is_a_one_line_error(weights: list[object], message: str, tiny_model_dir: Path,
                                                 trajectories_file: Path, tmp_path: Path) -> None:
    result = train(tiny_model_dir, with_weights(trajectories_file, weights), tmp_path)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_online_algorithms_cannot_train_on_a_file(algo: str, tiny_model_dir: Path, trajectories_file: Path,
                                                  tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(trajectories_file), "--out", str(tmp_path / "ckpt"), "--algo", algo,
                                 "--model", str(tiny_model_dir)])
    assert result.exit_code == 2
    assert f"use: drift run --algo {algo}" in result.output and "Traceback" not in result.output

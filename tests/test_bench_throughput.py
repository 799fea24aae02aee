"""`drift bench throughput` on the tiny model with a tiny workload: the JSON report, ratios computed from the
measured numbers, the training part on a real rollout's weights, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drift_cli.main import app

runner = CliRunner()
TINY = ["--prompts", "2", "--n", "2", "--turns", "2", "--max-new-tokens", "4", "--decode-batch", "3",
        "--decode-tokens", "5", "--batch-size", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def report(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    result = runner.invoke(app, ["bench", "throughput", "--model", str(tiny_model_dir), *TINY, "--train-prompts", "2",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "rollout x generate" in result.output and "training" in result.output
    return json.loads((out / "throughput.json").read_text())


def test_every_engine_and_the_baseline_are_measured(report: dict) -> None:
    assert [row["engine"] for row in report["engines"]] == ["generate", "transformers"]
    for row in report["engines"]:
        for key in ("startup_s", "ttft_s", "wall_s", "peak_rss_mib", "start_rss_mib"):
            assert row[key] > 0, key
        assert row["peak_rss_mib"] >= row["start_rss_mib"]
        assert row["wall_s"] >= row["startup_s"] + row["ttft_s"] + row["rollout"]["seconds"] + row["decode"]["seconds"]
        rollout = row["rollout"]
        # 2 problems x 2 samples, 1 or 2 replies each, at most 4 tokens a reply.
        assert 4 <= rollout["replies"] <= 8 and 0 < rollout["tokens"] <= 4 * rollout["replies"]
        assert 0 < row["decode"]["tokens"] <= 3 * 5
    assert report["machine"]["torch_threads"] == 1
    # The engine samples exactly what plain generate samples (seeded): the ratios compare like with like.
    engine = report["engines"][1]
    assert engine["rollout"]["same_as_generate"] == 1.0 and engine["decode"]["same_as_generate"] == 1.0
    assert engine["rollout"]["tokens"] == report["engines"][0]["rollout"]["tokens"]


def test_ratios_come_from_the_measured_numbers(report: dict, tiny_model_dir: Path) -> None:
    from drift_algos.models import load_model

    parameters = sum(p.numel() for p in load_model(str(tiny_model_dir)).parameters())
    assert report["parameters"] == parameters
    assert report["floor_tokens_per_s"] == pytest.approx(report["matmul_flops_per_s"] / (2 * parameters))
    base = report["engines"][0]
    for row in report["engines"]:
        for workload in ("rollout", "decode"):
            measured = row[workload]
            assert measured["tokens_per_s"] == pytest.approx(measured["tokens"] / measured["seconds"])
            assert measured["x_generate"] == pytest.approx(measured["tokens_per_s"] / base[workload]["tokens_per_s"])
            assert measured["x_floor"] == pytest.approx(measured["tokens_per_s"] / report["floor_tokens_per_s"])
    assert base["rollout"]["x_generate"] == 1.0


def test_training_part_uses_the_rollouts_weights(report: dict) -> None:
    rows = {row["mode"]: row for row in report["training"]}
    assert set(rows) == {"full", "LoRA", "full, skip"}
    assert report["training_trajectories"] == "the baseline's rollout"
    assert rows["full"]["samples"] == rows["LoRA"]["samples"] == rows["full"]["trajectories"] == 4  # 2 groups x 2
    assert rows["full"]["weight_mass_kept"] == 1.0
    assert rows["full, skip"]["samples"] <= rows["full"]["samples"]
    for row in rows.values():
        if row["samples"]:
            assert row["speedup_vs_full"] == pytest.approx(rows["full"]["seconds"] / row["seconds"])
            assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"])


def test_training_from_a_trajectories_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    from drift_algos.records import Trajectory, write_trajectories

    def record(prompt: str, sample: int, success: bool) -> Trajectory:
        reply = "<answer>2</answer>" if success else "<answer>3</answer>"
        return Trajectory(prompt, [{"role": "user", "content": "What is 1 + 1?"},
                                   {"role": "assistant", "content": reply}], {"t1": int(success)},
                          {"t1": float(success)}, sample_index=sample, success=success, t_star=1 if success else None)

    # Group a: one success among four (the failures weigh about e^-10 each: skipped); group b: no success (dropped).
    path = tmp_path / "t.jsonl"
    write_trajectories(path, [record("a", i, i == 0) for i in range(4)] + [record("b", i, False) for i in range(4)])
    out = tmp_path / "bench"
    result = runner.invoke(app, ["bench", "throughput", "--model", str(tiny_model_dir), *TINY, "--trajectories",
                                 str(path), "--train-prompts", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {row["mode"]: row for row in json.loads((out / "throughput.json").read_text())["training"]}
    assert rows["full"]["samples"] == 8
    assert rows["full, skip"]["samples"] == 1
    assert rows["full, skip"]["weight_mass_kept"] == pytest.approx(1 / 2, abs=1e-3)  # group b's mass is gone


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trajectories", "missing.jsonl"], "--trajectories"),
        (["--engine", "nope"], "unknown engine 'nope'"),
        (["--engine-arg", "prefix_cache_mib=-3"], "prefix_cache_mib"),
    ],
)
def test_bad_input_is_one_line(tiny_model_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["bench", "throughput", "--model", str(tiny_model_dir), *TINY, *args,
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()

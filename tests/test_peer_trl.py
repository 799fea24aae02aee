"""The peer check against TRL (benchmarks/peer_trl.py): its smallest configuration on the tiny model, its JSON, and
its answers to bad flags and to a missing TRL.

TRL is the optional ``bench`` extra, so CI (which does not install it) skips the run; to run it:
``pip install -e '.[bench]' && pytest tests/test_peer_trl.py``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "peer_trl.py"
NO_TRL = ("TRL is not installed (the optional bench extra): pip install -e '.[bench]' && "
          "pytest tests/test_peer_trl.py")

SMALLEST = ["--sft-prompts", "4", "--sft-group", "2", "--sft-samples", "8", "--batch-size", "2", "--rounds", "2",
            "--grpo-steps", "2", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "6"]


def run_script(args: list[str], *, env: dict[str, str] | None = None,
               timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason=NO_TRL)
def test_smallest_configuration_writes_the_ratios(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "peer"
    proc = run_script(["--model", str(tiny_model_dir), "--out", str(out), *SMALLEST])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ours / TRL" in proc.stdout and "checks: all passed" in proc.stdout
    report = json.loads((out / "peer_trl.json").read_text())

    for name in ("sft_tokens_per_s", "grpo_seconds_per_step"):
        assert math.isfinite(report["ratios"][name]) and report["ratios"][name] > 0
    assert report["versions"]["trl"] and report["threads"] == 1 and report["precision"] == "fp32"

    sft = report["sft"]
    assert sft["data"]["samples"] == 8 and len(sft["data"]["weights"]) == 8
    assert sum(sft["data"]["weights"]) == pytest.approx(8.0)  # DRIFT's weights: mean 1 within each (whole) group
    assert [r["order"] for r in sft["rounds"]] == [["drift", "trl"], ["trl", "drift"]]  # A/B, then B/A
    assert all(sft["checks"].values()), sft["checks"]  # same tokens, targets, steps and batches on both sides
    for r in sft["rounds"]:
        assert r["drift"]["steps"] == r["trl"]["steps"] == 4
        assert r["ratio_tokens_per_s"] == pytest.approx(r["drift"]["tokens_per_s"] / r["trl"]["tokens_per_s"])
    assert sft["ratio_tokens_per_s"] == pytest.approx(statistics.median(r["ratio_tokens_per_s"] for r in sft["rounds"]))
    own = sft["trl_own_tokenisation"]
    assert own["samples"] == 8 and 0 <= own["identical"] <= 8

    grpo = report["grpo"]
    assert all(grpo["checks"].values()), grpo["checks"]  # same problems in the same order, same prompt token ids
    assert [s["step"] for s in grpo["steps"]] == [1, 2]
    for step in grpo["steps"]:
        assert len(step["drift"]["problems"]) == len(step["trl"]["problems"]) == 2
        for side in ("drift", "trl"):
            assert step[side]["seconds"] >= step[side]["generation_s"] > 0
            assert 0 < step[side]["completion_tokens"] <= 2 * 2 * 6
            # one-turn returns: 1 or 0 from the verifier, plus at most the -0.1 format penalty
            assert -0.1 - 1e-9 <= step[side]["reward"] <= 1.0
    assert grpo["ratio_seconds_per_step"] == pytest.approx(grpo["steps"][1]["drift"]["seconds"]
                                                           / grpo["steps"][1]["trl"]["seconds"])
    assert len(grpo["reward_curve"]["drift"]) == len(grpo["reward_curve"]["trl"]) == 2
    assert report["differences"]["sft"] and report["differences"]["grpo"]


def test_bad_sizes_are_one_line_errors(tmp_path: Path) -> None:
    proc = run_script(["--sft-samples", "5", "--batch-size", "2", "--out", str(tmp_path)], timeout=120)
    assert proc.returncode == 2
    assert "sft_samples (5) must be a multiple of batch_size (2)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_without_trl_it_says_how_to_install_it(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked" / "trl"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('trl is blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker.parent)}
    proc = run_script(["--out", str(tmp_path / "out")], env=env, timeout=120)
    assert proc.returncode == 2
    assert "pip install -e '.[bench]'" in proc.stderr
    assert not (tmp_path / "out" / "peer_trl.json").exists()

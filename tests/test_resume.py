"""Crash-safe rollouts: a real `drift rollout` killed with SIGKILL (or SIGINT) at several points and
resumed gives, after sorting, exactly the file of an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROMPTS, N = 16, 2


def command(model_dir: Path, out: Path, *extra: str, seed: int = 5) -> list[str]:
    # max_live 2: one group in flight at a time, so records reach the file group by group.
    return [sys.executable, "-m", "drift_cli.main", "rollout", "--model", str(model_dir), "--env", "math",
            "--num-prompts", str(PROMPTS), "--n", str(N), "--max-turns", "2", "--max-new-tokens", "8",
            "--temperature", "1.0", "--max-live", "2", "--batch-size", "2", "--seed", str(seed),
            "--env-arg", "num_problems=60", "--out", str(out), *extra]


def rows(path: Path) -> list[dict]:
    return sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()),
                  key=lambda r: (r["group_index"], r["sample_index"]))


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("reference") / "all.jsonl"
    done = subprocess.run(command(tiny_model_dir, out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = rows(out)
    assert len(result) == PROMPTS * N
    assert {(r["group_index"], r["sample_index"]) for r in result} == {(g, s) for g in range(PROMPTS) for s in range(N)}
    return result


def interrupt_after(cmd: list[str], out: Path, lines: int, sig: int) -> subprocess.CompletedProcess:
    """Start ``cmd``, send ``sig`` once ``out`` has at least ``lines`` lines; the process must still be running."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while count_lines(out) < lines:
        assert proc.poll() is None, "the rollout finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert proc.poll() is None, "the rollout finished before it could be interrupted"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("kill_after", [1, 25])
def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_model_dir: Path, tmp_path: Path, reference,
                                                         kill_after: int) -> None:
    out = tmp_path / "part.jsonl"
    killed = interrupt_after(command(tiny_model_dir, out), out, kill_after, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert kill_after <= count_lines(out) < PROMPTS * N
    resumed = subprocess.run(command(tiny_model_dir, out, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert rows(out) == reference


def test_sigint_ends_cleanly_and_says_how_to_resume(tiny_model_dir: Path, tmp_path: Path, reference) -> None:
    out = tmp_path / "part.jsonl"
    stopped = interrupt_after(command(tiny_model_dir, out), out, 9, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert "--resume" in stopped.stderr and "Traceback" not in stopped.stderr
    partial = [json.loads(line) for line in out.read_text().splitlines()]  # every line whole
    assert 9 <= len(partial) < PROMPTS * N
    resumed = subprocess.run(command(tiny_model_dir, out, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert rows(out) == reference


def test_torn_last_line_and_partial_group_are_redone(tiny_model_dir: Path, tmp_path: Path, reference) -> None:
    """What a kill in the middle of a write leaves: whole groups, half a group, and a cut line."""
    out = tmp_path / "torn.jsonl"
    subprocess.run(command(tiny_model_dir, out), capture_output=True, text=True, timeout=300, check=True)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:7]) + "\n" + lines[7][: len(lines[7]) // 2])
    resumed = subprocess.run(command(tiny_model_dir, out, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 torn line(s) dropped" in resumed.stdout
    assert rows(out) == reference


def test_existing_output_is_never_overwritten(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "kept.jsonl"
    out.write_text('{"precious": true}\n')
    result = subprocess.run(command(tiny_model_dir, out), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "already exists" in result.stderr and "--resume" in result.stderr
    assert out.read_text() == '{"precious": true}\n'


def test_resume_refuses_other_settings(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "part.jsonl"
    killed = interrupt_after(command(tiny_model_dir, out), out, 3, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    before = out.read_bytes()
    result = subprocess.run(command(tiny_model_dir, out, "--resume", seed=6), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "'seed'" in lines[0], result.stderr
    assert out.read_bytes() == before

"""Resumable training: a fit stopped at any point (an exception, Ctrl-C, SIGKILL of a real `drift train`) and resumed
from its newest checkpoint reaches the weights and the logged losses of an uninterrupted fit.

Tolerance: on CPU the resumed fit repeats the uninterrupted one's arithmetic exactly (the same batches, in the same
order, from bit-identical weights, optimiser moments and RNG states), so parameters are compared with
``atol=1e-7, rtol=0`` and the logged losses with ``rel=1e-9``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from drift_algos.models import load_tokenizer
from drift_algos.records import Trajectory, write_trajectories
from drift_algos.training.samples import Sample
from drift_algos.training.trainer import TrainConfig, Trainer, TrainingInterrupted
from drift_cli.main import app

PARAM_TOLERANCE = {"atol": 1e-7, "rtol": 0.0}

USER = {"role": "user", "content": "What is 37 + 48?"}
REPLIES = ["<answer>85</answer>", "<answer>84</answer> Incorrect", "85", "A B C D", "def return python 12 + 10",
           "0 1 2 3", "<answer>13</answer>", "Correct!", "B", "7 8 9 10 11"]
SAMPLES = [Sample([USER, {"role": "assistant", "content": r}], weight=0.25 + i % 4) for i, r in enumerate(REPLIES)]


def fresh_model(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


def config(**overrides) -> TrainConfig:
    # Two epochs of 10 samples in micro-batches of 2, accumulated 2 by 2: 3 steps an epoch (the last one short),
    # warm-up then cosine, and with LoRA a dropout, so that the schedule, the epoch's batch order and the torch RNG
    # must all be restored.
    base = dict(learning_rate=5e-3, epochs=2, batch_size=2, grad_accum=2, warmup_ratio=0.2, schedule="cosine",
                normalise_weights=True)
    return TrainConfig(**{**base, **overrides})


def trainable(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def log_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Boom(Exception):
    """Stands for a crash."""


def crash_after(step: int):
    def progress(done: int, total: int, loss: float) -> None:
        if done == step:
            raise Boom

    return progress


def assert_same_fit(result, reference, weights: dict, reference_weights: dict) -> None:
    assert result.steps == reference.steps
    assert [h["step"] for h in result.history] == [h["step"] for h in reference.history]
    assert [h["loss"] for h in result.history] == pytest.approx([h["loss"] for h in reference.history], rel=1e-9)
    assert [h["lr"] for h in result.history] == pytest.approx([h["lr"] for h in reference.history], rel=1e-12)
    assert result.final_loss == pytest.approx(reference.final_loss, rel=1e-9)
    assert set(weights) == set(reference_weights)
    for name, value in reference_weights.items():
        torch.testing.assert_close(weights[name], value, **PARAM_TOLERANCE, msg=name)


@pytest.mark.parametrize("lora", [False, True])
def test_a_crashed_fit_resumes_to_the_uninterrupted_weights(tiny_model_dir: Path, tmp_path: Path, lora: bool) -> None:
    tok = load_tokenizer(str(tiny_model_dir))
    cfg = config(lora=lora, lora_dropout=0.2 if lora else 0.0, save_every=2, keep_last=2)
    reference_trainer = Trainer(fresh_model(tiny_model_dir), tok, cfg)
    reference = reference_trainer.fit(SAMPLES, log_path=tmp_path / "reference.jsonl")
    assert reference.steps == 6

    log, resume = tmp_path / "train_log.jsonl", tmp_path / "resume"
    with pytest.raises(Boom):  # after step 5, whose checkpoint is not due: the newest is step 4
        Trainer(fresh_model(tiny_model_dir), tok, cfg).fit(SAMPLES, log_path=log, checkpoint_dir=resume,
                                                           progress=crash_after(5))
    assert sorted(p.name for p in resume.iterdir()) == ["step-2", "step-4"]
    assert [r["step"] for r in log_rows(log)] == [1, 2, 3, 4, 5]
    trainer = Trainer(fresh_model(tiny_model_dir), tok, cfg)
    result = trainer.fit(SAMPLES, log_path=log, checkpoint_dir=resume, resume=True)
    assert_same_fit(result, reference, trainable(trainer.model), trainable(reference_trainer.model))
    # The log holds each step once (step 5, logged before the crash, was dropped and logged again).
    assert [r["step"] for r in log_rows(log)] == [1, 2, 3, 4, 5, 6]
    expected = [r["loss"] for r in log_rows(tmp_path / "reference.jsonl")]
    assert [r["loss"] for r in log_rows(log)] == pytest.approx(expected, rel=1e-9)
    assert sorted(p.name for p in resume.iterdir()) == ["step-4", "step-6"]  # the last 2 kept, no temporary left


def test_ctrl_c_finishes_the_step_saves_and_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(str(tiny_model_dir))
    cfg = config()  # save_every 0: only Ctrl-C saves
    reference_trainer = Trainer(fresh_model(tiny_model_dir), tok, cfg)
    reference = reference_trainer.fit(SAMPLES)

    def press_ctrl_c(done: int, total: int, loss: float) -> None:
        if done == 2:
            signal.raise_signal(signal.SIGINT)  # lands between steps 2 and 3: step 3 still runs, then it stops

    with pytest.raises(TrainingInterrupted) as stopped:
        Trainer(fresh_model(tiny_model_dir), tok, cfg).fit(SAMPLES, checkpoint_dir=tmp_path / "resume",
                                                           progress=press_ctrl_c)
    assert stopped.value.step == 3 and stopped.value.checkpoint == tmp_path / "resume" / "step-3"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    trainer = Trainer(fresh_model(tiny_model_dir), tok, cfg)
    result = trainer.fit(SAMPLES, checkpoint_dir=tmp_path / "resume", resume=True)
    assert_same_fit(result, reference, trainable(trainer.model), trainable(reference_trainer.model))


def test_resume_refuses_other_settings_or_samples_and_a_fresh_fit_refuses_old_checkpoints(tiny_model_dir: Path,
                                                                                          tmp_path: Path) -> None:
    tok = load_tokenizer(str(tiny_model_dir))
    with pytest.raises(Boom):
        Trainer(fresh_model(tiny_model_dir), tok, config(save_every=1)).fit(SAMPLES, checkpoint_dir=tmp_path,
                                                                           progress=crash_after(2))
    with pytest.raises(ValueError, match="'learning_rate' \\(0.005 there, 0.001 now\\)"):
        Trainer(fresh_model(tiny_model_dir), tok, config(learning_rate=1e-3)).fit(SAMPLES, checkpoint_dir=tmp_path,
                                                                                 resume=True)
    with pytest.raises(ValueError, match="other samples"):
        Trainer(fresh_model(tiny_model_dir), tok, config()).fit(SAMPLES[:-1], checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="micro_batches_per_step"):
        Trainer(fresh_model(tiny_model_dir), tok, config(grad_accum=1)).fit(SAMPLES, checkpoint_dir=tmp_path,
                                                                           resume=True)
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(fresh_model(tiny_model_dir), tok, config()).fit(SAMPLES, checkpoint_dir=tmp_path)
    # Settings that change only what is saved or logged may differ.
    Trainer(fresh_model(tiny_model_dir), tok, config(save_every=3, log_every=2)).fit(SAMPLES, checkpoint_dir=tmp_path,
                                                                                    resume=True)


@pytest.mark.parametrize("kwargs", [{"save_every": -1}, {"keep_last": 0}])
def test_checkpoint_settings_are_validated(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TrainConfig(**kwargs)


# -- a real `drift train`, interrupted ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trajectories_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 one-turn trajectories in 12 groups of 2 (one solved, one not): 48 steps of one sample in two epochs."""
    records = []
    for q in range(12):
        user = {"role": "user", "content": f"What is {q} + {q}?"}
        for answer in (2 * q, 2 * q + 1):
            solved = answer == 2 * q
            records.append(Trajectory(f"q{q}", [user, {"role": "assistant", "content": f"<answer>{answer}</answer>"}],
                                      {"t1": int(solved)}, {"t1": float(solved)}, gold=str(2 * q), t_star=1 if solved
                                      else None, answer_norms=[str(answer)], success=solved))
    path = tmp_path_factory.mktemp("data") / "trajectories.jsonl"
    write_trajectories(path, records)
    return path


def train_args(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    # beta 1: every trajectory keeps a real weight; batch size 1: many short steps to interrupt.
    return ["train", str(data), "--out", str(out), "--model", str(model_dir), "--preset", "smoke", "--beta", "1",
            "--batch-size", "1", "--epochs", "2", "--lr", "1e-3", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir: Path, trajectories_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "ckpt"
    result = CliRunner().invoke(app, train_args(tiny_model_dir, trajectories_file, out))
    assert result.exit_code == 0, result.output
    assert len(log_rows(out / "train_log.jsonl")) == 48
    return out


def interrupt_once_logged(args: list[str], log: Path, steps: int, sig: int, *, wait_for: Path | None = None
                          ) -> subprocess.CompletedProcess:
    """Run `drift` with ``args``; send ``sig`` once ``log`` has ``steps`` lines (and ``wait_for`` exists)."""
    cmd = [sys.executable, "-m", "drift_cli.main", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while (log.read_text().count("\n") if log.exists() else 0) < steps or (wait_for is not None
                                                                           and not wait_for.exists()):
        assert proc.poll() is None, f"drift train ended before it could be interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def assert_same_checkpoint(out: Path, reference: Path) -> None:
    from safetensors.torch import load_file

    weights, expected = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert set(weights) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, **PARAM_TOLERANCE, msg=name)
    rows, reference_rows = log_rows(out / "train_log.jsonl"), log_rows(reference / "train_log.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 49))
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference_rows], rel=1e-9)


def test_sigint_stops_drift_train_after_the_step_and_resume_finishes_it(tiny_model_dir: Path, trajectories_file: Path,
                                                                        uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    args = train_args(tiny_model_dir, trajectories_file, out)
    stopped = interrupt_once_logged(args, out / "train_log.jsonl", 5, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr and "--resume" in stopped.stderr, stopped.stderr
    (saved,) = (out / "resume").iterdir()
    step = int(saved.name.removeprefix("step-"))
    assert 5 <= step < 48 and f"interrupted after optimiser step {step}" in stopped.stderr
    assert len(log_rows(out / "train_log.jsonl")) == step  # the step under way was finished and logged, no more
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output  # never silently starts over
    resumed = subprocess.run([sys.executable, "-m", "drift_cli.main", *args, "--resume"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_checkpoint(out, uninterrupted)


def test_sigkill_during_drift_train_then_resume_from_the_last_checkpoint(tiny_model_dir: Path,
                                                                         trajectories_file: Path,
                                                                         uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    args = train_args(tiny_model_dir, trajectories_file, out, "--save-every", "4", "--keep-last", "1")
    killed = interrupt_once_logged(args, out / "train_log.jsonl", 9, signal.SIGKILL,
                                   wait_for=out / "resume" / "step-8")
    assert killed.returncode == -signal.SIGKILL
    newest = max(int(p.name.removeprefix("step-")) for p in (out / "resume").glob("step-*"))
    assert newest >= 8 and (out / "train_log.jsonl").read_text().count("\n") >= newest
    resumed = subprocess.run([sys.executable, "-m", "drift_cli.main", *args, "--resume"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_checkpoint(out, uninterrupted)
    assert [p.name for p in (out / "resume").iterdir()] == ["step-48"]  # keep-last 1

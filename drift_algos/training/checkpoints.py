"""Resumable checkpoints: what a stopped run needs to continue exactly where it stopped.

A run's ``resume/`` folder holds numbered checkpoints, the last ``keep_last`` of them kept. Each is written into a
temporary folder that is renamed into place once complete, so a process killed at any moment leaves the previous
checkpoint or the new one, never half of one:

- ``step-<n>/``, the trainer after optimiser step ``n`` (:meth:`~drift_algos.training.trainer.Trainer.fit`, every
  ``save_every`` steps and on Ctrl-C): accelerate's ``save_state`` (the trainable weights, which are the whole model
  or the LoRA adapter, the optimiser, the schedule, and the python / numpy / torch RNG states of every process) and
  ``trainer_state.json`` (where the data stands: epoch, window, the epoch's batch order and the batch-order RNG;
  the losses logged so far);
- ``iteration-<i>/``, the online loop after iteration ``i`` (:func:`~drift_algos.training.online.train_online`):
  the policy's trainable weights, the algorithm's own (PPO's value head), AdamW's state, each process's RNG states, and
  ``online_state.json`` (the iteration and the log entries so far).

Under several processes every process calls these functions; only the main process creates, renames and deletes
folders, and they wait for each other around it.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from drift_algos import distributed

WEIGHTS_FILE = "weights.safetensors"
"""The trainable weights of an ``iteration-<i>`` checkpoint."""


def numbered(root: Path, kind: str) -> list[Path]:
    """The finished ``<kind>-<n>`` folders under ``root``, by ``n``."""
    pattern = re.compile(rf"{re.escape(kind)}-(\d+)")
    found = [(int(m.group(1)), p) for p in Path(root).glob(f"{kind}-*") if (m := pattern.fullmatch(p.name))
             and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest(root: Path, kind: str) -> Path | None:
    """The newest finished ``<kind>-<n>`` folder under ``root``, or ``None``."""
    found = numbered(root, kind)
    return found[-1] if found else None


@contextlib.contextmanager
def atomic_folder(final: Path, *, keep_last: int | None = None) -> Iterator[Path]:
    """A temporary folder to fill, renamed to ``final`` when the block ends without error; then only the newest
    ``keep_last`` folders of ``final``'s kind (``step``, ``iteration``) are kept."""
    temporary = final.with_name(f".{final.name}.tmp")  # the same name in every process: they fill one folder
    if distributed.is_main():
        shutil.rmtree(temporary, ignore_errors=True)  # left by a process killed while saving
        temporary.mkdir(parents=True)
    distributed.barrier()
    yield temporary
    distributed.barrier()
    if distributed.is_main():
        if final.exists():  # saved before by a run that was then resumed from an earlier checkpoint
            shutil.rmtree(final)
        os.replace(temporary, final)
        if keep_last is not None:
            kind = final.name.rsplit("-", 1)[0]
            for old in numbered(final.parent, kind)[:-keep_last]:
                shutil.rmtree(old)
    distributed.barrier()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (every weight in full fine-tuning, the adapter's with LoRA), on CPU."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: Path) -> None:
    """Copy ``state`` (from :func:`trainable_state`) into ``model``; it must name exactly its trainable parameters."""
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{where}: its weights do not fit this model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}): was it saved with other --lora settings?")
    model.load_state_dict(state, strict=False)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (an incomplete checkpoint?)")
    return load_file(str(path))


def rng_state() -> dict[str, object]:
    """This process's python, numpy and torch (and CUDA) RNG states."""
    state: dict[str, object] = {"python": random.getstate(), "numpy": np.random.get_state(),
                                "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, object]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(folder: Path) -> Path:
    """This process's RNG file in a checkpoint folder."""
    return folder / f"rng_state_{distributed.rank()}.pt"


def save_rng(folder: Path) -> None:
    torch.save(rng_state(), rng_file(folder))


def load_rng(folder: Path) -> None:
    path = rng_file(folder)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (resumed with more processes than the run had?)")
    set_rng_state(torch.load(path, weights_only=False))

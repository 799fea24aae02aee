"""The processes of an ``accelerate launch``: which share of the work is this process's, and gathering the shares.

A plain ``drift ...`` is one process, rank 0 of 1, and everything here is then a no-op. Under ``accelerate launch``
(torchrun underneath) the processes form one torch.distributed group through accelerate's ``PartialState``; on a
machine without CUDA they run on CPU with the gloo backend. Shares are interleaved (``items[rank::count]``): the
same rule as ``drift rollout --shard I/K``, so a process's groups of a collection are those of shard ``rank/count``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def state():
    """accelerate's ``PartialState`` (one per process; on CPU when there is no CUDA)."""
    import torch
    from accelerate import PartialState

    # The same `cpu` flag as the trainer's Accelerator: the state is shared and must not be set up two ways.
    return PartialState(cpu=not torch.cuda.is_available())


def rank() -> int:
    """This process's index, 0 for the main process."""
    return state().process_index


def count() -> int:
    """Number of processes."""
    return state().num_processes


def is_main() -> bool:
    """Whether this process writes the run's files (checkpoints, logs, plots)."""
    return state().is_main_process


def barrier() -> None:
    """Wait until every process gets here."""
    if count() > 1:
        state().wait_for_everyone()


def mine(items: Sequence[T]) -> list[T]:
    """This process's share of ``items``: every ``count``-th, from position ``rank``."""
    return list(items[rank()::count()])


def gather(items: list[T]) -> list[T]:
    """Every process's ``items``, concatenated in process order (``items`` itself with one process)."""
    if count() == 1:
        return list(items)
    from accelerate.utils import gather_object

    return gather_object(list(items))


def total(values: Sequence[float]) -> list[float]:
    """Each value summed over the processes (in float64)."""
    if count() == 1:
        return [float(v) for v in values]
    import torch
    from accelerate.utils import reduce

    summed = reduce(torch.tensor([float(v) for v in values], dtype=torch.float64, device=state().device), "sum")
    return summed.cpu().tolist()

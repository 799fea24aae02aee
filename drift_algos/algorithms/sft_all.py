"""SFT on every assistant turn (``sft-all``): the paper's multi-turn SFT baseline beside ``sft`` (last turn only).

Every trajectory, weight 1, and each of its assistant messages carries the loss (the whole conversation before a
message, rendered with the chat template, is that message's prompt): the training core's
:attr:`~drift_algos.training.samples.LossTarget.ALL` loss target, which this class sets on the training config.
"""

from __future__ import annotations

import dataclasses

from drift_algos.algorithms.sft import SFT
from drift_algos.training.samples import LossTarget
from drift_algos.training.trainer import TrainConfig


class SFTAllTurns(SFT):
    """Supervised fine-tuning on every trajectory, every assistant turn a target, weight 1."""

    name = "sft-all"

    def train_config(self, train: TrainConfig) -> TrainConfig:
        if train.recorded_ids:
            raise ValueError("sft-all trains every assistant turn; recorded_ids trains the last one only")
        return dataclasses.replace(train, loss_target=LossTarget.ALL)

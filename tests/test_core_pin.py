"""Pins the offline algorithms' numerics: the per-sample weighted-NLL loss values and the parameters after three
optimiser steps on the tiny model, as the training core computed them before it was generalised (commit 3590558).

The default preset's published result (base 28.0%, multi@1 38.5%, multi@3 40.5%) depends on these numerics
staying identical; the expected numbers below were computed with the old code and must never be regenerated to
make a change pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from drift_algos.training.samples import Sample
from drift_algos.training.trainer import TrainConfig, Trainer

PINNED = json.loads((Path(__file__).parent / "data" / "core_pin.json").read_text())

SAMPLES = [
    Sample([{"role": "user", "content": "What is 37 + 48?"}, {"role": "assistant", "content": "<answer>85</answer>"}],
           weight=2.5, prompt_id="a"),
    Sample([{"role": "user", "content": "What is 37 + 48?"}, {"role": "assistant", "content": "<answer>84</answer>"}],
           weight=0.1, prompt_id="a"),
    Sample([{"role": "user", "content": "What is 1 + 2?"}, {"role": "assistant", "content": "<answer>4</answer>"},
            {"role": "user", "content": "Incorrect. Please think again."},
            {"role": "assistant", "content": "<answer>3</answer>"}], weight=1.7, prompt_id="b"),
    Sample([{"role": "user", "content": "What is 1 + 2?"}, {"role": "assistant", "content": "3 = A B"}],
           weight=0.0, prompt_id="b"),
    Sample([{"role": "user", "content": "def f"}, {"role": "assistant", "content": "return 12 * 10"}],
           weight=1.0, prompt_id="c"),
    Sample([{"role": "user", "content": "What is 9 - 7?"}, {"role": "assistant", "content": "<answer>2</answer>"}],
           weight=0.7, prompt_id="d"),
]


def fingerprint(model: torch.nn.Module) -> dict[str, list[float]]:
    """Per-tensor sum and L2 norm in float64: enough to see any change of the weights beyond rounding."""
    return {name: [float(p.detach().double().sum()), float(p.detach().double().norm())]
            for name, p in model.named_parameters()}


@pytest.mark.parametrize("case", ["mean", "normalised"])
def test_three_optimiser_steps_match_the_old_core(case: str, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from drift_algos.models import load_tokenizer

    cfg = TrainConfig(learning_rate=1e-3, batch_size=2, warmup_ratio=0.0, normalise_weights=case == "normalised")
    trainer = Trainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), load_tokenizer(str(tiny_model_dir)), cfg)
    result = trainer.fit(SAMPLES)
    expected = PINNED[case]
    assert result.steps == 3
    assert [h["loss"] for h in result.history] == pytest.approx(expected["losses"], rel=1e-6, abs=1e-7)
    assert result.final_loss == pytest.approx(expected["final_loss"], rel=1e-6)
    got = fingerprint(trainer.model)
    assert set(got) == set(expected["params"])
    for name, (total, norm) in expected["params"].items():
        assert got[name][0] == pytest.approx(total, rel=1e-6, abs=1e-6), name
        assert got[name][1] == pytest.approx(norm, rel=1e-6), name

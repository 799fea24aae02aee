"""Offline algorithms: how trajectories become weighted samples (DRIFT, SFT, RFT), and the registry."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from drift_algos.algorithms import (
    ALGORITHMS,
    SFT,
    Drift,
    DriftConfig,
    OfflineAlgorithm,
    OnlineAlgorithm,
    RejectionSFT,
)
from drift_algos.pipeline import make_algorithm
from drift_algos.presets import smoke
from drift_algos.records import Trajectory
from drift_algos.training.samples import tokenize_sample
from drift_algos.training.trainer import TrainConfig, Trainer


def trajectory(prompt_id: str, answers: list[str], rewards: list[float], *, format_penalty: float = 0.0,
               max_turns: int = 2) -> Trajectory:
    messages = [{"role": "user", "content": f"Problem {prompt_id}"}]
    for i, answer in enumerate(answers):
        if i:
            messages.append({"role": "user", "content": "Incorrect. Please think again."})
        messages.append({"role": "assistant", "content": f"<answer>{answer}</answer>"})
    padded = rewards + [0.0] * (max_turns - len(rewards))
    t_star = next((t for t, r in enumerate(rewards, start=1) if r == 1.0), None)
    return Trajectory(
        prompt_id=prompt_id, messages=messages,
        verifier={f"t{t}": int(r == 1.0) for t, r in enumerate(padded, start=1)},
        turn_rewards={f"t{t}": r for t, r in enumerate(padded, start=1)},
        t_star=t_star, answer_norms=answers, format_penalty=format_penalty, success=t_star is not None,
    )


@pytest.fixture()
def trajectories() -> list[Trajectory]:
    return [
        trajectory("p1", ["5"], [1.0]),  # R = 1
        trajectory("p1", ["4", "5"], [0.0, 1.0]),  # R = 0.9 (gamma 0.9)
        trajectory("p1", ["4", "6"], [0.0, 0.0]),  # R = 0
        trajectory("p2", ["1", "2"], [0.0, 0.0]),  # p2: equal returns -> weights 1
        trajectory("p2", ["3", "4"], [0.0, 0.0]),
        trajectory("p3", ["7", "8"], [0.0, 0.0], format_penalty=-0.1),  # R = -0.1, no success in p3
        trajectory("p3", ["7", "9"], [0.0, 0.0]),  # R = 0
    ]


def expected_weights(beta: float = 0.1) -> list[float]:
    """exp(R/beta) / mean over the group, by hand."""
    p1 = [math.exp(1.0 / beta), math.exp(0.9 / beta), 1.0]
    p3 = [math.exp(-0.1 / beta), 1.0]
    return [3 * e / sum(p1) for e in p1] + [1.0, 1.0] + [2 * e / sum(p3) for e in p3]


def test_drift_weights_are_group_normalised(trajectories: list[Trajectory]) -> None:
    result = Drift(DriftConfig(gamma=0.9, beta=0.1)).samples(trajectories)
    weights = [s.weight for s in result.samples]
    assert weights == pytest.approx(expected_weights(), rel=1e-12)
    assert sum(weights[:3]) / 3 == pytest.approx(1.0)  # each group's mean weight is 1
    assert sum(weights[5:]) / 2 == pytest.approx(1.0)
    assert (result.trajectories, result.skipped, result.weight_mass_skipped) == (7, 0, 0.0)
    for sample, t in zip(result.samples, trajectories, strict=True):
        assert sample.messages == t.messages  # the whole conversation; the trainer masks all but the last reply
        assert sample.prompt_id == t.prompt_id


def test_a_larger_beta_flattens_the_weights(trajectories: list[Trajectory]) -> None:
    sharp = [s.weight for s in Drift(DriftConfig(beta=0.1)).samples(trajectories).samples]
    flat = [s.weight for s in Drift(DriftConfig(beta=10.0)).samples(trajectories).samples]
    assert flat == pytest.approx(expected_weights(10.0))
    assert max(flat) < max(sharp) and min(flat) > min(sharp)


def test_min_weight_skips_light_samples_and_reports_their_mass(trajectories: list[Trajectory]) -> None:
    result = Drift(DriftConfig(beta=0.1, min_weight=0.01)).samples(trajectories)
    w = expected_weights()
    assert w[2] < 0.01 < min(w[:2] + w[3:])  # only p1's failure is that light
    assert [s.weight for s in result.samples] == pytest.approx(w[:2] + w[3:])
    assert result.skipped == 1 and result.trajectories == 7
    assert result.weight_mass_skipped == pytest.approx(w[2] / sum(w))
    assert sum(w) == pytest.approx(7.0)


def test_drop_unsolved_groups(trajectories: list[Trajectory]) -> None:
    result = Drift(DriftConfig(beta=0.1, drop_unsolved_groups=True)).samples(trajectories)
    assert [s.prompt_id for s in result.samples] == ["p1", "p1", "p1"]
    assert result.skipped == 4
    assert result.weight_mass_skipped == pytest.approx(4 / 7)  # p2 and p3 each carry their size in weight


def test_min_weight_and_drop_unsolved_together(trajectories: list[Trajectory]) -> None:
    result = Drift(DriftConfig(beta=0.1, min_weight=0.01, drop_unsolved_groups=True)).samples(trajectories)
    w = expected_weights()
    assert [s.weight for s in result.samples] == pytest.approx(w[:2])
    assert result.skipped == 5
    assert result.weight_mass_skipped == pytest.approx((w[2] + 4) / 7)


def test_drift_objective_is_the_training_configs_weighted_nll() -> None:
    # Two samples, one target token each: log-probs -1 and -3, weights 1 and 2 -> sum w nll = 1 + 6 = 7.
    logprobs = torch.tensor([[0.0, -1.0], [0.0, -3.0]])  # (B, T-1)
    batch = {"loss_mask": torch.tensor([[False, False, True], [False, False, True]]),
             "weights": torch.tensor([1.0, 2.0])}
    for normalise, expected in ((False, 7.0 / 2.0), (True, 7.0 / 3.0)):
        objective = Drift().objective(TrainConfig(normalise_weights=normalise))
        numerator, _ = objective.numerator(logprobs, batch)
        assert (numerator / objective.denominator(batch)).item() == pytest.approx(expected)


def test_drift_config_has_no_second_normalise_setting() -> None:
    with pytest.raises(TypeError):
        DriftConfig(normalise_weights=True)  # one setting: TrainConfig.normalise_weights


def test_drift_needs_trajectories() -> None:
    with pytest.raises(ValueError, match="no trajectories"):
        Drift().samples([])


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"beta": -1.0}, {"gamma": 1.5}, {"gamma": -0.1},
                                    {"repetition_lambda": -1.0}, {"min_weight": -0.5}])
def test_drift_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DriftConfig(**kwargs)


def test_sft_weighs_every_trajectory_one(trajectories: list[Trajectory]) -> None:
    result = SFT().samples(trajectories)
    assert [s.weight for s in result.samples] == [1.0] * 7
    assert [s.messages for s in result.samples] == [t.messages for t in trajectories]
    assert (result.trajectories, result.skipped, result.weight_mass_skipped) == (7, 0, 0.0)
    assert SFT().samples([]).samples == []


def test_rft_keeps_only_successes(trajectories: list[Trajectory]) -> None:
    result = RejectionSFT().samples(trajectories)
    assert [s.messages for s in result.samples] == [trajectories[0].messages, trajectories[1].messages]
    assert [s.weight for s in result.samples] == [1.0, 1.0]
    assert result.skipped == 5
    assert result.weight_mass_skipped == pytest.approx(5 / 7)


def test_registry_names() -> None:
    assert set(ALGORITHMS) == {"drift", "sft", "sft-all", "rft", "grpo", "ppo"}
    for name, cls in ALGORITHMS.items():
        online = name in ("grpo", "ppo")
        assert cls.name == name and issubclass(cls, OnlineAlgorithm if online else OfflineAlgorithm)


@pytest.mark.parametrize("name", sorted(n for n, cls in ALGORITHMS.items() if issubclass(cls, OfflineAlgorithm)))
def test_every_algorithm_yields_samples_and_a_finite_loss(name: str, trajectories: list[Trajectory],
                                                          tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from drift_algos.models import load_tokenizer

    algorithm = make_algorithm(name, smoke())
    assert isinstance(algorithm, ALGORITHMS[name])
    sample_set = algorithm.samples(trajectories)
    assert sample_set.samples
    assert sample_set.trajectories == len(trajectories)
    assert len(sample_set.samples) + sample_set.skipped == len(trajectories)
    assert all(s.weight >= 0 and math.isfinite(s.weight) for s in sample_set.samples)

    cfg = TrainConfig(learning_rate=1e-3, batch_size=64, warmup_ratio=0.0)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # The loss by hand, before the step: sum_i w_i * (mean target-token NLL of sample i) / number of samples.
    expected = 0.0
    for sample in sample_set.samples:
        t = tokenize_sample(tokenizer, sample)
        ids = torch.tensor([t.input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # (T, V)
        nll = [-float(logp[i - 1, t.input_ids[i]]) for i in range(1, len(t)) if t.loss_mask[i]]
        expected += sample.weight * sum(nll) / len(nll)
    expected /= len(sample_set.samples)
    trainer = Trainer(model, tokenizer, cfg)
    result = trainer.fit(sample_set.samples, objective=algorithm.objective(cfg))
    assert result.samples == len(sample_set.samples) and result.steps == 1
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-5)

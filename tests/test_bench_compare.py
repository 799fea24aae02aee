"""`drift bench compare`: the interval arithmetic by hand, the budget, sft-all's loss target, and a whole smoke
comparison through the CLI on a tiny model, its files checked against each other."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drift_algos.algorithms import ALGORITHMS, SFT, SFTAllTurns
from drift_algos.comparison import Budget, CurvePoint, Meter, first_reach
from drift_algos.evaluation.paired import (
    paired_interval,
    pooled_paired_interval,
    random_elimination,
    seed_interval,
    t_quantile,
)
from drift_algos.records import read_trajectories
from drift_algos.training.trainer import TrainConfig
from drift_cli.main import app

SOLVED_1 = (True,)
SOLVED_2 = (False, True)
FAILED = (False, False)


def test_t_quantiles_match_the_tables() -> None:
    # Printed Student t tables, 97.5%: df 1 12.706, 2 4.303, 3 3.182, 10 2.228, 30 2.042.
    for df, value in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (10, 2.2281), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)


def test_paired_interval_by_hand() -> None:
    # multi@1 per problem: first 0,0,1 -> second 1,1,1: d = 1, 1, 0. mean 2/3, sd = sqrt(1/3), se = 1/3,
    # t(0.975, 2) = (2p - 1) / sqrt(2p(1 - p)) = 0.95 / sqrt(2 * 0.975 * 0.025) = 4.302653.
    first = [SOLVED_2, FAILED, SOLVED_1]
    second = [SOLVED_1, SOLVED_1, SOLVED_1]
    diff, (low, high) = paired_interval(first, second, 1)
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / 3
    assert diff == pytest.approx(2 / 3)
    assert (low, high) == pytest.approx((2 / 3 - half, 2 / 3 + half))
    assert half == pytest.approx(1.434218, abs=1e-6)
    # multi@2: d = 0, 1, 0: mean 1/3, sd = sqrt(1/3), the same half-width.
    diff2, ci2 = paired_interval(first, second, 2)
    assert diff2 == pytest.approx(1 / 3) and ci2 == pytest.approx((1 / 3 - half, 1 / 3 + half))
    # Identical outcomes: difference 0, zero width.
    assert paired_interval(first, first, 2) == (0.0, (0.0, 0.0))
    with pytest.raises(ValueError, match="differ in number"):
        paired_interval(first, second[:2], 1)


def test_pooled_interval_keeps_a_problems_seeds_together() -> None:
    # Seed 0: d = 1, 0, 0; seed 1: d = 1, 1, 0 -> per problem 1, 0.5, 0: mean 0.5, sd 0.5, se 0.5 / sqrt(3).
    base = [FAILED, FAILED, FAILED]
    seed0 = [SOLVED_1, FAILED, FAILED]
    seed1 = [SOLVED_1, SOLVED_1, FAILED]
    diff, (low, high) = pooled_paired_interval([base, base], [seed0, seed1], 1)
    half = 4.302653 * 0.5 / math.sqrt(3)
    assert diff == pytest.approx(0.5)
    assert (low, high) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-5)
    # One seed: the plain paired interval.
    assert pooled_paired_interval([base], [seed1], 1) == paired_interval(base, seed1, 1)


def test_seed_interval_by_hand() -> None:
    mean, (low, high) = seed_interval([0.3, 0.4, 0.5])
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(0.4) and (low, high) == pytest.approx((0.4 - half, 0.4 + half), abs=1e-6)
    mean1, ci1 = seed_interval([0.7])
    assert mean1 == 0.7 and all(math.isnan(v) for v in ci1)


def test_random_elimination_is_k_over_options() -> None:
    assert random_elimination([4, 4], 5) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert random_elimination([2, 4], 2) == pytest.approx([(0.5 + 0.25) / 2, (1.0 + 0.5) / 2])


def test_first_reach_is_the_first_point_at_least_as_high() -> None:
    curve = [CurvePoint(0.0, 0, 0, 0, [0.1, 0.2]), CurvePoint(5.0, 50, 9, 1, [0.3, 0.4]),
             CurvePoint(9.0, 90, 19, 2, [0.2, 0.4]), CurvePoint(12.0, 120, 29, 3, [0.3, 0.4])]
    assert first_reach(curve, curve[-1].multi[1], 2).seconds == 5.0
    assert first_reach(curve, 0.3, 1).generated_tokens == 50
    assert first_reach(curve, 0.5, 2) is None


def test_meter_charges_what_ran_and_not_the_evaluations() -> None:
    now = [100.0]
    meter = Meter(seconds=7.0, tokens=50, clock=lambda: now[0])  # a shared collection's cost, charged up front
    meter.start()
    now[0] = 103.0
    with meter.paused():  # an evaluation: not charged
        now[0] = 160.0
        assert meter.seconds == 10.0
    now[0] = 162.5
    assert meter.seconds == 12.5 and meter.tokens == 50
    meter.stop()
    now[0] = 200.0
    assert meter.seconds == 12.5


def test_budget_parsing() -> None:
    assert Budget.parse("tokens=1000") == Budget("tokens", 1000)
    assert Budget.parse("seconds=90.5").spent(90.5, 0) and not Budget.parse("seconds=90.5").spent(90.0, 10**9)
    for bad in ("tokens", "minutes=3", "tokens=-1", "seconds=abc"):
        with pytest.raises(ValueError, match="--budget"):
            Budget.parse(bad)


def test_sft_all_puts_the_loss_on_every_assistant_turn(tiny_model_dir: Path) -> None:
    from drift_algos.models import load_tokenizer
    from drift_algos.training.samples import Sample, tokenize_sample

    assert ALGORITHMS["sft-all"] is SFTAllTurns
    tokenizer = load_tokenizer(str(tiny_model_dir))
    messages = [{"role": "user", "content": "What is 37 + 48?"}, {"role": "assistant", "content": "<answer>84"},
                {"role": "user", "content": "Incorrect. Please think again."},
                {"role": "assistant", "content": "<answer>85"}]
    sample = Sample(messages=messages)

    def targets(algorithm) -> list[int]:
        cfg = algorithm.train_config(TrainConfig())
        tokens = tokenize_sample(tokenizer, sample, target=cfg.loss_target)
        return [i for i, m in zip(tokens.input_ids, tokens.loss_mask, strict=True) if m]

    reply = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]  # noqa: E731
    assert targets(SFT()) == reply("<answer>85")
    assert targets(SFTAllTurns()) == reply("<answer>84") + reply("<answer>85")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_cli_compare_smoke_writes_consistent_results(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    algos = "drift,sft-all,rft,grpo,ppo"
    result = CliRunner().invoke(app, ["bench", "compare", "--env", "math", "--algos", algos, "--model",
                                      str(tiny_model_dir), "--preset", "smoke", "--budget", "tokens=150",
                                      "--seeds", "0,1", "--out", str(out)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    assert "claim: DRIFT reaches GRPO's final multi@2" in result.output and "results.md" in result.output
    results = json.loads((out / "results.json").read_text())
    assert results["algos"] == algos.split(",") and results["seeds"] == [0, 1]
    assert results["budget"] == {"kind": "tokens", "amount": 150.0} and results["random_elimination"] is None
    turns, k = results["max_turns"], results["claim_k"]
    assert (turns, k) == (2, 2) and results["problems"] == 8
    for name in ("results.md", "curve_seconds.png", "curve_tokens.png", "multi_at_k.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "curve_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "results.md").read_text()
    assert markdown.count("\n| ") == 2 + len(algos.split(","))  # header, base, one row per algorithm
    assert "minus DRIFT multi@2" in markdown and "random elimination" not in markdown  # math is not multiple choice
    base = [t.outcome for t in sorted(read_trajectories(out / "base" / "eval.jsonl"), key=lambda t: t.prompt_id)]
    assert results["base"]["multi_at_k"][0] == pytest.approx(sum(bool(o[0]) for o in base) / len(base))

    finals: dict[tuple[str, int], list] = {}
    for run in results["runs"]:
        name, seed = run["algo"], run["seed"]
        folder = out / f"seed-{seed}" / name
        path = folder / "eval_final.jsonl"
        outcomes = (base if not path.is_file() else
                    [t.outcome for t in sorted(read_trajectories(path), key=lambda t: t.prompt_id)])
        finals[name, seed] = outcomes
        # The reported paired difference is the one the files give.
        for j in range(1, turns + 1):
            diff, ci = paired_interval(base, outcomes, j)
            assert run["vs_base"][f"multi@{j}"]["mean"] == pytest.approx(diff)
            assert run["vs_base"][f"multi@{j}"]["ci"] == pytest.approx(list(ci), nan_ok=True)
        curve = run["curve"]
        assert curve[0]["seconds"] == 0 and curve[0]["multi"] == results["base"]["multi_at_k"]
        assert curve[-1]["multi"] == run["final_multi_at_k"]
        assert [p["seconds"] for p in curve] == sorted(p["seconds"] for p in curve)
        reach = run["first_reach_final"]
        first = next(p for p in curve[1:] or curve if p["multi"][k - 1] >= run["final_multi_at_k"][k - 1])
        assert (reach["seconds"], reach["generated_tokens"]) == (first["seconds"], first["generated_tokens"])
        assert run["peak_memory_mb"] > 0
        if name in ("grpo", "ppo"):
            log = _jsonl(folder / "online_log.jsonl")
            assert run["generated_tokens"] == sum(e["generated_tokens"] for e in log)
            assert run["trained_tokens"] == sum(e["trained_tokens"] for e in log)
            # The budget ends the loop after the iteration that spends it (or the preset's 2 iterations).
            assert run["stopped_by_budget"] == (len(log) < 2)
            assert run["generated_tokens"] >= 150 or len(log) == 2
            assert not (folder / "resume").exists()
        else:
            # The shared collection's cost is charged to each offline algorithm.
            rollouts = read_trajectories(out / f"seed-{seed}" / "rollouts.jsonl")
            assert run["generated_tokens"] == sum(sum(t.turn_tokens) for t in rollouts)
            if run["samples"]:
                assert run["trained_tokens"] == _jsonl(folder / "train_log.jsonl")[-1]["tokens"] > 0
            else:  # rft on a random model: nothing solved, so nothing to train on
                assert run["note"].startswith("no training samples") and run["trained_tokens"] == 0
    # Between algorithms: pooled over seeds by problem, from the same files.
    for name in algos.split(",")[1:]:
        for j in range(1, turns + 1):
            diff, ci = pooled_paired_interval([finals["drift", s] for s in (0, 1)],
                                              [finals[name, s] for s in (0, 1)], j)
            entry = results["algorithms"][name]["minus_drift"][f"multi@{j}"]
            assert entry["mean"] == pytest.approx(diff) and entry["ci"] == pytest.approx(list(ci), nan_ok=True)
        per_seed = results["algorithms"][name]["final_multi_at_k"][f"multi@{k}"]["per_seed"]
        assert len(per_seed) == 2
    claim = results["claim"]
    assert {s["seed"] for s in claim["per_seed"]} == {0, 1}
    for s in claim["per_seed"]:  # untestable where GRPO ended no higher than the base model
        assert (s["holds"] is None) == (s["grpo_final"] <= results["base"]["multi_at_k"][k - 1])


def test_cli_compare_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    for args, needle in ((["--budget", "minutes=3"], "--budget"), (["--algos", "drift,nope"], "nope"),
                         (["--seeds", "0,x"], "--seeds"), (["--preset", "huge"], "--preset"),
                         (["--algos", "drift,drift"], "twice")):
        result = runner.invoke(app, ["bench", "compare", "--out", str(tmp_path / "x"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert not (tmp_path / "x").exists()


def test_cli_compare_seconds_budget_on_multiple_choice(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A seconds budget that any work spends: the shared collection stops after its first chunk and leaves DRIFT
    nothing to train with (its final model is the base), GRPO stops after one iteration; the multiple-choice table
    shows the random-elimination reference (4 options: 25%, 50%)."""
    out = tmp_path / "mc"
    result = CliRunner().invoke(app, ["bench", "compare", "--env", "mc", "--algos", "drift,grpo", "--model",
                                      str(tiny_model_dir), "--preset", "smoke", "--budget", "seconds=0.001",
                                      "--out", str(out)])
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    results = json.loads((out / "results.json").read_text())
    assert results["random_elimination"] == pytest.approx([0.25, 0.5])
    assert "| random elimination | 25.0% | 50.0% |" in (out / "results.md").read_text()
    drift, grpo = results["runs"]
    assert len(read_trajectories(out / "seed-0" / "rollouts.jsonl")) == 2 * 2  # one chunk of 2 groups x 2
    assert drift["note"].startswith("the rollouts spent the whole budget") and drift["trained_tokens"] == 0
    assert drift["final_multi_at_k"] == results["base"]["multi_at_k"] and len(drift["curve"]) == 1
    assert grpo["stopped_by_budget"] and len(_jsonl(out / "seed-0" / "grpo" / "online_log.jsonl")) == 1
    assert len(grpo["curve"]) == 2 and grpo["seconds"] >= 0.001

"""How rollout and training time grow with prompts x n x turns, fitted on runs of this machine.

    python benchmarks/cost_model.py --model smollm2-135m --out runs/cost

Runs the math environment's rollout (the default preset's sampling: temperature 0.7, the
environment's reply length) on a grid of (prompts, n, turn limit), then trains DRIFT's loss on
growing numbers of the collected trajectories, and fits power laws by least squares on logs:

    rollout seconds  ~ c * episodes^a * turns^b      (episodes = prompts * n)
    training seconds ~ c * samples^a

Writes cost_model.json (every run and the fitted exponents) and prints both tables. An
exponent below 1 for episodes means bigger runs are cheaper per episode (fuller batches).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table


def fit_power_law(features: list[list[float]], seconds: list[float]) -> tuple[float, list[float]]:
    """Least squares of ``log seconds = log c + sum_k a_k log x_k``: returns ``(c, [a_k])``."""
    x = np.log(np.asarray(features, dtype=float))  # (runs, k)
    design = np.hstack([np.ones((x.shape[0], 1)), x])  # (runs, 1 + k)
    coef, *_ = np.linalg.lstsq(design, np.log(np.asarray(seconds, dtype=float)), rcond=None)
    return float(np.exp(coef[0])), [float(a) for a in coef[1:]]


def rollouts(engine, grid: list[tuple[int, int, int]], seed: int) -> tuple[list[dict], list]:
    import gymnasium as gym

    import drift_envs  # noqa: F401 - registers the environments
    from drift_algos.rollout.agent import RolloutAgent, RolloutConfig

    rows, biggest = [], []
    for prompts, n, turns in grid:
        make = lambda turns=turns: gym.make("drift/MathCorrection-v0", max_turns=turns, max_actions=turns,  # noqa: E731
                                            split="train", disable_env_checker=True)
        agent = RolloutAgent(engine, make, env_id="math")
        start = time.perf_counter()
        records, summary = agent.run(RolloutConfig(num_prompts=prompts, n=n, temperature=0.7, seed=seed))
        elapsed = time.perf_counter() - start
        rows.append({"prompts": prompts, "n": n, "turns": turns, "episodes": prompts * n, "seconds": elapsed,
                     "generated_tokens": summary.generated_tokens, "replies": summary.replies,
                     "success": summary.metrics.overall})
        if len(records) > len(biggest):
            biggest = records
    return rows, biggest


def training(model_spec: str, trajectories: list, sizes: list[int], seed: int) -> list[dict]:
    from drift_algos.algorithms import SFT
    from drift_algos.models import load_model, load_tokenizer
    from drift_algos.training.trainer import TrainConfig, Trainer

    tokenizer = load_tokenizer(model_spec)
    samples = SFT().samples(trajectories).samples
    rows = []
    for size in sizes:
        if size > len(samples):
            break
        trainer = Trainer(load_model(model_spec), tokenizer, TrainConfig(learning_rate=1e-5, batch_size=8, seed=seed))
        result = trainer.fit(samples[:size])
        rows.append({"samples": size, "seconds": result.elapsed_s, "tokens": result.tokens,
                     "tokens_per_s": result.tokens_per_s})
    return rows


def parse_grid(text: str) -> list[tuple[int, int, int]]:
    """``"8x2x3,16x4x3"`` -> ``[(8, 2, 3), (16, 4, 3)]`` (prompts x n x turn limit)."""
    grid = []
    for item in text.split(","):
        parts = [int(p) for p in item.lower().split("x")]
        if len(parts) != 3 or min(parts) < 1:
            raise SystemExit(f"--grid: expected PROMPTSxNxTURNS with positive integers, got {item!r}")
        grid.append((parts[0], parts[1], parts[2]))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--grid", default="8x2x3,8x4x3,16x4x3,32x4x3,16x4x1,16x4x5",
                        help="rollout runs, PROMPTSxNxTURNS, comma-separated")
    parser.add_argument("--train-sizes", default="16,32,64,128", help="training sample counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/cost"))
    args = parser.parse_args()
    grid = parse_grid(args.grid)
    sizes = [int(s) for s in args.train_sizes.split(",")]

    from drift_algos.engines.transformers_engine import TransformersEngine

    console = Console()
    engine = TransformersEngine.from_pretrained(args.model)
    rollout_rows, trajectories = rollouts(engine, grid, args.seed)
    train_rows = training(args.model, trajectories, sizes, args.seed)

    c_r, (a_episodes, b_turns) = fit_power_law([[r["episodes"], r["turns"]] for r in rollout_rows],
                                              [r["seconds"] for r in rollout_rows])
    fit = {"rollout": {"c": c_r, "episodes_exponent": a_episodes, "turns_exponent": b_turns}}
    if len(train_rows) >= 2:
        c_t, (a_samples,) = fit_power_law([[r["samples"]] for r in train_rows], [r["seconds"] for r in train_rows])
        fit["training"] = {"c": c_t, "samples_exponent": a_samples}

    table = Table(title=f"rollout cost ({args.model}, math, T=0.7)")
    for col in ("prompts x n", "turn limit", "seconds", "generated tokens", "s / episode"):
        table.add_column(col, justify="right")
    for r in rollout_rows:
        table.add_row(f"{r['prompts']} x {r['n']}", str(r["turns"]), f"{r['seconds']:.1f}",
                      f"{r['generated_tokens']:,}", f"{r['seconds'] / r['episodes']:.2f}")
    table.caption = (f"seconds ~ {c_r:.3g} * episodes^{a_episodes:.2f} * turns^{b_turns:.2f}")
    console.print(table)
    table = Table(title="training cost (full fine-tuning, batch 8, 1 epoch)")
    for col in ("samples", "seconds", "tokens/s"):
        table.add_column(col, justify="right")
    for r in train_rows:
        table.add_row(str(r["samples"]), f"{r['seconds']:.1f}", f"{r['tokens_per_s']:.0f}")
    if "training" in fit:
        table.caption = f"seconds ~ {fit['training']['c']:.3g} * samples^{fit['training']['samples_exponent']:.2f}"
    console.print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "cost_model.json"
    path.write_text(json.dumps({"model": args.model, "rollouts": rollout_rows, "training": train_rows, "fit": fit},
                               indent=2) + "\n")
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()

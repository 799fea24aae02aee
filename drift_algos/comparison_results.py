"""The results of `drift bench compare` (:mod:`drift_algos.comparison`): results.json's content (per run its curve and
costs; per algorithm means and intervals over seeds, paired differences against the base model and DRIFT, the
claim), the headline table (results.md and the CLI) and the PNG plots."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from drift_algos.comparison import AlgorithmRun, CompareConfig, first_reach
from drift_algos.evaluation.evaluator import EvalResult
from drift_algos.evaluation.paired import paired_interval, pooled_paired_interval, seed_interval


def _interval_dict(value: tuple[float, tuple[float, float]]) -> dict[str, object]:
    mean, ci = value
    return {"mean": mean, "ci": list(ci)}


def claim_k(max_turns: int) -> int:
    """The k of the headline claim (multi@3), or T when episodes are shorter."""
    return min(3, max_turns)


def summarise(cfg: CompareConfig, base: EvalResult, runs: Sequence[AlgorithmRun],
              reference: list[float] | None) -> dict[str, object]:
    """The results.json content: per run its curve and costs; per algorithm its means and intervals over seeds,
    paired differences against the base model and against DRIFT (pooled over seeds by problem)."""
    turns = base.metrics.max_turns
    k_claim = claim_k(turns)
    by_algo: dict[str, list[AlgorithmRun]] = {name: [r for r in runs if r.algo == name] for name in cfg.algos}
    for algo_runs in by_algo.values():
        for r in algo_runs:
            if r.final.problem_ids != base.problem_ids:
                raise ValueError(f"{r.algo} seed {r.seed} was evaluated on other problems than the base model")
    run_rows = []
    for r in runs:
        final = r.final.metrics.multi
        # Its own final accuracy: first reached by a trained point (the base point at cost 0 would "reach" a final
        # below the base model's); a run that never trained reaches it at 0.
        reach = first_reach(r.curve[1:] or r.curve, final[k_claim - 1], k_claim)
        run_rows.append({
            "algo": r.algo, "seed": r.seed, "final_multi_at_k": final, "seconds": r.seconds,
            "generated_tokens": r.generated_tokens, "trained_tokens": r.trained_tokens,
            "peak_memory_mb": r.peak_memory_mb, "samples": r.samples, "stopped_by_budget": r.stopped_by_budget,
            "note": r.note, "first_reach_final": {"k": k_claim, "seconds": reach.seconds,
                                                  "generated_tokens": reach.generated_tokens, "step": reach.step},
            "curve": [asdict(p) for p in r.curve],
            "vs_base": {f"multi@{k}": _interval_dict(paired_interval(base.outcomes, r.final.outcomes, k))
                        for k in range(1, turns + 1)},
        })
    algorithms: dict[str, object] = {}
    reference_algo = "drift" if "drift" in by_algo else None
    for name, algo_runs in by_algo.items():
        rows = [row for row in run_rows if row["algo"] == name]
        entry: dict[str, object] = {
            "seeds": [r.seed for r in algo_runs],
            "final_multi_at_k": {f"multi@{k}": {**_interval_dict(seed_interval([r.final.metrics.multi[k - 1]
                                                                                for r in algo_runs])),
                                                "per_seed": [r.final.metrics.multi[k - 1] for r in algo_runs]}
                                 for k in range(1, turns + 1)},
            "vs_base": {f"multi@{k}": _interval_dict(pooled_paired_interval(
                [base.outcomes] * len(algo_runs), [r.final.outcomes for r in algo_runs], k))
                for k in range(1, turns + 1)},
            "first_reach_final": {"k": k_claim, "seconds": _interval_dict(seed_interval(
                [row["first_reach_final"]["seconds"] for row in rows])), "generated_tokens": _interval_dict(
                seed_interval([row["first_reach_final"]["generated_tokens"] for row in rows]))},
            "seconds": _interval_dict(seed_interval([r.seconds for r in algo_runs])),
            "generated_tokens": _interval_dict(seed_interval([r.generated_tokens for r in algo_runs])),
            "trained_tokens": _interval_dict(seed_interval([r.trained_tokens for r in algo_runs])),
            "peak_memory_mb": max(r.peak_memory_mb for r in algo_runs),
            "notes": sorted({r.note for r in algo_runs if r.note}),
        }
        if reference_algo is not None and name != reference_algo:
            drift_runs = {r.seed: r for r in by_algo[reference_algo]}
            entry["minus_drift"] = {f"multi@{k}": _interval_dict(pooled_paired_interval(
                [drift_runs[r.seed].final.outcomes for r in algo_runs], [r.final.outcomes for r in algo_runs], k))
                for k in range(1, turns + 1)}
        algorithms[name] = entry
    pairs = {}
    names = list(by_algo)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            first = {r.seed: r for r in by_algo[a]}
            second = [r for r in by_algo[b] if r.seed in first]
            pairs[f"{b} - {a}"] = _interval_dict(pooled_paired_interval(
                [first[r.seed].final.outcomes for r in second], [r.final.outcomes for r in second], k_claim))
    return {
        "env": cfg.env, "model": cfg.model, "preset": cfg.preset.name, "budget": asdict(cfg.budget),
        "seeds": list(cfg.seeds), "algos": list(cfg.algos), "max_turns": turns, "claim_k": k_claim,
        "problems": base.metrics.episodes, "eval_seed": cfg.preset.run.eval.seed,
        "base": {"multi_at_k": base.metrics.multi, "multi_ci": base.multi_ci},
        "random_elimination": reference,
        "interval": "paired t interval over problems (pooled over seeds: per-problem mean over seeds); over seeds: "
                    "t interval of the per-seed values (NaN for one seed)",
        "accounting": ("offline algorithms share one rollout collection per seed and each is charged its full "
                       "seconds and tokens; evaluation time is not charged; online algorithms check the budget "
                       "after each iteration, offline ones a seconds budget after each optimiser step"),
        "algorithms": algorithms, "pairs_at_claim_k": pairs, "claim": _claim(by_algo, base, k_claim),
        "runs": run_rows, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _claim(by_algo: dict[str, list[AlgorithmRun]], base: EvalResult, k: int) -> dict[str, object] | None:
    """Per seed: when DRIFT's curve first reached GRPO's final multi@k, against GRPO's wall-clock. Untestable
    (``holds`` is ``None``) on a seed where GRPO ended no higher than the base model: every curve starts there."""
    if "drift" not in by_algo or "grpo" not in by_algo:
        return None
    drift = {r.seed: r for r in by_algo["drift"]}
    per_seed = []
    for g in by_algo["grpo"]:
        if g.seed not in drift:
            continue
        target = g.final.metrics.multi[k - 1]
        reach = first_reach(drift[g.seed].curve, target, k)
        g_reach = first_reach(g.curve, target, k)
        per_seed.append({
            "seed": g.seed, "grpo_final": target, "grpo_seconds": g.seconds,
            "grpo_first_reach_seconds": g_reach.seconds if g_reach else None,
            "drift_reach_seconds": reach.seconds if reach else None,
            "ratio_to_grpo_seconds": reach.seconds / g.seconds if reach and g.seconds > 0 else None,
            "holds": (None if target <= base.metrics.multi[k - 1] else
                      bool(reach is not None and g.seconds > 0 and reach.seconds <= 0.25 * g.seconds)),
        })
    verdicts = [s["holds"] for s in per_seed]
    return {"statement": f"DRIFT reaches GRPO's final multi@{k} in at most a quarter of GRPO's wall-clock",
            "per_seed": per_seed,
            "verdict": ("untestable (GRPO did not end above the base model)" if not verdicts or None in verdicts
                        else "holds on every seed" if all(verdicts) else "does not hold on every seed")}


def _nan(value: float | None) -> float:
    """``None`` (how results.json stores NaN) as NaN."""
    return float("nan") if value is None else value


def _pct(value: float | None) -> str:
    value = _nan(value)
    return "n/a" if value != value else f"{100 * value:.1f}%"


def _with_ci(entry: dict, *, points: bool = False) -> str:
    mean, (low, high) = _nan(entry["mean"]), (_nan(v) for v in entry["ci"])
    if points:
        text = f"{100 * mean:+.1f}"
        return text if low != low else f"{text} [{100 * low:+.1f}, {100 * high:+.1f}]"
    return _pct(mean) if low != low else f"{_pct(mean)} [{100 * low:.1f}, {100 * high:.1f}]"


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """The headline table (results.md and the CLI): header and rows."""
    turns, k = results["max_turns"], results["claim_k"]
    header = (["algorithm"] + [f"multi@{j}" for j in range(1, turns + 1)] +
              [f"vs base multi@{k} (pts)", f"minus DRIFT multi@{k} (pts)", "seconds", "generated tok",
               "trained tok", f"reached final multi@{k}: s / tok", "peak MB"])
    base = results["base"]
    rows = [["base"] + [f"{_pct(v)} [{100 * lo:.1f}, {100 * hi:.1f}]"
                        for v, (lo, hi) in zip(base["multi_at_k"], base["multi_ci"], strict=True)]
            + ["", "", "0", "0", "0", "", ""]]
    if results["random_elimination"] is not None:
        rows.append(["random elimination"] + [_pct(v) for v in results["random_elimination"]]
                    + [""] * 7)
    for name, a in results["algorithms"].items():
        finals = [_with_ci(a["final_multi_at_k"][f"multi@{j}"]) for j in range(1, turns + 1)]
        minus = _with_ci(a["minus_drift"][f"multi@{k}"], points=True) if "minus_drift" in a else ""
        reach = a["first_reach_final"]
        rows.append([name] + finals + [
            _with_ci(a["vs_base"][f"multi@{k}"], points=True), minus, f"{a['seconds']['mean']:.1f}",
            f"{a['generated_tokens']['mean']:,.0f}", f"{a['trained_tokens']['mean']:,.0f}",
            f"{reach['seconds']['mean']:.1f} / {reach['generated_tokens']['mean']:,.0f}",
            f"{a['peak_memory_mb']:,.0f}"])
    return header, rows


def results_markdown(results: dict) -> str:
    """results.md: the headline table, the claim, and how to read them."""
    header, rows = table_rows(results)
    seeds = ",".join(str(s) for s in results["seeds"])
    lines = [f"# drift bench compare: {', '.join(results['algos'])} on {results['env']}", "",
             f"Model {results['model']}, preset {results['preset']}, budget {results['budget']['kind']}="
             f"{results['budget']['amount']:g} per algorithm, seeds {seeds}, {results['problems']} held-out problems "
             f"(greedy, up to {results['max_turns']} turns). multi@k: mean over seeds [95% t interval over seeds, none "
             "for one seed]; base: [95% bootstrap interval over problems]; differences in points with paired 95% t "
             "intervals over problems (pooled over seeds by problem). Seconds: wall-clock of rollouts and "
             "training, evaluation excluded.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    claim = results["claim"]
    if claim is not None:
        lines += ["", f"**Claim**: {claim['statement']}."]
        for s in claim["per_seed"]:
            reach = "never" if s["drift_reach_seconds"] is None else f"at {s['drift_reach_seconds']:.1f} s"
            verdict = {True: "holds", False: "does not hold", None: "untestable (GRPO ended at or below the base "
                       "model, where every curve starts)"}[s["holds"]]
            lines.append(f"- seed {s['seed']}: GRPO's final {_pct(s['grpo_final'])} after {s['grpo_seconds']:.1f} s; "
                         f"DRIFT reached it {reach}: {verdict}")
    notes = [f"- {name}: {note}" for name, a in results["algorithms"].items() for note in a["notes"]]
    if notes:
        lines += ["", "Notes:"] + notes
    lines += ["", f"Accounting: {results['accounting']}.", ""]
    return "\n".join(lines)


def plot_curves(results: dict, out: Path) -> list[Path]:
    """curve_seconds.png and curve_tokens.png (multi@k of each run's learning curve) and multi_at_k.png (final)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = results["claim_k"]
    colours = {name: f"C{i}" for i, name in enumerate(results["algos"])}
    paths = []
    for key, label, name in (("seconds", "wall-clock seconds (evaluation excluded)", "curve_seconds.png"),
                             ("generated_tokens", "generated tokens", "curve_tokens.png")):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        seen = set()
        for run in results["runs"]:
            xs = [p[key] for p in run["curve"]]
            ys = [100 * p["multi"][k - 1] for p in run["curve"]]
            ax.plot(xs, ys, marker="o", ms=3, color=colours[run["algo"]], alpha=0.8,
                    label=None if run["algo"] in seen else run["algo"])
            seen.add(run["algo"])
        if results["random_elimination"] is not None:
            ax.axhline(100 * results["random_elimination"][k - 1], color="grey", ls=":", label="random elimination")
        ax.set_xlabel(label)
        ax.set_ylabel(f"held-out multi@{k} (%)")
        ax.set_title(f"{results['env']}: budget {results['budget']['kind']}={results['budget']['amount']:g}",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        paths.append(out / name)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ks = list(range(1, results["max_turns"] + 1))
    ax.plot(ks, [100 * v for v in results["base"]["multi_at_k"]], marker="s", color="black", label="base")
    for name, a in results["algorithms"].items():
        ax.plot(ks, [100 * a["final_multi_at_k"][f"multi@{j}"]["mean"] for j in ks], marker="o",
                color=colours[name], label=name)
    if results["random_elimination"] is not None:
        ax.plot(ks, [100 * v for v in results["random_elimination"]], ls=":", color="grey", label="random elimination")
    ax.set_xticks(ks)
    ax.set_xlabel("turns k")
    ax.set_ylabel("final multi@k (%, mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "multi_at_k.png")
    plt.close(fig)
    paths.append(out / "multi_at_k.png")
    return paths

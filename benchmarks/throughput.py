"""Throughput, measured side by side in one run: generation tokens/s by batch size, training
tokens/s with full fine-tuning vs LoRA, and the speed-up from skipping low-weight samples.

    python benchmarks/throughput.py --model smollm2-135m --out runs/bench

Writes throughput.json and prints ratios (to batch 1, to full fine-tuning, to no skipping),
which transfer between machines better than absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def generation(engine_cls, model, tokenizer, batch_sizes: list[int], new_tokens: int) -> list[dict]:
    from drift_algos.engines.base import SamplingParams

    conversation = [{"role": "user", "content": "What is 37 + 48? Answer with <answer>N</answer>."}]
    engine_cls(model, tokenizer).generate([conversation], SamplingParams(max_new_tokens=2))  # warm-up
    rows = []
    for batch in batch_sizes:
        engine = engine_cls(model, tokenizer, batch_size=batch)
        params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, seed=0)
        start = time.perf_counter()
        out = engine.generate([conversation] * batch, params, reply_prefix="<answer>")
        elapsed = time.perf_counter() - start
        tokens = sum(len(c.token_ids) for group in out for c in group)
        rows.append({"batch": batch, "tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed})
    return rows


def training(model_spec: str, samples: int, lora: bool, min_weight: float) -> dict:
    from drift_algos.models import load_model, load_tokenizer
    from drift_algos.training.samples import Sample
    from drift_algos.training.trainer import TrainConfig, Trainer

    tokenizer = load_tokenizer(model_spec)
    model = load_model(model_spec)
    # Weights as DRIFT gives them at beta 0.1: a few successes near 2, many failures near 0.003.
    data = [Sample([{"role": "user", "content": f"What is {i} + {i + 7}?"},
                    {"role": "assistant", "content": f"<answer>{i} + {i + 7} = {2 * i + 7}</answer>"}],
                   weight=2.0 if i % 4 == 0 else 0.003) for i in range(samples)]
    kept = [s for s in data if s.weight >= min_weight]
    trainer = Trainer(model, tokenizer, TrainConfig(learning_rate=1e-5, batch_size=8, lora=lora))
    result = trainer.fit(kept)
    return {"lora": lora, "min_weight": min_weight, "samples": len(kept), "tokens": result.tokens,
            "seconds": result.elapsed_s, "tokens_per_s": result.tokens_per_s,
            "weight_mass_kept": sum(s.weight for s in kept) / sum(s.weight for s in data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--train-samples", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()

    from drift_algos.engines.transformers_engine import TransformersEngine
    from drift_algos.models import load_model, load_tokenizer

    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(args.model), load_tokenizer(args.model)
    gen = generation(TransformersEngine, model, tokenizer, [int(b) for b in args.batch_sizes.split(",")],
                     args.new_tokens)
    training(args.model, 8, False, 0.0)  # warm-up: first-use costs (allocator, accelerate) stay out of the table
    train = [training(args.model, args.train_samples, lora, min_weight)
             for lora, min_weight in ((False, 0.0), (True, 0.0), (False, 0.01))]
    report = {"model": args.model, "generation": gen, "training": train}
    (args.out / "throughput.json").write_text(json.dumps(report, indent=2) + "\n")

    table = Table(title=f"generation ({args.model}, {args.new_tokens} new tokens)")
    for column in ("batch", "tokens/s", "x batch 1"):
        table.add_column(column, justify="right")
    for row in gen:
        ratio = row["tokens_per_s"] / gen[0]["tokens_per_s"]
        table.add_row(str(row["batch"]), f"{row['tokens_per_s']:.1f}", f"{ratio:.1f}")
    console.print(table)
    table = Table(title="training")
    for column in ("mode", "samples", "tokens/s", "seconds", "speed-up vs full", "weight mass kept"):
        table.add_column(column, justify="right")
    full = train[0]
    for row in train:
        mode = ("LoRA" if row["lora"] else "full") + (f", skip w<{row['min_weight']}" if row["min_weight"] else "")
        table.add_row(mode, str(row["samples"]), f"{row['tokens_per_s']:.1f}", f"{row['seconds']:.1f}",
                      f"{full['seconds'] / row['seconds']:.2f}", f"{row['weight_mass_kept']:.1%}")
    console.print(table)
    console.print(f"wrote {args.out / 'throughput.json'}")


if __name__ == "__main__":
    main()

"""`drift eval`: greedy multi-turn evaluation of a model on an environment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from drift_algos import jsonio
from drift_algos.evaluation.evaluator import EvalConfig
from drift_cli.common import (
    ApiKeyEnvOption,
    BaseUrlOption,
    EngineArgOption,
    EngineOption,
    ThreadsOption,
    console,
    engine_config,
    env_kwargs,
    given_env_args,
    setup_logging,
    user_errors,
)
from drift_cli.rollout import ENV_ARG_HELP, ENV_HELP, MODEL_HELP
from drift_cli.run import RichReporter, _interval
from drift_cli.tables import turn_table

RUN_HELP = ("A `drift run` directory: evaluate its trained model (or, with --which base, its reference model) "
            "with the run's settings from its config.json, reproducing its eval_trained.jsonl (eval_base.jsonl). "
            "Leave out --env, --model, --adapter, --num-problems, --max-turns, --max-new-tokens, --split, "
            "--source, --data, --env-arg and --seed: they come from the run.")
RUN_SETTINGS = ("env", "model", "adapter", "num_problems", "max_turns", "max_new_tokens", "split", "source", "data",
                "env_arg", "seed")
"""Flags that --run takes from the run's config.json."""


def eval_(
    ctx: typer.Context,
    env: Annotated[str, typer.Option(help=ENV_HELP)] = "math",
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "smollm2-135m",
    adapter: Annotated[Path | None, typer.Option(help="PEFT adapter directory to load on top of --model.")] = None,
    num_problems: Annotated[int, typer.Option(min=1, help="Held-out problems (the first of the split; the "
                                              "default preset's number).")] = EvalConfig.num_problems,
    max_turns: Annotated[int, typer.Option(min=1, help="Turn limit (the default preset's).")] = 3,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Token limit per reply; default: the "
                                                       "environment's suggestion.")] = None,
    split: Annotated[str, typer.Option(help="Problem split.")] = "test",
    source: Annotated[str | None, typer.Option(help="Problem source of the environment.")] = None,
    data: Annotated[str | None, typer.Option(help="Local file or Hub id for the problem source.")] = None,
    env_arg: Annotated[list[str] | None, typer.Option(help=ENV_ARG_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Write metrics JSON here (episodes go to OUT with .jsonl).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Engine micro-batch.")] = 64,
    engine: EngineOption = "auto",
    threads: ThreadsOption = None,
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    engine_arg: EngineArgOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the environments' resets (the multiple-choice letters) and the "
                                      "bootstrap; `drift run`'s default.")] = EvalConfig.seed,
    run: Annotated[Path | None, typer.Option("--run", help=RUN_HELP)] = None,
    which: Annotated[str, typer.Option(help="With --run: the 'trained' or the 'base' model.")] = "trained",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Greedy multi-turn evaluation: accuracy per turn, multi@k and correction rates with 95% intervals (flip
    rates too where the environment continues after a success).

    `drift eval --run RUN_DIR --out FILE.json` repeats a `drift run`'s evaluation of its trained model exactly.
    """
    setup_logging(verbose)
    with user_errors():

        from drift_algos.engines import build_engine
        from drift_algos.evaluation.evaluator import evaluate, run_evaluation
        from drift_algos.records import TrajectoryWriter
        from drift_envs import resolve_env_id
        from drift_envs.registry import env_factory

        if out is not None and not out.parent.exists():
            raise FileNotFoundError(f"output directory does not exist: {out.parent}")
        engine_cfg = engine_config(engine, batch_size=batch_size, threads=threads, base_url=base_url,
                                   api_key_env=api_key_env, engine_arg=engine_arg)
        if run is not None:
            # A flag given on the command line (not left at its default) would be silently overridden.
            clash = [name for name in RUN_SETTINGS
                     if (source := ctx.get_parameter_source(name)) is not None and source.name != "DEFAULT"]
            if clash:
                flags = ", ".join("--" + name.replace("_", "-") for name in clash)
                raise ValueError(f"--run takes {flags} from {run / 'config.json'}; leave them out")
            spec = run_evaluation(run, which)
            env_id, kwargs, cfg, model = spec.env_id, spec.env_args, spec.eval, spec.model
            given: dict[str, str] = {}  # the run's settings, applied where the environment accepts them
            adapter = Path(spec.adapter) if spec.adapter else None
            name = spec.adapter or spec.model  # the name the run gave the model it evaluated
            env_label = env_id
        else:
            if ctx.get_parameter_source("which").name != "DEFAULT":
                raise ValueError("--which picks a model of a run: give --run RUN_DIR too")
            env_id = resolve_env_id(env)
            kwargs = env_kwargs(max_turns=max_turns, source=source, data=data, split=split, extra=env_arg)
            given = given_env_args(ctx, kwargs, env_arg)
            cfg = EvalConfig(num_problems=num_problems, max_new_tokens=max_new_tokens, seed=seed)
            name, env_label = model, env
        make = env_factory(env_id, kwargs, explicit=given)
        generator = build_engine(engine_cfg, model, adapter=str(adapter) if adapter else None)
        reporter = RichReporter()
        writer = TrajectoryWriter(out.with_suffix(".jsonl")) if out is not None else None
        try:
            result = evaluate(generator, make, cfg, env_id=env_id, model_name=name, writer=writer,
                              progress=reporter.progress("eval"))
        finally:
            reporter.done("eval")
            generator.close()
            if writer is not None:
                writer.close()
        table = turn_table(result.metrics, f"{name} on {env_label}: {result.metrics.episodes} problems, greedy")
        table.caption = " · ".join(f"multi@{k + 1} {_interval(v, result.multi_ci[k])}"
                                   for k, v in enumerate(result.metrics.multi))
        console.print(table)
        if out is not None:
            out.write_text(jsonio.dumps({"model": model, "adapter": str(adapter) if adapter else None, "env": env_label,
                                       **result.to_dict(), "env_args_not_applied": make.not_applied}, indent=2) + "\n")
            console.print(f"wrote {out}")

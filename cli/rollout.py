"""`drift rollout`: sample trajectories from a model in an environment, to JSONL."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from drift_algos import jsonio
from drift_algos.rollout.collection import CollectionMeta, Shard, open_collection
from drift_cli.common import (
    EXIT_TEMPFAIL,
    ApiKeyEnvOption,
    BaseUrlOption,
    EngineArgOption,
    EngineOption,
    ThreadsOption,
    check_out_path,
    console,
    engine_config,
    env_kwargs,
    err_console,
    given_env_args,
    progress_bar,
    setup_logging,
    user_errors,
)
from drift_cli.tables import pct, rollout_table

ENV_HELP = "Environment: an alias (math, gpqa, code), a Gymnasium id, or module.path:ClassName."
MODEL_HELP = "Hub id, local directory, .gguf file, or 'smollm2-135m' (the embedded default)."
ENV_ARG_HELP = "Extra environment argument key=value (repeatable; values parsed as JSON)."


def rollout(
    ctx: typer.Context,
    env: Annotated[str, typer.Option(help=ENV_HELP)] = "math",
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "smollm2-135m",
    num_prompts: Annotated[int, typer.Option(min=1, help="Problems to sample (groups of --n trajectories).")] = 32,
    n: Annotated[int, typer.Option(min=1, help="Trajectories per problem.")] = 4,
    max_turns: Annotated[int | None, typer.Option(min=1, help="Turn (and answer) limit per episode; "
                                                  "default: the environment's (5).")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature (0: greedy).")] = 1.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling mass.")] = 1.0,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Token limit per reply; default: the "
                                                       "environment's suggestion (math: 20 for an answer-only reply, "
                                                       "512 with --env-arg think=true; code: 512).")] = None,
    split: Annotated[str, typer.Option(help="Problem split (train or test).")] = "train",
    source: Annotated[str | None, typer.Option(help="Problem source. math: procedural, gsm8k, math, math500, "
                                               "metamath; gpqa: procedural, gpqa, mmlu, mmlu_pro, mmlu_redux; "
                                               "code: builtin, humaneval, mbpp.")] = None,
    data: Annotated[str | None, typer.Option(help="Local file or Hub id for the problem source.")] = None,
    feedback: Annotated[str | None, typer.Option(help="Feedback mode: simple or full.")] = None,
    parse: Annotated[str | None, typer.Option(help="Answer parsing: strict (closing tag required) or lenient.")] = None,
    env_arg: Annotated[list[str] | None, typer.Option(help=ENV_ARG_HELP)] = None,
    seed: Annotated[int, typer.Option(help="Seed for problem choice, resets and sampling.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Engine micro-batch (conversations per call).")] = 64,
    engine: EngineOption = "auto",
    threads: ThreadsOption = None,
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    engine_arg: EngineArgOption = None,
    max_live: Annotated[int, typer.Option(min=1, help="Episodes in flight at once (bounds memory; whole groups "
                                          "start together).")] = 256,
    shard: Annotated[str, typer.Option(help="Collect share I of K of the groups (groups g with g % K == I), "
                                       "e.g. 0/4; join the shards with drift merge.")] = "0/1",
    resume: Annotated[bool, typer.Option("--resume", help="Finish an interrupted collection in --out: keep its "
                                         "complete groups, redo partial ones (same settings required).")] = False,
    out: Annotated[Path | None, typer.Option(help="Output JSONL (default: runs/rollouts/<env>-<time>.jsonl); "
                                             "its settings go to OUT.meta.json.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    """Sample N trajectories per problem from a fixed model and write them as JSONL.

    Each record has the DRIFT release's fields (prompt_id, gold, messages, verifier,
    turn_rewards, reward_details, t_star, answer_norms, format_penalty) plus drift's
    (env_id, model, sampling, seed, group_index, turn_tokens, ...). A summary per turn follows.

    Crash-safe: records are written whole as groups finish; after a crash or Ctrl-C, the same
    command with --resume finishes the file, and the result equals an uninterrupted run. An
    existing output is never overwritten.
    """
    setup_logging(verbose)
    with user_errors():

        from drift_algos.engines import build_engine
        from drift_algos.records import TrajectoryWriter
        from drift_algos.rollout.agent import RolloutAgent, RolloutConfig, RolloutFailed
        from drift_envs import resolve_env_id
        from drift_envs.registry import env_factory

        engine_cfg = engine_config(engine, batch_size=batch_size, threads=threads, base_url=base_url,
                                   api_key_env=api_key_env, engine_arg=engine_arg)
        env_id = resolve_env_id(env)
        kwargs = env_kwargs(max_turns=max_turns, feedback=feedback, parse=parse, source=source, data=data,
                            split=split, extra=env_arg)
        make = env_factory(env_id, kwargs, explicit=given_env_args(ctx, kwargs, env_arg))
        make().close()  # one environment first: bad environment arguments fail before the model loads
        if out is None:
            stem = env.replace("/", "_").replace(":", "_")
            out = Path("runs") / "rollouts" / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
        check_out_path(out)
        share = Shard.parse(shard)
        if out.exists() and out.stat().st_size > 0 and not resume:
            raise FileExistsError(f"{out} already exists: finish it with --resume, or choose another --out")
        if resume and not out.exists():
            raise FileNotFoundError(f"--resume: {out} does not exist (nothing to resume)")
        cfg = RolloutConfig(num_prompts=num_prompts, n=n, temperature=temperature, top_p=top_p,
                            max_new_tokens=max_new_tokens, seed=seed, max_live=max_live)
        with console.status(f"loading model {model}"):
            eng = build_engine(engine_cfg, model)
        agent = RolloutAgent(eng, make, env_id=env_id, model_name=model)
        cfg = dataclasses.replace(cfg, max_new_tokens=cfg.max_new_tokens or agent.max_reply_tokens)
        problems = agent.choose_problems(cfg)
        meta = CollectionMeta(env_id=env_id, env_args=kwargs, model=model, temperature=temperature, top_p=top_p,
                              max_new_tokens=cfg.max_new_tokens, seed=seed, num_prompts=num_prompts, n=n,
                              problems=problems, shard=str(share))
        pending = open_collection(out, meta, resume=resume)
        groups, found = pending.groups, pending.found
        if found is not None:
            console.print(f"resuming {out}: {len(found.complete)} complete groups kept, {found.partial_rows} rows of "
                          f"unfinished groups and {found.torn_lines} torn line(s) dropped, {len(groups)} groups to go")
        interrupted = False
        failure: RolloutFailed | None = None
        with TrajectoryWriter(out, append=resume) as writer, progress_bar() as bar:
            task = bar.add_task("rollout", total=len(groups) * n, extra="")
            update = lambda done, total, tokens: bar.update(task, completed=done, extra=f"{tokens:,} tok")  # noqa: E731
            try:
                _, summary = agent.run(cfg, writer=writer, problems=[problems[g] for g in groups], groups=groups,
                                       progress=update)
            except KeyboardInterrupt:
                interrupted = True
            except RolloutFailed as err:
                failure = err
        if failure is not None:
            err_console.print(f"[bold red]error:[/] {escape(str(failure))}; {writer.count} trajectories are in {out}: "
                              "finish with the same command and --resume", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_TEMPFAIL)
        if interrupted:
            err_console.print(f"interrupted: {writer.count} trajectories written to {out}; finish with the same "
                              "command and --resume")
            raise typer.Exit(130)
        console.print(rollout_table(summary))
        stats = {"env_id": env_id, "model": model, "config": asdict(cfg), "shard": str(share),
                 "resumed": resume, "episodes": summary.metrics.episodes,
                 "accuracy_per_turn": summary.metrics.accuracy, "multi_at_k": summary.metrics.multi,
                 "generated_tokens": summary.generated_tokens, "tokens_per_s": summary.tokens_per_s,
                 "elapsed_s": summary.elapsed_s, "env_args_not_applied": make.not_applied}
        out.with_suffix(".summary.json").write_text(jsonio.dumps(stats) + "\n")
        console.print(f"wrote {writer.count} trajectories to [bold]{out}[/] (this run's share) "
                      f"(success within {summary.metrics.max_turns} turns: {pct(summary.metrics.overall)})")

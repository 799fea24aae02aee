"""``drift/MathCorrection-v0``: answer a math problem, with feedback after each wrong answer."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from drift_envs.base import Problem, TextEnv, TextEnvConfig, Verdict
from drift_envs.math.problems import generate_problems
from drift_envs.parsing import ParsedReply
from drift_envs.verify import math_equal, normalise_answer

MATH_SOURCES = ("procedural", "gsm8k", "math", "math500", "metamath")


@dataclass
class MathEnvConfig(TextEnvConfig):
    """Settings of the math self-correction environment."""

    source: str = "procedural"
    """Problem source: ``procedural`` (built in, offline), ``gsm8k``, ``math``, ``math500`` or ``metamath``."""
    path: str | None = None
    """Hub dataset id or local file (.jsonl/.json/.parquet/.csv) for a dataset source;
    ``None`` uses the source's usual Hub id."""
    split: str = "train"
    """``train`` or ``test`` (procedural splits are disjoint by construction)."""
    num_problems: int = 1000
    """How many problems to draw from the source (a cap for dataset sources)."""
    levels: tuple[int, ...] = (1, 2)
    """Procedural difficulty levels to mix (1: +/-, 2: x, 3: three operands, 4: word problems, 5: fractions)."""
    problem_seed: int = 0
    """Seed of the procedural generator (which problems, not which one an episode gets)."""
    problems: Sequence[Problem] | None = field(default=None, repr=False)
    """Explicit problems; overrides ``source`` when given."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.levels = tuple(int(level) for level in self.levels)
        if self.source not in MATH_SOURCES:
            raise ValueError(f"source must be one of {MATH_SOURCES}, got {self.source!r}")
        if self.num_problems < 1:
            raise ValueError(f"num_problems must be >= 1, got {self.num_problems}")


@functools.lru_cache(maxsize=32)
def load_math_problems(
    source: str, path: str | None, split: str, num_problems: int, levels: tuple[int, ...], seed: int
) -> tuple[Problem, ...]:
    """Problems of a source, cached: many environments share one list."""
    if source == "procedural":
        return tuple(generate_problems(num_problems, split=split, levels=levels, seed=seed))
    from drift_envs.math import datasets as math_datasets  # lazy: pulls in `datasets`

    return tuple(math_datasets.load(source, path=path, split=split, limit=num_problems))


class MathCorrectionEnv(TextEnv):
    """Math self-correction: ``<answer>`` replies checked with math-verify.

    Observations are user messages (see :mod:`drift_envs.base`); the action is the
    assistant's reply. Solving sets ``terminated``; the turn or action limit sets
    ``truncated``.
    """

    instruction = "You are solving Math problems. Only give the final answer between <answer> and </answer>."

    config_class = MathEnvConfig

    def __init__(self, config: MathEnvConfig | None = None, render_mode: str | None = None, **overrides):
        super().__init__(config, render_mode, **overrides)
        config = self.config
        if config.problems is not None:
            self._problems: Sequence[Problem] = tuple(config.problems)
        else:
            self._problems = load_math_problems(
                config.source, config.path, config.split, config.num_problems, config.levels, config.problem_seed
            )

    @property
    def problems(self) -> Sequence[Problem]:
        return self._problems

    @property
    def max_reply_tokens(self) -> int:
        """An answer-only reply is one line of arithmetic (at most ~15 tokens from the embedded model)."""
        return 512 if self.config.think else 20

    def judge(self, parsed: ParsedReply, problem: Problem) -> Verdict:
        assert parsed.content is not None
        correct = math_equal(problem.answer, parsed.content)
        return Verdict(success=correct, score=1.0 if correct else 0.0)

    def normalise(self, content: str) -> str:
        return normalise_answer(content)

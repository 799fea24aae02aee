"""``drift/MultipleChoice-v0`` (CLI alias ``gpqa``): answer a multiple-choice question by its letter.

The user message shows the question and its lettered options (``question\\nA. ...\\nB. ...``)
after the DRIFT release's instruction, ``Only give the final answer letter (A-D) between
<answer> and </answer>`` (the letter range follows the number of options).

**Letters.** With ``shuffle=True`` (the default) the options are shown in an order drawn
for the episode from ``self.np_random``, so ``reset(seed=s)`` always shows the same
lettering and the rollout agent, which resets every member of a group with one seed, gives
the whole group one identical prompt. The order is fixed at ``reset``: it seeds the
generator, draws a 63-bit *shuffle key* from it, then lets :meth:`TextEnv.reset` pick the
problem; the order shown is a pure function of (key, problem id), which
:meth:`~MultipleChoiceEnv.question_text`, the parser and the judge all recompute, so no
view method changes state. The record's ``gold`` stays the correct option's text; reset's
info adds ``gold_letter``.

**Answers.** ``parse`` turns the reply into a letter of the options shown:

* strict: the ``<answer>`` block (closed) holds a single letter (``B``);
* lenient (default): ``B``, ``(B)``, ``B.``, ``B. 85``, ``The answer is B``, ``Answer: B``;
  or else the text or value of one option (``85``, or ``37 + 48 = 85``: the right-hand side
  of the last ``=``, when the equation holds: ``37 + 48 = 84 = 85`` names none), as in the probe on
  which DRIFT helped the embedded model.

An answer longer than :data:`~drift_envs.verify.MAX_ANSWER_CHARS` plus the longest option names no option;
every pattern runs in linear time, so a step returns promptly on a megabyte reply.

A reply whose content names no option (the model copying the placeholder ``[your answer]``,
a letter past the last option, ...) is a format failure: no action, format penalty. The
letter is the normalised answer, so ``B`` and the text of option B count as a repetition.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from drift_envs.base import TextEnv, TextEnvConfig, Verdict
from drift_envs.multiple_choice.datasets import SOURCES
from drift_envs.multiple_choice.problems import (
    DEFAULT_KINDS,
    KINDS,
    LETTERS,
    MAX_GENERATED_CHOICES,
    MIN_CHOICES,
    MCProblem,
    generate_mc_problems,
)
from drift_envs.parsing import ParsedReply, ParseMode
from drift_envs.verify import HEDGE_RE, MAX_ANSWER_CHARS, equation_holds

MC_SOURCES = ("procedural", "gpqa", "mmlu", "mmlu_pro", "mmlu_redux")


def mc_instruction(num_choices: int) -> str:
    """The release's multiple-choice instruction, letter range ``A-<last letter>``."""
    return (
        f"You are solving multiple-choice questions. Only give the final answer letter (A-{LETTERS[num_choices - 1]}) "
        "between <answer> and </answer>."
    )


@dataclass
class MCEnvConfig(TextEnvConfig):
    """Settings of the multiple-choice environment."""

    source: str = "procedural"
    """Problem source: ``procedural`` (built in, offline), ``gpqa``, ``mmlu``, ``mmlu_pro`` or ``mmlu_redux``."""
    path: str | None = None
    """Hub dataset id or local file (.jsonl/.json/.parquet/.csv) for a dataset source;
    ``None`` uses the source's usual Hub id."""
    name: str | None = None
    """Hub configuration of a dataset source (``gpqa_main``, an MMLU subject, ...); ``None``: the source's usual one."""
    split: str | None = None
    """Procedural: ``train`` or ``test`` (disjoint by construction); datasets: the Hub split.
    ``None``: ``train`` for procedural problems, else the dataset's evaluation split
    (GPQA: ``train``, its only one; MMLU, MMLU-Pro, MMLU-Redux: ``test``)."""
    num_problems: int = 1000
    """How many problems to draw from the source (a cap for dataset sources)."""
    kinds: tuple[str, ...] = DEFAULT_KINDS
    """Procedural problem kinds to mix: ``arithmetic``, ``units``, ``facts``, ``constants``."""
    num_choices: int = 4
    """Options per procedural problem (2-10); datasets bring their own."""
    problem_seed: int = 0
    """Seed of the procedural generator (which problems, not which one an episode gets)."""
    shuffle: bool = True
    """Show the options in an order drawn per episode (fixed by the reset seed); ``False``:
    the problem's own order."""
    problems: Sequence[MCProblem] | None = field(default=None, repr=False)
    """Explicit problems; overrides ``source`` when given."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.kinds, str):  # "arithmetic,units" from a command line
            self.kinds = tuple(kind.strip() for kind in self.kinds.split(",") if kind.strip())
        self.kinds = tuple(self.kinds)
        if self.source not in MC_SOURCES:
            raise ValueError(f"source must be one of {MC_SOURCES}, got {self.source!r}")
        if not self.kinds or set(self.kinds) - set(KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {list(KINDS)}, got {list(self.kinds)}")
        if self.split is None:
            self.split = "train" if self.source == "procedural" else SOURCES[self.source].hub_splits[0]
        if self.source == "procedural" and self.problems is None and self.split not in ("train", "test"):
            raise ValueError(f"procedural split must be 'train' or 'test', got {self.split!r}")
        if self.num_problems < 1:
            raise ValueError(f"num_problems must be >= 1, got {self.num_problems}")
        if not MIN_CHOICES <= self.num_choices <= MAX_GENERATED_CHOICES:
            raise ValueError(f"num_choices must be in [{MIN_CHOICES}, {MAX_GENERATED_CHOICES}], got {self.num_choices}")
        if self.problems is not None:
            self.problems = tuple(self.problems)
            if not self.problems:
                raise ValueError("problems must not be empty")
            for problem in self.problems:
                if not isinstance(problem, MCProblem):
                    raise TypeError(f"problems must be MCProblem instances, got {type(problem).__name__}")


@functools.lru_cache(maxsize=32)
def load_mc_problems(
    source: str,
    path: str | None,
    name: str | None,
    split: str,
    num_problems: int,
    kinds: tuple[str, ...],
    num_choices: int,
    seed: int,
) -> tuple[MCProblem, ...]:
    """Problems of a source, cached: the rollout agent builds one environment per episode."""
    if source == "procedural":
        return tuple(generate_mc_problems(num_problems, split, kinds, seed, num_choices))
    from drift_envs.multiple_choice import datasets as mc_datasets

    return tuple(mc_datasets.load(source, path=path, split=split, limit=num_problems, name=name))


# -- reading an answer --------------------------------------------------------------------

_BARE_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:)]?")
_LABELLED = re.compile(r"(?:\(([A-Z])\)|([A-Z])[.:)])\s+\S")
"""An option label followed by text: ``B. 85``, ``(B) 85``, ``B) 85``."""
_PHRASE = re.compile(r"(?i:\b(?:answer|option|choice)\b)\s*+(?:(?i:is)\b\s*+)?(?::\s*+)?\(?([A-Z])\)?(?![A-Za-z0-9])")
"""``the answer is B``, ``Answer: (C)``, ``option D``: the letter upper case, as labels are shown. The whitespace
runs are possessive (``\s*+``): with plain ``\s*`` around optional words, a reply of ``answer`` and a thousand
spaces took 16 s to search."""
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NUMBER_WITH_UNIT = re.compile(r"([-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+))\s*[^\d\s][^\d]*")


def _norm(text: str) -> str:
    text = " ".join(text.split()).casefold()
    return text.strip("*`'\" ").rstrip(".").strip()


def _number(text: str) -> float | None:
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    return float(text.replace(",", ""))


def _option_number(text: str) -> float | None:
    """The value of an option that is a number, or a number and a unit without digits (``100°C``)."""
    value = _number(text)
    if value is not None:
        return value
    match = _NUMBER_WITH_UNIT.fullmatch(text.strip())
    return float(match.group(1).replace(",", "")) if match else None


_MC_HEDGE = re.compile(r"(?i)\band\b|[,;/&]")
"""Connectives and separators that list several options (``C, D``, ``C/D``, ``B and C``)."""
_MENTION = re.compile(r"(?<![A-Za-z0-9'])\(?([A-Z])\)?(?![A-Za-z0-9'])(?!\s+[a-z])")
"""A capital letter standing alone (``B``, ``(B)``), not an article or pronoun (``A good``, ``I think``)."""


def _names_option(text: str, options: Sequence[str]) -> set[int]:
    """Options whose text (or value) ``text`` is."""
    wanted = _norm(text)
    if not wanted:
        return set()
    hits = {i for i, option in enumerate(options) if _norm(option) == wanted}
    value = _number(text)
    if not hits and value is not None:
        hits = {i for i, option in enumerate(options) if _option_number(option) == value}
    return hits


def read_choice(content: str, options: Sequence[str], *, strict: bool = False) -> int | None:
    """Index of the option ``content`` names (a letter, or in lenient mode an option's text
    or value); ``None`` when it names none, or several.

    An answer that hedges, negates or lists options (``(C) or (D)``, ``The answer is C or D``,
    ``not C``, ``C, D``) names no single option and is wrong, unless it is exactly an option's
    text: otherwise naming every letter would always collect the reward.

    >>> read_choice("B", ["84", "85", "86", "87"]), read_choice("37 + 48 = 85", ["84", "85", "86", "87"])
    (1, 1)
    >>> read_choice("[your answer]", ["84", "85", "86", "87"]) is None
    True
    """
    n = len(options)
    text = content.strip()
    if len(text) > MAX_ANSWER_CHARS + max(map(len, options)):  # no way of naming one option is that long
        return None

    def index_of(letter: str | None) -> int | None:
        if letter is None:
            return None
        index = LETTERS.index(letter.upper())
        return index if index < n else None

    if strict:
        return index_of(text) if len(text) == 1 and text.isalpha() and text.isascii() else None
    core = text.strip("*`'\" ")
    exact = _names_option(core, options)
    if len(exact) == 1:
        return exact.pop()
    labelled = _LABELLED.match(core)
    if labelled and index_of(labelled.group(1) or labelled.group(2)) is not None:
        # "B. 85" where option B is 85: the label and the text agree.
        index = index_of(labelled.group(1) or labelled.group(2))
        if _names_option(core[labelled.end() - 1 :], options) == {index}:
            return index
    unlisted = _THOUSANDS.sub("", core)
    if HEDGE_RE.search(unlisted) or _MC_HEDGE.search(unlisted):
        return None
    mentioned = {m.group(1) for m in _MENTION.finditer(core) if index_of(m.group(1)) is not None}
    if len(mentioned) > 1:
        return None
    # A letter past the last option falls through: the text may still name an option.
    bare = _BARE_LETTER.fullmatch(core)
    if bare and index_of(bare.group(1)) is not None:
        return index_of(bare.group(1))
    if labelled and index_of(labelled.group(1) or labelled.group(2)) is not None:
        index = index_of(labelled.group(1) or labelled.group(2))
        named = _names_option(core[labelled.end() - 1 :], options)
        return index if not named or named == {index} else None
    phrase = _PHRASE.search(core)
    if phrase and index_of(phrase.group(1)) is not None:
        return index_of(phrase.group(1))
    # The text or value of an option; after "=", its right-hand side (``37 + 48 = 85``), where the equation holds.
    candidates = [core] + ([core.rsplit("=", 1)[1]] if "=" in core and equation_holds(core) else [])
    for candidate in candidates:
        hits = _names_option(candidate, options)
        if len(hits) == 1:
            return hits.pop()
        if hits:  # the text names several (identical) options: ambiguous
            return None
    return None


# -- the environment ----------------------------------------------------------------------


class MultipleChoiceEnv(TextEnv):
    """Multiple choice: ``<answer>`` replies naming one of the lettered options.

    Observations are user messages (see :mod:`drift_envs.base`); the action is the
    assistant's reply. Solving sets ``terminated``; the turn or action limit sets
    ``truncated``. See the module docstring for the lettering and the parsing.
    """

    instruction = mc_instruction(4)

    config_class = MCEnvConfig

    def __init__(self, config: MCEnvConfig | None = None, render_mode: str | None = None, **overrides: Any):
        super().__init__(config, render_mode, **overrides)
        config = self.config
        if config.problems is not None:
            self._problems: tuple[MCProblem, ...] = tuple(config.problems)
        else:
            self._problems = load_mc_problems(
                config.source, config.path, config.name, config.split, config.num_problems, config.kinds,
                config.num_choices, config.problem_seed,
            )
        # One letter range for the whole set, as the release does (A-J for MMLU-Pro).
        self.instruction = mc_instruction(max(len(p.choices) for p in self._problems))
        self._shuffle_key: int | None = None
        self._problem: MCProblem | None = None
        self._by_id: dict[str, MCProblem] | None = None

    @property
    def problems(self) -> Sequence[MCProblem]:
        return self._problems

    # -- the episode's lettering ---------------------------------------------------------
    def choice_order(self, problem: MCProblem) -> tuple[int, ...]:
        """``order[i]`` is the index in ``problem.choices`` of the option shown with letter ``LETTERS[i]``."""
        n = len(problem.choices)
        if self._shuffle_key is None:
            return tuple(range(n))
        problem_key = int.from_bytes(hashlib.sha256(problem.id.encode()).digest()[:8], "big")
        rng = np.random.default_rng([self._shuffle_key, problem_key])
        return tuple(int(i) for i in rng.permutation(n))

    def shown_choices(self, problem: MCProblem) -> tuple[str, ...]:
        """The options in the order shown this episode."""
        return tuple(problem.choices[i] for i in self.choice_order(problem))

    def gold_letter(self, problem: MCProblem) -> str:
        """The letter of the correct option this episode."""
        return LETTERS[self.choice_order(problem).index(problem.correct)]

    def question_text(self, problem: MCProblem) -> str:  # type: ignore[override]
        options = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(self.shown_choices(problem)))
        return f"{problem.question}\n{options}"

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        # Seed now and draw the episode's shuffle key before TextEnv.reset picks the problem
        # and renders it; TextEnv.reset(seed=None) then leaves the generator as it is.
        gym.Env.reset(self, seed=seed)
        self._shuffle_key = int(self.np_random.integers(2**63)) if self.config.shuffle else None
        observation, info = super().reset(options=options)
        self._problem = self._lookup(info["problem_id"])
        info["gold_letter"] = self.gold_letter(self._problem)
        return observation, info

    def _lookup(self, problem_id: str) -> MCProblem:
        if self._by_id is None:
            self._by_id = {}
            for problem in self._problems:
                if problem.id in self._by_id:
                    raise ValueError(f"duplicate problem id {problem.id!r}: ids must be unique")
                self._by_id[problem.id] = problem
        return self._by_id[problem_id]

    # -- answers -------------------------------------------------------------------------
    def parse(self, reply: str) -> ParsedReply:
        """The reply's answer as a letter of this episode's options (see the module docstring).

        A reply whose content names no option is not an answer (format failure); the record
        keeps the model's own text.
        """
        parsed = super().parse(reply)
        if parsed.content is None or self._problem is None:
            return parsed
        strict = self.config.parse is ParseMode.STRICT
        index = read_choice(parsed.content, self.shown_choices(self._problem), strict=strict)
        if index is None:
            return ParsedReply(None, parsed.think, False, reply)
        return ParsedReply(LETTERS[index], parsed.think, parsed.well_formed, parsed.rendered)

    def judge(self, parsed: ParsedReply, problem: MCProblem) -> Verdict:  # type: ignore[override]
        assert parsed.content is not None
        strict = self.config.parse is ParseMode.STRICT
        index = read_choice(parsed.content, self.shown_choices(problem), strict=strict)
        correct = index is not None and LETTERS[index] == self.gold_letter(problem)
        return Verdict(success=correct, score=1.0 if correct else 0.0)

    def normalise(self, content: str) -> str:
        # parse() has already reduced the answer to its letter.
        return content.strip().upper()

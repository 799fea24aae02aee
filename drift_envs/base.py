"""The drift text-environment contract and its shared multi-turn logic.

Observations and actions are plain strings:

* ``reset()`` returns the first user message (instruction + problem);
* ``step(reply)`` takes the assistant's whole reply (the engine's completion with the
  env's :attr:`TextEnv.reply_prefix` in front) and returns the *next user message*
  (feedback, or ``"Correct!"`` when solved).

The agent keeps the conversation (it knows its own replies); ``info["rendered_reply"]``
gives the canonical form of each reply for the record. Every drift environment follows
this, so one agent runs them all.

A reply longer than the action space's ``max_length`` (:data:`MAX_TEXT_LENGTH`, 1 Mi characters) is outside the
action space: it is not read at all and counts as a malformed reply (a turn, no answer, the format penalty;
``info["oversized"]`` is true). Replies up to that length are read in linear time, and the answer checks cap what
they hand to slower checkers (:data:`drift_envs.verify.MAX_ANSWER_CHARS`), so a step returns promptly whatever the
model wrote.

Per-turn rewards follow the DRIFT release: ``r_t`` is the verifier's score (1 for a
correct math answer); a reply without a well-formed answer adds ``format_penalty``; the
final step subtracts the repetition penalty. The sum of Gymnasium rewards over an episode is
therefore ``sum_t r_t + format_penalty - repetition_penalty`` (undiscounted); the
discounted DRIFT return is computed from the episode record (``info["episode"]``).
"""

from __future__ import annotations

import dataclasses
import string
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import gymnasium as gym
from gymnasium.spaces import Text

from drift_envs.parsing import ParsedReply, ParseMode, parse_reply

CORRECT_MESSAGE = "Correct!"
SIMPLE_FEEDBACK = "Incorrect. Please think again."
SYSTEM_PROMPT = "You're a helpful assistant. "
"""The DRIFT release's system message."""
MAX_TEXT_LENGTH = 1 << 20
"""Longest observation or reply, in characters (the spaces' ``max_length``): a longer reply is malformed."""


class TextSpace(Text):
    """A :class:`gymnasium.spaces.Text` that contains any Unicode string up to ``max_length``.

    Model replies and prompts use characters outside any fixed charset; sampling still
    draws from printable ASCII so ``check_env`` and random agents work.
    """

    def __init__(self, max_length: int = MAX_TEXT_LENGTH, *, seed: int | None = None):
        super().__init__(max_length, min_length=0, charset=string.printable, seed=seed)

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        # Short samples: random actions only need to exercise the env, not fill 1 MiB.
        if mask is None and probability is None:
            length = int(self.np_random.integers(0, 64))
            chars = list(string.printable)
            return "".join(chars[i] for i in self.np_random.integers(0, len(chars), size=length))
        return super().sample(mask=mask, probability=probability)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"


class FeedbackMode(str, Enum):
    """What the user says after a wrong answer."""

    SIMPLE = "simple"
    """Exactly ``"Incorrect. Please think again."`` (plus the environment's detail, e.g. a failing test)."""
    FULL = "full"
    """A block with the reward, the turn number, the state and the number of actions left."""


@dataclass
class TextEnvConfig:
    """Settings shared by every drift text environment (method.md reference values)."""

    max_turns: int = 5
    """Turn limit T: replies the model may give, parsable or not. Reaching it truncates."""
    max_actions: int = 5
    """Answers (parsable replies) the model may give. Using them up truncates."""
    feedback: FeedbackMode = FeedbackMode.SIMPLE
    """Feedback after a wrong answer: ``simple`` or ``full``."""
    parse: ParseMode = ParseMode.LENIENT
    """``strict`` (release: closing tag required) or ``lenient`` (first line after ``<answer>``)."""
    format_penalty: float = -0.1
    """Added to the reward of each reply that is not a well-formed ``<answer>`` block."""
    repetition_lambda: float = 0.5
    """Repetition penalty ``lambda * (1 - unique answers / answers)``, charged at the end."""
    think: bool = False
    """Prime replies with ``<think>`` (reason first) instead of ``<answer>``."""

    def __post_init__(self) -> None:
        self.feedback = FeedbackMode(self.feedback)
        self.parse = ParseMode(self.parse)
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        if self.max_actions < 1:
            raise ValueError(f"max_actions must be >= 1, got {self.max_actions}")
        if self.format_penalty > 0:
            raise ValueError(f"format_penalty must be <= 0, got {self.format_penalty}")
        if self.repetition_lambda < 0:
            raise ValueError(f"repetition_lambda must be >= 0, got {self.repetition_lambda}")


@dataclass(frozen=True)
class Problem:
    """One task instance: a question and its reference answer."""

    id: str
    """Stable identifier; becomes the trajectory's ``prompt_id``."""
    question: str
    """The task text shown to the model (without the answer-format instruction)."""
    answer: str
    """Reference answer (the record's ``gold``)."""
    source: str = ""
    """Where it came from (``procedural``, ``gsm8k``, a file path, ...)."""
    level: int | None = None
    """Difficulty level, where the source has one."""


@dataclass(frozen=True)
class Verdict:
    """An environment's judgement of one answer."""

    success: bool
    """The answer solves the problem; ends the episode (``terminated``)."""
    score: float
    """Per-turn reward ``r_t`` in [0, 1] (1 on success; partial credit where the env has it)."""
    detail: str = ""
    """Environment-specific feedback appended after a wrong answer (a failing test, ...)."""


@dataclass
class EpisodeStats:
    """What an episode produced, in the DRIFT release's record terms (``info["episode"]``)."""

    verifier: dict[str, int]
    """``{"t1": 0/1, ...}``: success per turn taken."""
    turn_rewards: dict[str, float]
    """``{"t1": r_1, ...}``: per-turn reward, padded with 0 up to the turn limit."""
    answer_norms: list[str]
    """Normalised answers, in order (for the repetition penalty)."""
    format_penalty: float
    """Sum of format penalties (<= 0)."""
    repetition_penalty: float
    """``lambda * (1 - unique / given)`` (>= 0; subtracted from the return)."""
    t_star: int | None
    """First correct turn (1-based) or ``None``."""
    num_turns: int
    """Replies given."""
    num_actions: int
    """Replies that carried an answer."""
    success: bool
    """Solved within the limits."""


def repetition_penalty(answer_norms: Sequence[str], lam: float = 0.5) -> float:
    """``lam * (1 - unique non-empty answers / answers given)``, at least 0; 0 when no answer was given.

    The one definition, used by the environments and by :mod:`drift_algos.returns`. As in the
    release, an answer that normalised to the empty string counts as given but never as unique.
    """
    if not answer_norms:
        return 0.0
    unique = {str(norm) for norm in answer_norms if norm}
    return max(0.0, lam * (1.0 - len(unique) / len(answer_norms)))


@dataclass
class _EpisodeState:
    problem: Problem
    full_state: str
    turn: int = 0
    actions: int = 0
    done: bool = False
    verifier: dict[str, int] = field(default_factory=dict)
    turn_rewards: dict[str, float] = field(default_factory=dict)
    answer_norms: list[str] = field(default_factory=list)
    format_penalty: float = 0.0
    t_star: int | None = None
    transcript: list[tuple[str, str]] = field(default_factory=list)


class TextEnv(gym.Env[str, str]):
    """Base class of drift's multi-turn text environments.

    A subclass supplies :attr:`problems`, :meth:`prompt`, :meth:`judge` and
    :meth:`normalise`; this class runs turns, actions, penalties and feedback.

    ``reset(options=...)`` accepts ``{"problem_index": i}`` or ``{"problem_id": s}`` to
    pick a problem (the agent uses this to start a group of trajectories on the same
    problem); otherwise the problem is drawn with ``self.np_random``.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    config_class: type[TextEnvConfig] = TextEnvConfig
    """The environment's config dataclass; keyword arguments of ``__init__`` become its fields."""

    def __init__(self, config: TextEnvConfig | None = None, render_mode: str | None = None, **overrides: Any):
        # Keyword settings (from gymnasium.make or the command line) apply on top of a given config.
        if config is None:
            config = self.config_class(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = TextSpace()
        self.action_space = TextSpace()
        self._state: _EpisodeState | None = None
        self._index: dict[str, int] | None = None

    # -- what a subclass supplies ------------------------------------------------------
    @property
    @abstractmethod
    def problems(self) -> Sequence[Problem]:
        """The problems this environment draws from."""

    instruction: str = "Only give the final answer between <answer> and </answer>."
    """First sentence(s) of the user message: what the task is and how to answer."""

    system_prompt: str | None = SYSTEM_PROMPT
    """System message the agent puts before the first user message (``None``: none)."""

    def question_text(self, problem: Problem) -> str:
        """The problem as shown to the model (a subclass adds options, signatures, ...)."""
        return problem.question

    @property
    def answer_format(self) -> str:
        """The output format the user message asks for."""
        if self.config.think:
            return "<think> [Your thoughts] </think> <answer> [your answer] </answer>"
        return "<answer> [your answer] </answer>"

    def _format_reminder(self) -> str:
        return f"Always output: {self.answer_format} with no extra text. Strictly follow this format."

    def _turn_block(self, turn: int, state: str, actions_left: int) -> str:
        return f"Turn {turn}:\nState:\n{state}\nYou have {actions_left} actions left. {self._format_reminder()}\n"

    def prompt(self, problem: Problem) -> str:
        """The first user message for ``problem`` (the release's layout for both modes)."""
        question = self.question_text(problem)
        if self.config.feedback is FeedbackMode.FULL:
            return f"{self.instruction}\n{self._turn_block(1, question, self.config.max_actions)}"
        return f"{self.instruction}\n\nProblem:\n{question}\n\n{self._format_reminder()}"

    @abstractmethod
    def judge(self, parsed: ParsedReply, problem: Problem) -> Verdict:
        """Check a parsed answer (``parsed.content`` is not ``None``)."""

    def normalise(self, content: str) -> str:
        """Canonical form of an answer, to count repetitions."""
        return " ".join(content.split()).lower()

    def parse(self, reply: str) -> ParsedReply:
        """Read the answer out of a reply (tagged ``<answer>`` by default)."""
        return parse_reply(reply, self.config.parse)

    @property
    def reply_prefix(self) -> str:
        """Text the agent appends after the chat template's generation prompt; the reply
        passed to :meth:`step` starts with it."""
        return "<think>" if self.config.think else "<answer>"

    @property
    def max_reply_tokens(self) -> int:
        """Suggested token limit per reply, used when the caller sets none: an answer-only
        reply is one short line; reasoning (``think``) needs room."""
        return 512 if self.config.think else 64

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Strings after which generation can stop: nothing after them is read."""
        return ("</answer>",)


    # -- the Gymnasium contract ---------------------------------------------------------
    def _pick(self, options: dict[str, Any] | None) -> Problem:
        problems = self.problems
        if not problems:
            raise ValueError(f"{type(self).__name__} has no problems to draw from")
        options = options or {}
        if "problem_index" in options:
            index = int(options["problem_index"])
            if not 0 <= index < len(problems):
                raise IndexError(f"problem_index {index} out of range [0, {len(problems)})")
            return problems[index]
        if "problem_id" in options:
            if self._index is None:
                self._index = {p.id: i for i, p in enumerate(problems)}
            if options["problem_id"] not in self._index:
                raise KeyError(f"unknown problem_id {options['problem_id']!r}")
            return problems[self._index[options["problem_id"]]]
        return problems[int(self.np_random.integers(len(problems)))]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        problem = self._pick(options)
        self._state = _EpisodeState(problem=problem, full_state=self.question_text(problem))
        observation = self.prompt(problem)
        self._state.transcript.append(("user", observation))
        return observation, {"problem_id": problem.id, "gold": problem.answer, "turn": 0}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        state = self._state
        if state is None or state.done:
            raise RuntimeError("step() called before reset() or after the episode ended")
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        cfg = self.config
        state.turn += 1
        key = f"t{state.turn}"
        # A reply longer than the action space allows is not read: malformed, charged the format penalty.
        oversized = len(action) > self.action_space.max_length
        parsed = ParsedReply(None, None, False, action) if oversized else self.parse(action)
        penalty = 0.0 if parsed.well_formed else cfg.format_penalty
        state.format_penalty += penalty
        is_action = parsed.content is not None
        if is_action:
            state.actions += 1
            verdict = self.judge(parsed, state.problem)
            state.answer_norms.append(self.normalise(parsed.content))
        else:
            verdict = Verdict(success=False, score=0.0)
        state.verifier[key] = int(verdict.success)
        state.turn_rewards[key] = float(verdict.score)
        if verdict.success and state.t_star is None:
            state.t_star = state.turn
        state.transcript.append(("assistant", parsed.rendered))

        terminated = verdict.success
        truncated = not terminated and (state.turn >= cfg.max_turns or state.actions >= cfg.max_actions)
        reward = verdict.score + penalty
        info: dict[str, Any] = {
            "problem_id": state.problem.id,
            "turn": state.turn,
            "success": verdict.success,
            "is_action": is_action,
            "parsed_answer": parsed.content,
            "well_formed": parsed.well_formed,
            "format_penalty": penalty,
            "score": verdict.score,
            "actions_left": cfg.max_actions - state.actions,
            "rendered_reply": parsed.rendered,
            "oversized": oversized,
        }
        if terminated or truncated:
            state.done = True
            rep = repetition_penalty(state.answer_norms, cfg.repetition_lambda)
            reward -= rep
            info["episode"] = self._episode_stats(rep, success=terminated)
        if terminated:
            observation = CORRECT_MESSAGE
        else:
            observation = self.feedback(verdict, is_action=is_action)
        state.transcript.append(("user", observation))
        return observation, reward, terminated, truncated, info

    def feedback(self, verdict: Verdict, *, is_action: bool) -> str:
        """User message after a wrong or unreadable answer.

        Simple mode: the verdict's detail (if any) and ``"Incorrect. Please think again."``.
        Full mode (the release's block): the reward, then the next turn's number, the state
        and the actions left. After an unreadable reply the state stays what it was, as in
        the release (no action was taken).
        """
        state = self._state
        assert state is not None
        detail = f"{verdict.detail}\n" if verdict.detail else ""
        if self.config.feedback is FeedbackMode.SIMPLE:
            return f"{detail}{SIMPLE_FEEDBACK}"
        if is_action:
            state.full_state = f"{detail}{SIMPLE_FEEDBACK}"
        actions_left = self.config.max_actions - state.actions
        return f"Reward:\n{float(verdict.score)}\n" + self._turn_block(state.turn + 1, state.full_state, actions_left)

    def _episode_stats(self, rep: float, *, success: bool) -> EpisodeStats:
        state = self._state
        assert state is not None
        rewards = dict(state.turn_rewards)
        for t in range(state.turn + 1, self.config.max_turns + 1):
            rewards[f"t{t}"] = 0.0
        return EpisodeStats(
            verifier=dict(state.verifier),
            turn_rewards=rewards,
            answer_norms=list(state.answer_norms),
            format_penalty=state.format_penalty,
            repetition_penalty=rep,
            t_star=state.t_star,
            num_turns=state.turn,
            num_actions=state.actions,
            success=success,
        )

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._state is None:
            return None
        return "\n\n".join(f"[{role}]\n{text}" for role, text in self._state.transcript)

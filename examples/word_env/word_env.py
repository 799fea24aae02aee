"""A drift environment: reverse a made-up word, with feedback after each wrong answer."""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from drift_envs import ParsedReply, Problem, TextEnv, TextEnvConfig, Verdict

CONSONANTS = "bcdfghjklmnprstvz"
VOWELS = "aeiou"


def make_words(count: int, split: str, seed: int) -> list[str]:
    """``count`` distinct pronounceable made-up words of 2 to 4 syllables."""
    rng = random.Random(seed)
    words: dict[str, None] = {}  # ordered and without repeats
    while len(words) < count:
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.randint(2, 4)))
        # The split is a property of the word itself: train and test can never share one.
        in_test = zlib.crc32(word.encode()) % 5 == 0
        if in_test == (split == "test"):
            words[word] = None
    return list(words)


@dataclass
class WordEnvConfig(TextEnvConfig):
    """Settings of the word-reversal environment (the shared ones, max_turns, feedback, ..., included)."""

    split: str = "train"
    """``train`` or ``test``: disjoint sets of words."""
    num_problems: int = 500
    """How many words to draw."""
    problem_seed: int = 0
    """Seed of the word generator (which words, not which one an episode gets)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")
        if self.num_problems < 1:
            raise ValueError(f"num_problems must be >= 1, got {self.num_problems}")


class WordEnv(TextEnv):
    """Reverse a word: the answer to ``lomida`` is ``<answer>adimol</answer>``."""

    instruction = "You are reversing words. Only give the reversed word between <answer> and </answer>."

    config_class = WordEnvConfig  # keyword arguments (from gymnasium.make or the CLI) become its fields

    def __init__(self, config: WordEnvConfig | None = None, render_mode: str | None = None, **overrides):
        super().__init__(config, render_mode, **overrides)
        words = make_words(self.config.num_problems, self.config.split, self.config.problem_seed)
        self._problems = tuple(
            Problem(id=f"word-{word}", question=word, answer=word[::-1], source="word_env") for word in words
        )

    @property
    def problems(self) -> Sequence[Problem]:
        return self._problems

    def question_text(self, problem: Problem) -> str:
        return f"Write the word '{problem.question}' backwards."

    def judge(self, parsed: ParsedReply, problem: Problem) -> Verdict:
        answer = self.normalise(parsed.content)
        if answer == problem.answer:
            return Verdict(success=True, score=1.0)
        hint = f"'{answer}' has {len(answer)} letters; the word has {len(problem.answer)}."
        return Verdict(success=False, score=0.0, detail=hint if len(answer) != len(problem.answer) else "")

    def normalise(self, content: str) -> str:
        # "A D I M O L" and "adimol" are the same answer (and a repeat of each other).
        return "".join(content.split()).lower()

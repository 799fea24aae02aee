"""The built-in, offline, seeded generator of math problems.

Levels (pick a mix with ``levels=``):

1. two-digit addition and subtraction (``What is 37 + 48?``);
2. small multiplication (2..19 x 2..12);
3. three operands, mixed operations (``What is 7 * 6 - 15?``);
4. short multi-step word problems (buying, sharing, reading pages, ...);
5. fractions (``What is 3/4 + 1/6?``, answer reduced, e.g. ``11/12``).

Train and test are disjoint by construction: a problem's split is a function of its
content (a hash of its canonical key), so no seed or size can put the same problem in
both. The embedded SmolLM2-135M answers level 1-2 problems about 30% of the time greedily.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import TypeVar

from drift_envs.base import Problem

D = TypeVar("D")
T = TypeVar("T")

TEST_SHARE = 5
"""One in ``TEST_SHARE`` problem keys falls in the test split."""

LEVEL_NAMES = {1: "add_sub", 2: "mul", 3: "three_ops", 4: "word", 5: "fractions"}

_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lena"]
_ITEMS = ["apple", "pencil", "marble", "sticker", "card", "book", "cookie", "stamp"]


def split_of(key: str) -> str:
    """``"test"`` or ``"train"``, fixed by the problem's content."""
    digest = int(hashlib.sha256(key.encode()).hexdigest(), 16)
    return "test" if digest % TEST_SHARE == 0 else "train"


def _add_sub(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return f"{a}+{b}", f"What is {a} + {b}?", str(a + b)
    a, b = max(a, b), min(a, b)
    return f"{a}-{b}", f"What is {a} - {b}?", str(a - b)


def _mul(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(2, 19), rng.randint(2, 12)
    return f"{a}*{b}", f"What is {a} * {b}?", str(a * b)


def _three_ops(rng: random.Random) -> tuple[str, str, str]:
    a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(2, 40)
    form = rng.choice(["{a} * {b} + {c}", "{a} * {b} - {c}", "{a} + {b} + {c}", "{c} - {a} + {b}"])
    expr = form.format(a=a, b=b, c=c)
    value = eval(expr)  # noqa: S307 - expr is built here from integers and + - *
    return expr.replace(" ", ""), f"What is {expr}?", str(value)


def _word(rng: random.Random) -> tuple[str, str, str]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.randrange(4)
    if kind == 0:
        a, b, c = rng.randint(2, 30), rng.randint(2, 6), rng.randint(2, 10)
        text = (f"{name} has {a} {item}s and buys {b} packs with {c} {item}s in each pack. "
                f"How many {item}s does {name} have now?")
        return f"w0:{a},{b},{c}", text, str(a + b * c)
    if kind == 1:
        price, count = rng.randint(2, 9), rng.randint(2, 9)
        bill = rng.choice([b for b in (20, 50, 100) if b > price * count])
        text = (f"A {item} costs {price} dollars. {name} buys {count} {item}s and pays with a "
                f"{bill}-dollar bill. How much change does {name} get, in dollars?")
        return f"w1:{price},{count},{bill}", text, str(bill - price * count)
    if kind == 2:
        per_day, days, extra = rng.randint(5, 25), rng.randint(2, 7), rng.randint(1, 30)
        text = (f"{name} reads {per_day} pages a day for {days} days, then {extra} more pages. "
                "How many pages does that make in total?")
        return f"w2:{per_day},{days},{extra}", text, str(per_day * days + extra)
    groups, size = rng.randint(2, 9), rng.randint(2, 12)
    text = (f"{groups * size} {item}s are shared equally among {groups} friends. "
            f"How many {item}s does each friend get?")
    return f"w3:{groups},{size}", text, str(size)


def _fractions(rng: random.Random) -> tuple[str, str, str]:
    # Proper fractions in lowest terms, so the question never shows "2/1" or "2/4".
    def proper() -> Fraction:
        while True:
            den = rng.choice([2, 3, 4, 5, 6, 8])
            num = rng.randint(1, den - 1)
            if Fraction(num, den).denominator == den:
                return Fraction(num, den)

    a, b = proper(), proper()
    op = rng.choice(["+", "-"])
    if op == "-" and a < b:
        a, b = b, a
    value = a + b if op == "+" else a - b
    expr = f"{a.numerator}/{a.denominator} {op} {b.numerator}/{b.denominator}"
    return expr.replace(" ", ""), f"What is {expr}? Give the answer as a reduced fraction.", str(value)


_GENERATORS: dict[int, Callable[[random.Random], tuple[str, str, str]]] = {
    1: _add_sub, 2: _mul, 3: _three_ops, 4: _word, 5: _fractions,
}


def generate_problems(
    num_problems: int, *, split: str = "train", levels: Sequence[int] = (1, 2), seed: int = 0
) -> list[Problem]:
    """``num_problems`` distinct problems of ``split``, levels drawn uniformly from ``levels``.

    Deterministic in ``(num_problems, split, levels, seed)``; a larger ``num_problems``
    extends the smaller list (same prefix).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    unknown = sorted(set(levels) - set(_GENERATORS))
    if not levels or unknown:
        raise ValueError(f"levels must be a non-empty subset of {sorted(_GENERATORS)}, got {list(levels)}")
    if num_problems < 1:
        raise ValueError(f"num_problems must be >= 1, got {num_problems}")
    ordered = sorted(set(levels))
    rng = random.Random(f"drift-math-{seed}-{split}-{ordered}")

    def draw() -> tuple[str, tuple[int, str, str]]:
        level = rng.choice(ordered)
        key, question, answer = _GENERATORS[level](rng)
        return f"L{level}:{key}", (level, question, answer)

    def build(key: str, draft: tuple[int, str, str]) -> Problem:
        level, question, answer = draft
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return Problem(f"{LEVEL_NAMES[level]}-{digest}", question, answer, "procedural", level)

    return draw_distinct(num_problems, split, draw, build, f"levels {list(levels)}")


def draw_distinct(
    num_problems: int, split: str, draw: Callable[[], tuple[str, D]], build: Callable[[str, D], T], what: str
) -> list[T]:
    """``num_problems`` problems with distinct keys in ``split``: ``draw()`` gives a key and a draft,
    ``build(key, draft)`` the problem, called at once so a generator's random stream stays in order.

    Raises :class:`ValueError` when ``what`` (the generators asked for) holds too few such problems.
    """
    problems: list[T] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < num_problems:
        attempts += 1
        if attempts > 200 * num_problems + 10_000:
            raise ValueError(f"{what} hold fewer than {num_problems} distinct {split} problems")
        key, draft = draw()
        if key in seen or split_of(key) != split:
            continue
        seen.add(key)
        problems.append(build(key, draft))
    return problems

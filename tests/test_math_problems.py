"""The procedural math generator: deterministic, prefix-stable, disjoint splits, correct answers."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from drift_envs.math.problems import LEVEL_NAMES, generate_problems
from drift_envs.verify import math_equal

ALL_LEVELS = (1, 2, 3, 4, 5)


def test_deterministic() -> None:
    assert generate_problems(200, levels=ALL_LEVELS, seed=3) == generate_problems(200, levels=ALL_LEVELS, seed=3)


def test_bug_order_of_levels_does_not_matter() -> None:
    assert generate_problems(50, levels=(2, 1)) == generate_problems(50, levels=(1, 2))


def test_seed_and_split_change_the_problems() -> None:
    base = [p.id for p in generate_problems(100)]
    assert base != [p.id for p in generate_problems(100, seed=1)]
    assert base != [p.id for p in generate_problems(100, split="test")]


@pytest.mark.parametrize("split", ["train", "test"])
def test_larger_n_extends_smaller(split: str) -> None:
    small = generate_problems(100, split=split, levels=ALL_LEVELS)
    large = generate_problems(700, split=split, levels=ALL_LEVELS)
    assert large[:100] == small


def test_train_and_test_are_disjoint() -> None:
    train = generate_problems(3000, split="train", levels=ALL_LEVELS)
    test = generate_problems(1000, split="test", levels=ALL_LEVELS)
    assert len({p.id for p in train}) == 3000 and len({p.id for p in test}) == 1000
    assert len({p.question for p in train}) == 3000
    assert not {p.id for p in train} & {p.id for p in test}
    assert not {p.question for p in train} & {p.question for p in test}
    # Different seeds draw different problems of the same split, never the other split's.
    other_seed_test = generate_problems(1000, split="test", levels=ALL_LEVELS, seed=7)
    assert not {p.question for p in train} & {p.question for p in other_seed_test}


def test_levels_are_mixed_and_labelled() -> None:
    problems = generate_problems(300, levels=(1, 2))
    assert {p.level for p in problems} == {1, 2}
    for p in problems:
        assert p.source == "procedural"
        assert p.id.startswith(LEVEL_NAMES[p.level] + "-")


_ARITH = re.compile(r"^What is ([\d+\-*/ ]+)\?")
_WORD_PATTERNS: list[tuple[re.Pattern[str], object]] = [
    (re.compile(r"has (\d+) \w+s and buys (\d+) packs with (\d+) "), lambda a, b, c: a + b * c),
    (re.compile(r"costs (\d+) dollars\. \w+ buys (\d+) \w+s and pays with a (\d+)-dollar"), lambda p, n, b: b - p * n),
    (re.compile(r"reads (\d+) pages a day for (\d+) days, then (\d+) more"), lambda p, d, e: p * d + e),
    (re.compile(r"^(\d+) \w+s are shared equally among (\d+) friends"), lambda t, g: Fraction(t, g)),
]


def _evaluate(expression: str) -> Fraction:
    """Value of ``a op b op c`` with * before + and -, in exact fractions."""
    tokens = expression.split()
    terms: list[Fraction] = [Fraction(tokens[0])]
    signs: list[str] = []
    for op, operand in zip(tokens[1::2], tokens[2::2], strict=True):
        if op == "*":
            terms[-1] *= Fraction(operand)
        else:
            signs.append(op)
            terms.append(Fraction(operand))
    value = terms[0]
    for sign, term in zip(signs, terms[1:], strict=True):
        value = value + term if sign == "+" else value - term
    return value


def _expected(question: str) -> Fraction:
    match = _ARITH.match(question)
    if match:
        return _evaluate(match.group(1))
    for pattern, formula in _WORD_PATTERNS:
        match = pattern.search(question)
        if match:
            return Fraction(formula(*(int(g) for g in match.groups())))  # type: ignore[operator]
    raise AssertionError(f"unrecognised question {question!r}")


@pytest.mark.parametrize("level", ALL_LEVELS)
def test_every_level_has_correct_answers(level: int) -> None:
    problems = generate_problems(120, levels=(level,))
    assert {p.level for p in problems} == {level}
    for p in problems:
        value = _expected(p.question)
        assert Fraction(p.answer) == value, p
        if level == 5:  # fractions are asked for reduced
            assert p.answer == str(value)
        else:
            assert value.denominator == 1 and re.fullmatch(r"-?\d+", p.answer), p
        # The verifier accepts the gold in another form: boxed, or as a LaTeX fraction.
        assert math_equal(p.answer, f"\\boxed{{{p.answer}}}"), p
        assert math_equal(p.answer, f"\\frac{{{value.numerator}}}{{{value.denominator}}}"), p
        assert not math_equal(p.answer, str(value + 1)), p


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_problems": 10, "split": "validation"}, "split"),
        ({"num_problems": 10, "levels": ()}, "levels"),
        ({"num_problems": 10, "levels": (0, 6)}, "levels"),
        ({"num_problems": 0}, "num_problems"),
        ({"num_problems": 500, "levels": (2,)}, "fewer than 500"),  # level 2 has ~200 problems in all
    ],
)
def test_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_problems(**kwargs)

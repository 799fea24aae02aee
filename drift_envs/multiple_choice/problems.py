"""Multiple-choice problems and the built-in offline generator.

A :class:`MCProblem` is a :class:`~drift_envs.base.Problem` with its options. Its
``answer`` (the record's ``gold``) is the correct option's *text*, not a letter, so the
environment can re-letter the options per episode without changing the gold.

The procedural generator (``generate_mc_problems``) needs no network. Its kinds:

* ``arithmetic``: two-digit ``+``/``-`` and small ``x`` (2..19 x 2..12), distractors within
  +-12 of the answer: the probe on which DRIFT measurably helped the embedded SmolLM2-135M;
* ``units``: unit conversions (``How many meters are in 7 kilometers?``), distractors from
  a wrong conversion factor or an off-by-one quantity;
* ``facts``: arithmetic facts (squares, cubes, square roots, percentages, divisions);
* ``constants``: physical constants and reference values (speed of light, g, boiling point
  of water, ...), distractors scaled by powers of ten or shifted.

Train and test are disjoint by construction: a problem's split is a function of its question
(a hash of its canonical key, :func:`drift_envs.math.problems.split_of`). Arithmetic keys are
those of the math generator, so an arithmetic question falls in the same split in both
environments.

Loaders for GPQA and the MMLU family are in :mod:`drift_envs.multiple_choice.datasets`.
"""

from __future__ import annotations

import hashlib
import math
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drift_envs.base import Problem
from drift_envs.math.problems import draw_distinct

LETTERS = string.ascii_uppercase
MIN_CHOICES = 2
"""Fewest options a problem may have (a few MMLU-Pro questions have fewer than four)."""
MAX_CHOICES = len(LETTERS)
"""Most options a problem may have: one letter each."""
MAX_GENERATED_CHOICES = 10
"""Most options the procedural generator makes (A-J, as MMLU-Pro)."""


@dataclass(frozen=True)
class MCProblem(Problem):
    """A multiple-choice problem. ``question`` is the bare question (the environment adds the
    lettered options); ``answer`` must be ``choices[correct]``."""

    choices: tuple[str, ...] = ()
    """The options, in their canonical order (the environment may show them shuffled)."""
    correct: int = 0
    """Index of the correct option in :attr:`choices`."""

    def __post_init__(self) -> None:
        # Lists from callers become tuples: the problem is frozen and hashable.
        object.__setattr__(self, "choices", tuple(self.choices))
        if not MIN_CHOICES <= len(self.choices) <= MAX_CHOICES:
            raise ValueError(
                f"problem {self.id!r}: needs {MIN_CHOICES} to {MAX_CHOICES} choices, got {len(self.choices)}"
            )
        for i, choice in enumerate(self.choices):
            if not isinstance(choice, str) or not choice.strip():
                raise ValueError(f"problem {self.id!r}: choice {LETTERS[i]} must be a non-empty string, got {choice!r}")
        if not 0 <= self.correct < len(self.choices):
            raise ValueError(f"problem {self.id!r}: correct index {self.correct} out of range [0, {len(self.choices)})")
        if self.answer != self.choices[self.correct]:
            raise ValueError(
                f"problem {self.id!r}: answer {self.answer!r} is not choice {self.correct} "
                f"{self.choices[self.correct]!r}"
            )

    @classmethod
    def create(
        cls,
        id: str,
        question: str,
        choices: Sequence[str],
        correct: int,
        *,
        source: str = "",
        level: int | None = None,
    ) -> MCProblem:
        """A problem whose ``answer`` is filled in from ``choices[correct]``."""
        choices = tuple(choices)
        if not 0 <= correct < len(choices):
            raise ValueError(f"problem {id!r}: correct index {correct} out of range [0, {len(choices)})")
        return cls(id, question, choices[correct], source, level, choices, correct)


# -- the procedural generator -------------------------------------------------------------

KINDS = ("arithmetic", "units", "facts", "constants")
DEFAULT_KINDS = ("arithmetic",)


@dataclass(frozen=True)
class _Draft:
    key: str
    """Canonical key of the question: fixes its split."""
    question: str
    answer: str
    distractors: tuple[str, ...]
    """Candidate wrong options, distinct and different from the answer."""


def _distinct(answer: str, candidates: Sequence[str]) -> tuple[str, ...]:
    seen = {answer}
    out = []
    for candidate in candidates:
        if candidate not in seen:
            seen.add(candidate)
            out.append(candidate)
    return tuple(out)


def _integers(answer: int, candidates: Sequence[int], *, minimum: int = 0) -> tuple[str, ...]:
    """Distractor texts from integer candidates, topped up with neighbours of the answer so
    that there are always enough for :data:`MAX_GENERATED_CHOICES` options."""
    kept = [c for c in candidates if c >= minimum]
    step = 1
    while len(set(kept) - {answer}) < 2 * MAX_GENERATED_CHOICES:
        kept.extend(c for c in (answer + step, answer - step) if c >= minimum)
        step += 1
    return _distinct(str(answer), [str(c) for c in kept])


def _arithmetic(rng: random.Random) -> _Draft:
    # The math generator's levels 1 and 2, with its keys (see the module docstring).
    if rng.random() < 2 / 3:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if rng.random() < 0.5:
            key, text, value = f"L1:{a}+{b}", f"What is {a} + {b}?", a + b
        else:
            a, b = max(a, b), min(a, b)
            key, text, value = f"L1:{a}-{b}", f"What is {a} - {b}?", a - b
    else:
        a, b = rng.randint(2, 19), rng.randint(2, 12)
        key, text, value = f"L2:{a}*{b}", f"What is {a} * {b}?", a * b
    # Near misses only: every distractor within +-12 of the answer (the measured probe).
    near = [value + d for d in range(-12, 13) if d]
    rng.shuffle(near)
    return _Draft(key, text, str(value), _integers(value, near))


# (plural of the larger unit, plural of the smaller unit, smaller units per larger unit)
_CONVERSIONS = (
    ("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("centimeters", "millimeters", 10),
    ("kilograms", "grams", 1000), ("liters", "milliliters", 1000), ("hours", "minutes", 60),
    ("minutes", "seconds", 60), ("days", "hours", 24), ("weeks", "days", 7), ("years", "months", 12),
    ("feet", "inches", 12), ("yards", "feet", 3), ("pounds", "ounces", 16), ("gallons", "quarts", 4),
    ("decades", "years", 10), ("centuries", "years", 100), ("dozen", "items", 12),
)
_CONFUSABLE_FACTORS = (3, 4, 7, 10, 12, 16, 24, 60, 100, 1000)


def _units(rng: random.Random) -> _Draft:
    big, small, factor = rng.choice(_CONVERSIONS)
    n = rng.randint(2, 99)
    value = n * factor
    # A wrong factor, or the right factor with an off-by-one quantity.
    wrong = [n * f for f in _CONFUSABLE_FACTORS if f != factor] + [(n - 1) * factor, (n + 1) * factor]
    rng.shuffle(wrong)
    question = f"How many {small} are in {n} {big}?"
    return _Draft(f"units:{big}>{small}:{n}", question, str(value), _integers(value, wrong, minimum=1))


_PERCENTS = (10, 20, 25, 30, 40, 50, 60, 75, 80, 90)


def _facts(rng: random.Random) -> _Draft:
    kind = rng.randrange(5)
    if kind == 0:
        n = rng.randint(2, 30)
        value = n * n
        wrong = [(n - 1) ** 2, (n + 1) ** 2, (n + 2) ** 2, 2 * n, n * n + n, n * n - n, n * (n + 2), n**3]
        draft = (f"facts:square:{n}", f"What is {n} squared?", value, wrong)
    elif kind == 1:
        n = rng.randint(2, 15)
        value = n**3
        wrong = [(n - 1) ** 3, (n + 1) ** 3, n * n, 3 * n, n**3 + n * n, n**3 - n * n, 2 * n**3, (n + 2) ** 3]
        draft = (f"facts:cube:{n}", f"What is {n} cubed?", value, wrong)
    elif kind == 2:
        n = rng.randint(2, 40)
        value = n
        wrong = [n - 1, n + 1, n - 2, n + 2, 2 * n, n + 10, n * n // 2, n - 3, n + 3]
        draft = (f"facts:sqrt:{n * n}", f"What is the square root of {n * n}?", value, wrong)
    elif kind == 3:
        p, q = rng.choice(_PERCENTS), 20 * rng.randint(1, 50)
        value = p * q // 100
        wrong = [other * q // 100 for other in _PERCENTS if other != p] + [q - value, q + value]
        draft = (f"facts:percent:{p}:{q}", f"What is {p}% of {q}?", value, wrong)
    else:
        divisor, value = rng.randint(2, 12), rng.randint(2, 20)
        total = divisor * value
        wrong = [value - 1, value + 1, value - 2, value + 2, total // (divisor + 1), total - divisor, divisor]
        draft = (f"facts:divide:{total}/{divisor}", f"What is {total} divided by {divisor}?", value, wrong)
    key, question, value, wrong = draft
    rng.shuffle(wrong)
    return _Draft(key, question, str(value), _integers(value, wrong, minimum=1))


def format_quantity(value: float, sig: int = 3) -> str:
    """``value`` to ``sig`` significant digits; scientific (``3.00 x 10^8``) when very large or small.

    >>> format_quantity(3e8), format_quantity(9.81), format_quantity(6371), format_quantity(-273.15)
    ('3.00 x 10^8', '9.81', '6370', '-273')
    """
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    if exponent >= 5 or exponent < -2:
        mantissa = value / 10**exponent
        if abs(round(mantissa, sig - 1)) >= 10:  # 9.999 rounds up to 10.0: renormalise
            mantissa, exponent = mantissa / 10, exponent + 1
        return f"{mantissa:.{sig - 1}f} x 10^{exponent}"
    decimals = sig - 1 - exponent  # negative for large values: 6371 -> 6370
    rounded = round(value, decimals)
    if rounded == int(rounded):
        return str(int(rounded))
    return f"{rounded:.{decimals}f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class _Constant:
    key: str
    question: str
    value: float
    unit: str
    shift: float | None = None
    """Distractors ``value +- k * shift`` (temperatures, pH); ``None``: scale by powers of ten."""
    minimum: float | None = None
    """Lowest sensible distractor value (``None``: no bound)."""


_CONSTANTS = (
    _Constant("c_ms", "What is the speed of light in a vacuum, approximately?", 2.998e8, "m/s"),
    _Constant("c_kms", "What is the speed of light in a vacuum, in kilometers per second?", 2.998e5, "km/s"),
    _Constant("g", "What is the acceleration due to gravity at the Earth's surface?", 9.81, "m/s^2"),
    _Constant("g_moon", "What is the acceleration due to gravity on the Moon's surface?", 1.62, "m/s^2"),
    _Constant("boil_c", "At what temperature does water boil at sea level, in degrees Celsius?", 100, "°C", 10),
    _Constant("boil_f", "At what temperature does water boil at sea level, in degrees Fahrenheit?", 212, "°F", 10),
    _Constant("boil_k", "At what temperature does water boil at sea level, in kelvin?", 373.15, "K", 10, 0),
    _Constant("freeze_c", "At what temperature does water freeze, in degrees Celsius?", 0, "°C", 10),
    _Constant("freeze_f", "At what temperature does water freeze, in degrees Fahrenheit?", 32, "°F", 10),
    _Constant("freeze_k", "At what temperature does water freeze, in kelvin?", 273.15, "K", 10, 0),
    _Constant("body_c", "What is normal human body temperature, in degrees Celsius?", 37, "°C", 2, 0),
    _Constant("abs_zero_c", "What is absolute zero in degrees Celsius?", -273.15, "°C", 25),
    _Constant("sound", "What is the speed of sound in air at room temperature?", 343, "m/s"),
    _Constant("water_density", "What is the density of liquid water?", 1000, "kg/m^3"),
    _Constant("avogadro", "What is Avogadro's number?", 6.022e23, "per mole"),
    _Constant("planck", "What is the Planck constant?", 6.626e-34, "J s"),
    _Constant("charge", "What is the elementary charge?", 1.602e-19, "C"),
    _Constant("big_g", "What is the gravitational constant G?", 6.674e-11, "N m^2/kg^2"),
    _Constant("boltzmann", "What is the Boltzmann constant?", 1.381e-23, "J/K"),
    _Constant("electron_mass", "What is the mass of an electron?", 9.109e-31, "kg"),
    _Constant("proton_mass", "What is the mass of a proton?", 1.673e-27, "kg"),
    _Constant("atm_kpa", "What is standard atmospheric pressure at sea level, in kilopascals?", 101.3, "kPa"),
    _Constant("atm_mmhg", "What is standard atmospheric pressure at sea level, in millimeters of mercury?", 760,
              "mmHg"),
    _Constant("au", "What is the average distance from the Earth to the Sun?", 1.496e8, "km"),
    _Constant("earth_radius", "What is the mean radius of the Earth?", 6371, "km"),
    _Constant("moon_distance", "What is the average distance from the Earth to the Moon?", 384400, "km"),
    _Constant("sunlight", "About how many minutes does sunlight take to reach the Earth?", 8.3, "minutes"),
    _Constant("ph_water", "What is the pH of pure water at 25 °C?", 7, "", 2, 0),
    _Constant("seconds_day", "How many seconds are in a day?", 86400, "seconds"),
    _Constant("gas_constant", "What is the ideal gas constant R?", 8.314, "J/(mol K)"),
)
_SCALES = (10, 0.1, 100, 0.01, 1000, 0.001, 2, 0.5, 3, 1 / 3)


def _with_unit(value: float, unit: str) -> str:
    text = format_quantity(value)
    if not unit:
        return text
    return f"{text}{unit}" if unit.startswith("°") else f"{text} {unit}"


def _constants(rng: random.Random) -> _Draft:
    constant = rng.choice(_CONSTANTS)
    if constant.shift is None:
        candidates = [constant.value * s for s in _SCALES]
    else:
        candidates = [constant.value + k * constant.shift for k in range(-6, 7) if k]
    if constant.minimum is not None:
        candidates = [c for c in candidates if c >= constant.minimum]
    rng.shuffle(candidates)
    answer = _with_unit(constant.value, constant.unit)
    return _Draft(f"constants:{constant.key}", constant.question, answer,
                  _distinct(answer, [_with_unit(c, constant.unit) for c in candidates]))


_GENERATORS: dict[str, Callable[[random.Random], _Draft]] = {
    "arithmetic": _arithmetic, "units": _units, "facts": _facts, "constants": _constants,
}


def generate_mc_problems(
    num_problems: int,
    split: str = "train",
    kinds: Sequence[str] = DEFAULT_KINDS,
    seed: int = 0,
    num_choices: int = 4,
) -> list[MCProblem]:
    """``num_problems`` distinct multiple-choice problems of ``split``, kinds drawn uniformly from ``kinds``.

    Each problem has ``num_choices`` options with the correct one at a random position.
    Deterministic in the arguments; a larger ``num_problems`` extends the smaller list (same
    prefix). Raises :class:`ValueError` when the kinds hold too few distinct questions (the
    ``constants`` table has about 30).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    kinds = tuple(kinds)
    unknown = sorted(set(kinds) - set(_GENERATORS))
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty subset of {list(KINDS)}, got {list(kinds)}")
    if num_problems < 1:
        raise ValueError(f"num_problems must be >= 1, got {num_problems}")
    if not MIN_CHOICES <= num_choices <= MAX_GENERATED_CHOICES:
        raise ValueError(f"num_choices must be in [{MIN_CHOICES}, {MAX_GENERATED_CHOICES}], got {num_choices}")
    ordered = sorted(set(kinds))
    rng = random.Random(f"drift-mc-{seed}-{split}-{ordered}-{num_choices}")

    def draw():
        kind = rng.choice(ordered)
        draft = _GENERATORS[kind](rng)
        return draft.key, (kind, draft)

    def build(key: str, kind_draft) -> MCProblem:
        kind, draft = kind_draft
        wrong = list(draft.distractors[: num_choices - 1])
        correct = rng.randrange(num_choices)
        choices = wrong[:correct] + [draft.answer] + wrong[correct:]
        digest = hashlib.sha256("\n".join([key, *choices]).encode()).hexdigest()[:12]
        return MCProblem.create(f"mc-{kind}-{digest}", draft.question, choices, correct, source="procedural")

    return draw_distinct(num_problems, split, draw, build, f"kinds {ordered}")

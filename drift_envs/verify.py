"""Answer checking for math: equivalent forms count, not string equality alone.

math-verify does the work (``1/2`` = ``0.5`` = ``\\frac{1}{2}``, ``\\boxed{}`` content,
units and surrounding text). A string comparison of normalised forms is the fallback
when math-verify cannot parse either side.

Model output is adversarial: an answer longer than :data:`MAX_ANSWER_CHARS` is wrong and never reaches
math-verify (whose parser takes seconds on megabytes or on thousands of nested braces, and whose timeout warning
would log the whole text), each math-verify call has :data:`CHECK_SECONDS`, log lines quote at most 200
characters of an answer, and every pattern here runs in linear time on megabytes.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import logging
import math
import re
import signal
import threading
from collections.abc import Iterator
from fractions import Fraction

logger = logging.getLogger(__name__)

CHECK_SECONDS = 1.0
"""Time limit of one math-verify parse or comparison (in the main thread; math-verify's own default is 5 s): a
parse out of time reads as unparsable, a comparison as wrong. Legitimate answers take milliseconds once warm;
pathological short ones (``x^x^x^...``, ``9^{9^{9}}`` against a symbolic gold) would take minutes."""
MAX_ANSWER_CHARS = 1000
"""Longest answer that is checked; a longer one is wrong. No problem's answer is nearly that long (MATH's longest
golds are matrices of ~100 characters); math-verify is never given more."""
_LOGGED_CHARS = 200
"""Most characters of an answer quoted in a log line."""

_SPACE_RE = re.compile(r"\s+")
_NUMBER_RE = re.compile(r"^-?\d+(?:\.\d+)?(?:/\d+)?$")
# A binary arithmetic operation between numbers: "43 - 21", "6*7", "3 x 4", "2^3".
_OPERATION_RE = re.compile(r"\d\s*(?:[-+*×x÷^]|\\times|\\cdot|\\div)\s*[\d(]")
_BOXED_OPEN_RE = re.compile(r"\\boxed\s*\{")
HEDGE_RE = re.compile(
    r"(?i)\b(?:or|nor|either|neither|not|never|no|maybe|perhaps|possibly|probably|likely|unless|except|"
    r"might|could|guess|unsure|between|vs)\b|n't\b|\?"
)
"""Words that hedge or negate an answer (``0 or 2``, ``not 2``, ``maybe 3``): such an answer names no
single value."""
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_FRACTION_RE = re.compile(r"\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\}|\d+(?:\.\d+)?\s*/\s*\d+(?:\.\d+)?")
_NUMERAL_RE = re.compile(r"\d+(?:\.\d+)?")
_LIST_RE = re.compile(r"[,;]|\band\b", re.IGNORECASE)


def final_value(text: str) -> str:
    """The part of an answer that states the value: the right-hand side of the last ``=``.

    The small model writes ``37 + 48 = 85``; the value is ``85``.
    """
    text = text.strip()
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    return text.strip().rstrip(".").strip()


def numbers_in(text: str) -> int:
    """How many separate numbers ``text`` states: a fraction (``1/2``, ``\\frac{1}{2}``) is one,
    ``1,000`` is one, ``1, 2, 3`` is three."""
    text = _FRACTION_RE.sub(" N ", _THOUSANDS_RE.sub("", text))
    return len(_NUMERAL_RE.findall(text)) + text.count(" N ")


def single_answer(gold: str, prediction: str) -> str | None:
    """The one value ``prediction`` states, or ``None`` when it hedges, negates or lists several.

    The value is the right-hand side of the last ``=`` (the embedded model writes ``37 + 48 = 85``),
    accepted only when the left side is not a false equation: ``37 + 48 = 84`` states 84, but
    ``2 + 2 = 5 = 4`` names no single value. Hedged (``0 or 2``), negated (``not 2``) and listed
    (``1, 2, 3, 2``) answers are wrong, since math-verify would read one of their numbers (the last)
    and a policy trained on the reward would learn to list every candidate. Lists and
    connectives are allowed where the gold answer has them too (``2, 3`` for a set of roots).
    """
    text = prediction.strip()
    if not text or len(text) > MAX_ANSWER_CHARS:
        return None
    if HEDGE_RE.search(_SPACE_RE.sub(" ", text.replace("\\text", " "))) and not HEDGE_RE.search(gold):
        return None
    value = final_value(text)
    if not value:
        return None
    if not equation_holds(text):
        return None
    gold_plain = _plain(gold)
    if _LIST_RE.search(_THOUSANDS_RE.sub("", value)) and not _LIST_RE.search(_THOUSANDS_RE.sub("", gold)):
        return None
    if _NUMBER_RE.match(gold_plain) and numbers_in(value) > 1 and not states_operation(value):
        return None  # "85 86", "I think 0 but 2": several numbers where one is asked for
    return value


def equation_holds(text: str) -> bool:
    """False when ``text`` is an equation (``a = b``, or a chain ``a = b = c``) with a link between two numbers, or
    arithmetic on numbers, of different values: ``37 + 48 = 84``, ``7 - 5 = 3 = 2``; or one too long to check
    (over :data:`MAX_ANSWER_CHARS`). True for any other text (``x = 2``, ``2``), and where a side is too large
    to compute (``9**9**9 = 2``)."""
    if "=" not in text:
        return True
    if len(text) > MAX_ANSWER_CHARS:
        return False
    links = [part.strip() for part in text.split("=")]
    return all(_consistent(a, b) for a, b in zip(links, links[1:], strict=False))


class _Unchecked(Exception):
    """Arithmetic that is false or cannot be checked (a division by zero, nesting too deep)."""


def _consistent(left: str, right: str) -> bool:
    """False only when both sides are numbers (or arithmetic on numbers) of different values, or a side's
    arithmetic is false in itself (a division by zero) or nested too deep to check."""
    try:
        a, b = _number_value(left), _number_value(right)
    except _Unchecked:
        return False
    return a is None or b is None or abs(a - b) <= Fraction(1, 10**9) * max(1, abs(a), abs(b))


_ARITHMETIC_RE = re.compile(r"^[\d\s.+\-*/()×x÷^]+$")
_MAX_POWER_BASE = 10**6
_MAX_POWER_EXPONENT = 64


def _number_value(text: str) -> Fraction | None:
    """The exact value of plain arithmetic on numbers (``37 + 48``), however long its numbers; ``None`` for
    anything else, and for a power too large to compute. Raises :class:`_Unchecked` when it is false or too deep."""
    text = text.strip().rstrip(".").replace("×", "*").replace("÷", "/").replace("^", "**")
    text = re.sub(r"(?<=\d)\s*x\s*(?=\d)", "*", text)
    if not text or not _ARITHMETIC_RE.match(text):
        return None
    try:
        return _evaluate(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, TypeError, OverflowError):  # not arithmetic after all ("3 4", "1..2")
        return None
    except (ZeroDivisionError, RecursionError, MemoryError):
        raise _Unchecked(text[:_LOGGED_CHARS]) from None


def _evaluate(node: ast.AST) -> Fraction | None:
    """Numbers with + - * / and small powers, in exact fractions; ``None`` for anything else (no eval:
    ``9**9**9`` is refused)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        if isinstance(node.value, float) and not math.isfinite(node.value):  # a decimal of hundreds of digits
            raise _Unchecked(repr(node.value))
        return Fraction(node.value) if isinstance(node.value, int) else Fraction(repr(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _evaluate(node.operand)
        return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
    if isinstance(node, ast.BinOp):
        a, b = _evaluate(node.left), _evaluate(node.right)
        if a is None or b is None:
            return None
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if isinstance(node.op, ast.Div):
            return a / b
        if isinstance(node.op, ast.Pow) and abs(b) <= _MAX_POWER_EXPONENT and abs(a) <= _MAX_POWER_BASE:
            if b.denominator == 1:
                return a ** int(b)
            if a >= 0:  # a fractional power: its float value is as close as the tolerance asks
                return Fraction(float(a) ** float(b))
    return None


def _plain(text: str) -> str:
    text = text.strip()
    # The first \boxed{ to the last }: found in linear time (a regex \\boxed\s*\{(.*)\} rescans the rest of
    # the text from every \boxed{ when no } follows, which takes minutes on thousands of them).
    boxed = _BOXED_OPEN_RE.search(text)
    if boxed and text.rfind("}") >= boxed.end():
        text = text[boxed.end() : text.rfind("}")]
    text = text.replace("$", "").replace("\\!", "").replace("\\,", "")
    return _SPACE_RE.sub("", text).rstrip(".").lower()


class _OutOfTime(BaseException):
    """A check ran past :data:`CHECK_SECONDS`. Not an ``Exception``: math-verify catches those and goes on."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_OutOfTime` in the block after ``seconds`` (a signal timer: in the main thread, when no other
    timer is set; elsewhere the block runs without a limit)."""
    if threading.current_thread() is not threading.main_thread() or signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        yield
        return

    running = True

    def expire(signum, frame):
        if running:
            raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, expire)
    # Repeating: a raise that lands in a gc callback or a __del__ is swallowed there (hypothesis installs gc
    # callbacks; the check then ran on for 15 s), so the timer fires again every 50 ms until the block ends.
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.05)
    try:
        yield
    finally:
        running = False
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)


@functools.cache
def _math_verify():
    """math-verify, imported (sympy and antlr take ~1.5 s) and warmed up outside any time limit."""
    import math_verify
    import math_verify.grader
    import math_verify.parser

    # drift limits each call's time itself (_time_limit: a finer timer than math-verify's whole-second alarm, and
    # one that cannot log a whole reply); math-verify's own timeouts are off, and it need not warn that they are.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    math_verify.verify(math_verify.parse("$\\frac{1}{2}$", parsing_timeout=None),
                       math_verify.parse("$0.5$", parsing_timeout=None), timeout_seconds=None)
    return math_verify


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> tuple:
    """math-verify's reading of ``text`` (empty: unparsable, too long, or out of time); cached, as an environment
    parses each gold answer at every step and each reply twice (to judge it and to count repeats)."""
    if len(text) > MAX_ANSWER_CHARS:
        return ()
    parse = _math_verify().parse
    try:
        with _time_limit(CHECK_SECONDS):
            return tuple(parse(text, parsing_timeout=None))
    except _OutOfTime:
        logger.warning("math-verify took over %.1f s to parse %r: read as unparsable", CHECK_SECONDS,
                       text[:_LOGGED_CHARS])
    except Exception:  # math-verify raises on some malformed LaTeX; treat as unparsable
        logger.debug("math-verify could not parse %r", text[:_LOGGED_CHARS], exc_info=True)
    return ()


_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")


def _wrap(text: str) -> str:
    # math-verify reads bare text only up to its leading number ("1+x" -> 1). Wrapping in
    # $...$ makes it read LaTeX and symbolic expressions whole; text with words ("12
    # dollars") stays bare so its units rule still applies.
    if "$" in text:
        return text
    if "\\" in text or (re.search(r"[\^{}A-Za-z]", text) and not _WORD_RE.search(text)):
        return f"${text}$"
    return text


def states_operation(text: str) -> bool:
    """True when ``text`` contains an arithmetic operation between numbers (``43 - 21``)."""
    return bool(_OPERATION_RE.search(text))


def math_equal(gold: str, prediction: str) -> bool:
    """True when ``prediction`` states the same mathematical value as ``gold``.

    When the gold answer is a plain number, the prediction must state a value: an
    unevaluated operation (``43 - 21`` for 22) is wrong, although math-verify would
    evaluate it. Otherwise restating the question would count as solving it. An answer that
    hedges, negates or lists several values is wrong (see :func:`single_answer`).
    """
    pred = single_answer(gold, prediction)
    if pred is None:
        return False
    if _NUMBER_RE.match(_plain(gold)) and states_operation(pred):
        return False
    if _plain(gold) == _plain(pred):
        return True
    gold_parsed, pred_parsed = _parse(_wrap(gold)), _parse(_wrap(pred))
    if not gold_parsed or not pred_parsed:
        return False
    verify = _math_verify().verify
    try:
        with _time_limit(CHECK_SECONDS):
            return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None))
    except _OutOfTime:
        logger.warning("math-verify took over %.1f s to compare %r with %r: counted as wrong", CHECK_SECONDS,
                       pred[:_LOGGED_CHARS], gold[:_LOGGED_CHARS])
    except Exception:
        logger.debug("math-verify could not compare %r and %r", gold[:_LOGGED_CHARS], pred[:_LOGGED_CHARS],
                     exc_info=True)
    return False


def normalise_answer(text: str) -> str:
    """A canonical string for an answer, used to count repeated answers."""
    value = final_value(text)
    parsed = _parse(_wrap(value))
    if parsed:
        return str(parsed[0])
    return _plain(value)

"""Answer checking for math: equivalent forms count, not string equality alone.

math-verify does the work (``1/2`` = ``0.5`` = ``\\frac{1}{2}``, ``\\boxed{}`` content,
units and surrounding text). A string comparison of normalised forms is the fallback
when math-verify cannot parse either side.
"""

from __future__ import annotations

import ast
import logging
import math
import re
import threading

logger = logging.getLogger(__name__)

_SPACE_RE = re.compile(r"\s+")
_NUMBER_RE = re.compile(r"^-?\d+(?:\.\d+)?(?:/\d+)?$")
# A binary arithmetic operation between numbers: "43 - 21", "6*7", "3 x 4", "2^3".
_OPERATION_RE = re.compile(r"\d\s*(?:[-+*×x÷^]|\\times|\\cdot|\\div)\s*[\d(]")
_BOXED_RE = re.compile(r"\\boxed\s*\{(.*)\}", re.DOTALL)
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
_VARIABLE_RE = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?$")


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
    if not text:
        return None
    if HEDGE_RE.search(_SPACE_RE.sub(" ", text.replace("\\text", " "))) and not HEDGE_RE.search(gold):
        return None
    value = final_value(text)
    if not value:
        return None
    if "=" in text:
        left = text.rsplit("=", 1)[0].strip()
        if "=" in left:  # a chain: every link must hold
            links = [part.strip() for part in text.split("=")]
            if any(not _consistent(a, b) for a, b in zip(links, links[1:], strict=False)):
                return None
        elif not _VARIABLE_RE.match(left) and not _consistent(left, value):
            return None
    gold_plain = _plain(gold)
    if _LIST_RE.search(_THOUSANDS_RE.sub("", value)) and not _LIST_RE.search(_THOUSANDS_RE.sub("", gold)):
        return None
    if _NUMBER_RE.match(gold_plain) and numbers_in(value) > 1 and not states_operation(value):
        return None  # "85 86", "I think 0 but 2": several numbers where one is asked for
    return value


def _consistent(left: str, right: str) -> bool:
    """False only when both sides are numbers (or arithmetic on numbers) of different values."""
    a, b = _number_value(left), _number_value(right)
    return a is None or b is None or abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


_ARITHMETIC_RE = re.compile(r"^[\d\s.+\-*/()×x÷^]+$")


def _number_value(text: str) -> float | None:
    """The value of plain arithmetic on numbers (``37 + 48``), or ``None`` for anything else."""
    text = text.strip().rstrip(".").replace("×", "*").replace("÷", "/").replace("^", "**")
    text = re.sub(r"(?<=\d)\s*x\s*(?=\d)", "*", text)
    if not text or not _ARITHMETIC_RE.match(text) or len(text) > 200:
        return None
    try:
        value = _evaluate(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        return None
    return value if value is not None and math.isfinite(value) else None


def _evaluate(node: ast.AST) -> float | None:
    """Numbers with + - * / and small powers; ``None`` for anything else (no eval: ``9**9**9`` is refused)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
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
        if isinstance(node.op, ast.Pow) and abs(b) <= 64 and abs(a) <= 1e6:
            return float(a) ** b
    return None


def _plain(text: str) -> str:
    text = text.strip()
    boxed = _BOXED_RE.search(text)
    if boxed:
        text = boxed.group(1)
    text = text.replace("$", "").replace("\\!", "").replace("\\,", "")
    return _SPACE_RE.sub("", text).rstrip(".").lower()


def _parse(text: str) -> list:
    from math_verify import parse  # lazy: sympy + antlr take ~1 s to import

    # math-verify guards against pathological inputs with SIGALRM, which only works in
    # the main thread; elsewhere it must run without a timeout.
    kwargs = {} if threading.current_thread() is threading.main_thread() else {"parsing_timeout": None}
    try:
        return parse(text, **kwargs)
    except Exception:  # math-verify raises on some malformed LaTeX; treat as unparsable
        logger.debug("math-verify could not parse %r", text, exc_info=True)
        return []


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
    from math_verify import verify

    kwargs = {} if threading.current_thread() is threading.main_thread() else {"timeout_seconds": None}
    try:
        return bool(verify(gold_parsed, pred_parsed, **kwargs))
    except Exception:
        logger.debug("math-verify could not compare %r and %r", gold, pred, exc_info=True)
        return False


def normalise_answer(text: str) -> str:
    """A canonical string for an answer, used to count repeated answers."""
    value = final_value(text)
    parsed = _parse(_wrap(value))
    if parsed:
        return str(parsed[0])
    return _plain(value)

"""Answer checking for math: equivalent forms count, not string equality alone.

math-verify does the work (``1/2`` = ``0.5`` = ``\\frac{1}{2}``, ``\\boxed{}`` content,
units and surrounding text). A string comparison of normalised forms is the fallback
when math-verify cannot parse either side.
"""

from __future__ import annotations

import logging
import re
import threading

logger = logging.getLogger(__name__)

_SPACE_RE = re.compile(r"\s+")
_NUMBER_RE = re.compile(r"^-?\d+(?:\.\d+)?(?:/\d+)?$")
# A binary arithmetic operation between numbers: "43 - 21", "6*7", "3 x 4", "2^3".
_OPERATION_RE = re.compile(r"\d\s*(?:[-+*×x÷^]|\\times|\\cdot|\\div)\s*[\d(]")
_BOXED_RE = re.compile(r"\\boxed\s*\{(.*)\}", re.DOTALL)


def final_value(text: str) -> str:
    """The part of an answer that states the value: the right-hand side of the last ``=``.

    The small model writes ``37 + 48 = 85``; the value is ``85``.
    """
    text = text.strip()
    if "=" in text:
        text = text.rsplit("=", 1)[1]
    return text.strip().rstrip(".").strip()


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
    evaluate it. Otherwise restating the question would count as solving it.
    """
    pred = final_value(prediction)
    if not pred:
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

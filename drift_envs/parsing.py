"""Parsing of tagged replies: ``[<think> ... </think>] <answer> ... </answer>``.

Two parsers share one result type:

* **strict** (the DRIFT release): an answer needs both tags; anything else is a
  format failure and not an action.
* **lenient**: a reply whose ``</answer>`` is missing still yields an answer, the
  first non-empty line after ``<answer>`` (or of the reply, when the tag is absent).
  The reply is *not* well formed, so the environment still charges the format
  penalty. Small models (SmolLM2-135M) almost never close the tag, so strict parsing
  gives them zero accuracy.

Re-rendering keeps the model's own text inside the tags (``<answer>37 + 48 = 85</answer>``):
training on replies reduced to the bare number collapsed the small model's accuracy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_OPEN_ANSWER = "<answer>"


class ParseMode(str, Enum):
    """How replies are parsed."""

    STRICT = "strict"
    LENIENT = "lenient"


@dataclass(frozen=True)
class ParsedReply:
    """What a reply contained."""

    content: str | None
    """Text inside the answer tags (stripped); ``None`` when no answer could be read."""
    think: str | None
    """Text inside ``<think>`` tags, when present and closed."""
    well_formed: bool
    """The reply has a closed, non-empty ``<answer>`` block (strict format)."""
    rendered: str
    """Canonical form for the record: the model's own text inside closed tags, or the
    raw reply when no answer was found."""

    @property
    def has_answer(self) -> bool:
        return self.content is not None


def _render(content: str, think: str | None) -> str:
    think_part = f"<think>{think}</think>\n" if think is not None else ""
    return f"{think_part}<answer>{content}</answer>"


def _first_line(text: str) -> str | None:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


def parse_reply(text: str, mode: ParseMode | str = ParseMode.LENIENT) -> ParsedReply:
    """Parse one assistant reply.

    >>> parse_reply("<answer>37 + 48 = 85").content
    '37 + 48 = 85'
    >>> parse_reply("<answer>37 + 48 = 85", "strict").content is None
    True
    """
    mode = ParseMode(mode)
    think_match = _THINK_RE.search(text)
    think = think_match.group(1).strip() if think_match else None
    # Only look for the answer after a closed think block, so tags quoted inside the
    # reasoning are not mistaken for the answer.
    rest = text[think_match.end() :] if think_match else text
    match = _ANSWER_RE.search(rest)
    if match and match.group(1).strip():
        content = match.group(1).strip()
        return ParsedReply(content, think, True, _render(content, think))
    if mode is ParseMode.STRICT:
        return ParsedReply(None, think, False, text)
    # Lenient: no closed block. Take the first line after an opening tag, or of the
    # whole reply when the tag is missing (but not from an unclosed think block).
    if _OPEN_ANSWER in rest:
        tail = rest.split(_OPEN_ANSWER, 1)[1]
    elif think_match is None and "<think>" in text:
        return ParsedReply(None, None, False, text)
    else:
        tail = rest
    content = _first_line(tail.replace("</answer>", ""))
    if content is None:
        return ParsedReply(None, think, False, text)
    return ParsedReply(content, think, False, _render(content, think))

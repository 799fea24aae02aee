"""Parsing of tagged replies: ``[<think> ... </think>] <answer> ... </answer>``.

Two parsers share one result type:

* **strict** (the DRIFT release): an answer needs both tags; anything else is a
  format failure and not an action.
* **lenient**: a reply whose ``</answer>`` is missing still yields an answer, the
  first non-empty line after ``<answer>`` (or of the reply, when the tag is absent).
  The reply is *not* well formed, so the environment still charges the format
  penalty. Small models (SmolLM2-135M) almost never close the tag, so strict parsing
  gives them zero accuracy.

An answer holding a control character other than whitespace (a NUL byte, an escape sequence, a bell) is no
answer: ``8\x005`` is not ``85``, and the release's tokenizers never need one to write an answer.

Tags are found in linear time (:func:`find_block`), so a reply of a megabyte of unclosed tags parses at once.

Re-rendering keeps the model's own text inside the tags (``<answer>37 + 48 = 85</answer>``):
training on replies reduced to the bare number collapsed the small model's accuracy.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import Enum

_OPEN_ANSWER = "<answer>"
_CONTROL_RE = re.compile("[" + "".join(re.escape(chr(c)) for c in range(0x100)
                                       if unicodedata.category(chr(c)) == "Cc" and not chr(c).isspace()) + "]")
"""Control characters that are not whitespace (NUL, ESC, BEL, DEL, C1 controls)."""


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


@dataclass(frozen=True)
class Block:
    """A ``<tag>...</tag>`` found in a reply."""

    start: int
    """Where the opening tag starts."""
    end: int
    """Just after the closing tag."""
    inner: str
    """The text between the tags."""


def find_block(text: str, tag: str) -> Block | None:
    """The first ``<tag>...</tag>`` (the first opening tag, then the first closing tag after it), found in linear
    time: a regex ``<tag>(.*?)</tag>`` would rescan the rest of the text from every unclosed opening tag, which
    takes minutes on a megabyte of ``<think>``. Same result: if no closing tag follows the first opening tag,
    none follows a later one."""
    opening, closing = f"<{tag}>", f"</{tag}>"
    start = text.find(opening)
    if start < 0:
        return None
    end = text.find(closing, start + len(opening))
    if end < 0:
        return None
    return Block(start, end + len(closing), text[start + len(opening) : end])


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
    think_match = find_block(text, "think")
    think = think_match.inner.strip() if think_match else None
    # Only look for the answer after a closed think block, so tags quoted inside the
    # reasoning are not mistaken for the answer.
    rest = text[think_match.end :] if think_match else text
    match = find_block(rest, "answer")
    if match and match.inner.strip():
        content = match.inner.strip()
        if _CONTROL_RE.search(content):
            return ParsedReply(None, think, False, text)
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
    if content is None or _CONTROL_RE.search(content):
        return ParsedReply(None, think, False, text)
    return ParsedReply(content, think, False, _render(content, think))

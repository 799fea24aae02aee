"""Strict and lenient parsing of ``<think>``/``<answer>`` replies, and their canonical form."""

from __future__ import annotations

import pytest

from drift_envs import ParsedReply, ParseMode, parse_reply

BOTH = pytest.mark.parametrize("mode", [ParseMode.STRICT, ParseMode.LENIENT])


@BOTH
def test_closed_tag_is_well_formed_in_both_modes(mode: ParseMode) -> None:
    parsed = parse_reply("<answer> 85 </answer>", mode)
    assert parsed == ParsedReply(content="85", think=None, well_formed=True, rendered="<answer>85</answer>")
    assert parsed.has_answer


@BOTH
def test_text_after_the_closing_tag_is_ignored(mode: ParseMode) -> None:
    parsed = parse_reply("<answer>85</answer> and more text", mode)
    assert parsed.content == "85" and parsed.well_formed and parsed.rendered == "<answer>85</answer>"


def test_missing_close_tag() -> None:
    strict = parse_reply("<answer>37 + 48 = 85", ParseMode.STRICT)
    assert strict.content is None and not strict.well_formed and not strict.has_answer
    assert strict.rendered == "<answer>37 + 48 = 85"  # raw reply kept when no answer was read
    lenient = parse_reply("<answer>37 + 48 = 85", ParseMode.LENIENT)
    assert lenient.content == "37 + 48 = 85" and not lenient.well_formed
    # The canonical form closes the tag around the model's own text (not the bare number).
    assert lenient.rendered == "<answer>37 + 48 = 85</answer>"


def test_mode_accepts_strings_and_rejects_unknown() -> None:
    assert parse_reply("<answer>1", "strict").content is None
    assert parse_reply("<answer>1", "lenient").content == "1"
    with pytest.raises(ValueError):
        parse_reply("<answer>1</answer>", "loose")


def test_lenient_takes_the_first_non_empty_line_after_the_tag() -> None:
    parsed = parse_reply("<answer>\n\n  12 apples  \nbecause 5 + 7 = 12\n", ParseMode.LENIENT)
    assert parsed.content == "12 apples"
    assert parsed.rendered == "<answer>12 apples</answer>"


@BOTH
def test_multi_line_closed_answer_kept_whole(mode: ParseMode) -> None:
    parsed = parse_reply("<answer>x = 2\ny = 3</answer>", mode)
    assert parsed.content == "x = 2\ny = 3" and parsed.well_formed


@BOTH
def test_think_block_then_answer(mode: ParseMode) -> None:
    parsed = parse_reply("<think> 37 + 48 is 85 </think>\n<answer>85</answer>", mode)
    assert parsed.think == "37 + 48 is 85" and parsed.content == "85" and parsed.well_formed
    assert parsed.rendered == "<think>37 + 48 is 85</think>\n<answer>85</answer>"


@BOTH
def test_answer_tags_inside_think_are_not_the_answer(mode: ParseMode) -> None:
    parsed = parse_reply("<think>maybe <answer>3</answer>? no.</think><answer>85</answer>", mode)
    assert parsed.content == "85"
    quoted_only = parse_reply("<think>maybe <answer>3</answer>?</think>", mode)
    assert quoted_only.content is None and not quoted_only.well_formed


def test_unclosed_think_gives_no_lenient_answer() -> None:
    parsed = parse_reply("<think>still reasoning, 37 + 48", ParseMode.LENIENT)
    assert parsed.content is None and parsed.rendered == "<think>still reasoning, 37 + 48"


def test_think_then_untagged_answer() -> None:
    assert parse_reply("<think>add</think>85", ParseMode.STRICT).content is None
    lenient = parse_reply("<think>add</think>85", ParseMode.LENIENT)
    assert lenient.content == "85" and not lenient.well_formed
    assert lenient.rendered == "<think>add</think>\n<answer>85</answer>"


@BOTH
@pytest.mark.parametrize("reply", ["<answer></answer>", "<answer>  \n </answer>", "", "   \n"])
def test_empty_answer_is_no_answer(mode: ParseMode, reply: str) -> None:
    parsed = parse_reply(reply, mode)
    assert parsed.content is None and not parsed.well_formed and parsed.rendered == reply


def test_no_tag_at_all() -> None:
    assert parse_reply("The answer is 85.", ParseMode.STRICT).content is None
    lenient = parse_reply("The answer is 85.\nI think.", ParseMode.LENIENT)
    assert lenient.content == "The answer is 85." and not lenient.well_formed
    assert lenient.rendered == "<answer>The answer is 85.</answer>"


"""The sandbox's wire format: what crosses between a suite's judge and its solution, exactly or not at all."""

from __future__ import annotations

import json
import math
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drift_envs.code.sandbox import wire


def _no_refs(obj):
    raise AssertionError(f"unexpected reference to {obj!r}")


def _cross(value, register=_no_refs, resolve=_no_refs):
    """``value`` through encode, JSON text (as the pipe carries it) and decode."""
    return wire.decode(json.loads(json.dumps(wire.encode(value, register))), resolve)


def _same(a, b) -> bool:
    """Equal, with exactly the same types all the way down (NaN equal to NaN, -0.0 not equal to 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, complex):
        return _same(a.real, b.real) and _same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


_hashable = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(0, 12000).map(lambda digits: 3 - 10 ** digits)
    | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=4),
    max_leaves=10,
)
_values = st.recursive(
    _hashable | st.floats() | st.complex_numbers(allow_nan=False) | st.binary().map(bytearray)
    | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=3),  # lone surrogates
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner) | st.dictionaries(_hashable, inner, max_size=4)
    | st.sets(_hashable, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_plain_values_cross_exactly(value):
    assert _same(_cross(value), value)


class _Int(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class _Str(str):
    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


class _List(list):
    def __eq__(self, other):
        return True

    def __iter__(self):
        return iter([1, 2, 3])


class _Dict(dict):
    def items(self):
        return [("forged", 1)]


class _PosingAsInt:
    __class__ = property(lambda self: int)


@pytest.mark.parametrize(("value", "arrives"), [
    (_Int(7), 7), (_Str("x"), "x"), (_List([0]), [0]), (_Dict(a=1), {"a": 1}), ((_Int(1), _Str("y")), (1, "y")),
])
def test_subclasses_arrive_as_the_plain_value_they_hold(value, arrives):
    crossed = _cross(value)
    assert _same(crossed, arrives)
    assert crossed != type(arrives)()  # the override is gone: a plain value compares honestly


def test_other_objects_cross_as_references_even_when_they_pose_as_plain_types():
    posing = _PosingAsInt()
    assert isinstance(posing, int)  # fools isinstance, not type()
    seen = []
    crossed = _cross([posing, {1: max}], register=lambda obj: seen.append(obj) or [len(seen), "shown"],
                     resolve=lambda ref: ("ref", *ref))
    assert crossed == [("ref", 1, "shown"), {1: ("ref", 2, "shown")}] and seen == [posing, max]


@pytest.mark.parametrize("data", [
    5, 2.5, {"x": "1"}, {"i": 5}, {"i": "zz"}, {"f": "1.0.0"}, {"d": [[[1], 2]]}, {"d": [[{"i": "1"}]]},
    {"s": [[]]}, {"t": "abc"}, {"c": ["0x1p0"]}, {"i": "0x1", "f": "0x1p0"}, {"r": 3},
    json.loads("[" * 150 + "]" * 150),
])
def test_decode_accepts_nothing_but_the_format(data):
    with pytest.raises(wire.WireError):
        wire.decode(data, lambda ref: ref)


def test_encode_refuses_cycles_and_deep_nesting():
    loop: list = []
    loop.append(loop)
    deep: list = []
    for _ in range(wire.MAX_DEPTH + 5):
        deep = [deep]
    for value in (loop, deep):
        with pytest.raises(wire.WireError, match="nested deeper"):
            wire.encode(value, _no_refs)


def _pipe_with(data: bytes = b"", close: bool = False) -> tuple[int, int | None]:
    read, write = os.pipe()
    os.write(write, data)
    if close:
        os.close(write)
        return read, None
    return read, write


@pytest.mark.parametrize(("data", "close", "error", "match"), [
    (b"\x00\x00\x03\xe8" + b"x" * 1000, False, wire.WireError, "the limit is 100"),
    (b"\x00\x00\x00\x05[1,2]", False, wire.WireError, "object"),
    (b"\x00\x00\x00\x04{x:1", False, wire.WireError, "not JSON"),
    (b"", False, TimeoutError, None),
    (b"\x00\x00\x00\x09{\"a\"", True, wire.PeerGone, None),  # cut short: the writer died mid-frame
    (b"", True, wire.PeerGone, None),
])
def test_bad_frames_are_refused(data, close, error, match):
    read, write = _pipe_with(data, close)
    start = time.monotonic()
    try:
        with pytest.raises(error, match=match):
            wire.receive(read, 100, deadline=time.monotonic() + 0.05)
    finally:
        os.close(read)
        if write is not None:
            os.close(write)
    assert time.monotonic() - start < 5


def test_frames_round_trip():
    read, write = os.pipe()
    try:
        message = {"value": wire.encode([1, "two", (3.0,), "\ud800\udc00"], _no_refs)}
        wire.send(write, message)
        assert wire.receive(read, 1 << 20) == message
    finally:
        os.close(read)
        os.close(write)

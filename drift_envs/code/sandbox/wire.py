"""Values between the judge's process and the solution's, as JSON frames (child side, standard library only).

Only *plain* values cross as values: ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``,
``bytes``, ``bytearray`` and ``list``, ``tuple``, ``dict``, ``set``, ``frozenset`` of them. A
subclass of one of these crosses as its base type, read through the base type's own C slots
(an ``int`` subclass that overrides ``__eq__`` arrives as the plain ``int`` it holds). Anything
else (a generator, an instance of a class the solution defined, a function) crosses as a
reference that :func:`decode` turns into whatever ``resolve`` makes of it (the judge: a
:class:`judge.Remote`; the solution: the object itself).

:func:`decode` builds fresh builtin values from the JSON and accepts nothing else, so whatever
the other side sends, the receiver holds plain data whose comparisons run the interpreter's
own code. Integers travel as hexadecimal (no limit on digits), floats as ``float.hex`` (exact,
``nan``, ``inf`` and ``-0.0`` included).
"""

from __future__ import annotations

import json
import os
import re
import select
import struct
import time

_HEADER = struct.Struct(">I")
MAX_DEPTH = 100
"""Deepest nesting of containers that crosses (deeper raises :class:`WireError`)."""


class WireError(ValueError):
    """A value that cannot cross, or a frame that is not one."""


class PeerGone(EOFError):
    """The other process closed its end (it exited, was killed, or closed the pipe)."""


_ATOMS = (type(None), bool)
_SURROGATE = re.compile("[\ud800-\udfff]")
"""JSON pairs two escaped surrogates into one character: strings holding any travel as UTF-32 instead."""


def encode(value, register, depth: int = 0):
    """The JSON form of ``value``; ``register(obj)`` gives the JSON reference of a non-plain object
    (a list: ``[id, repr]`` from the solution, ``[id]`` from the judge)."""
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
    kind = type(value)  # the real type: a __class__ property cannot change it
    if kind in _ATOMS:
        return value
    if issubclass(kind, int):  # bool is handled above; a subclass is read through int's own slot
        return {"i": hex(int.__int__(value))}
    if issubclass(kind, float):
        return {"f": float.hex(float.__float__(value))}
    if issubclass(kind, complex):
        return {"c": [float.hex(complex.real.__get__(value)), float.hex(complex.imag.__get__(value))]}
    if issubclass(kind, str):
        text = value if kind is str else str.__str__(value)
        if _SURROGATE.search(text) is None:
            return text
        return {"u": text.encode("utf-32-le", "surrogatepass").hex()}
    if issubclass(kind, bytes):
        return {"b": bytes.hex(value)}
    if issubclass(kind, bytearray):
        return {"ba": bytearray.hex(value)}
    deeper = depth + 1
    if issubclass(kind, list):
        return [encode(item, register, deeper) for item in list.__iter__(value)]
    if issubclass(kind, tuple):
        return {"t": [encode(item, register, deeper) for item in tuple.__iter__(value)]}
    if issubclass(kind, dict):
        return {"d": [[encode(k, register, deeper), encode(v, register, deeper)] for k, v in dict.items(value)]}
    if issubclass(kind, frozenset):
        return {"fs": [encode(item, register, deeper) for item in frozenset.__iter__(value)]}
    if issubclass(kind, set):
        return {"s": [encode(item, register, deeper) for item in set.__iter__(value)]}
    return {"r": register(value)}


def decode(data, resolve, depth: int = 0):
    """The value a JSON form describes, built from builtin types only; ``resolve(ref)`` maps references."""
    if depth > MAX_DEPTH + 1:
        raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
    kind = type(data)
    if data is None or kind is bool or kind is str:
        return data
    deeper = depth + 1
    if kind is list:
        return [decode(item, resolve, deeper) for item in data]
    if kind is not dict or len(data) != 1:
        raise WireError(f"not a value: {type(data).__name__}")
    ((tag, body),) = data.items()
    try:
        if tag == "i" and type(body) is str:
            return int(body, 16)
        if tag == "f" and type(body) is str:
            return float.fromhex(body)
        if tag == "c" and type(body) is list and len(body) == 2:
            return complex(float.fromhex(body[0]), float.fromhex(body[1]))
        if tag == "u" and type(body) is str:
            return bytes.fromhex(body).decode("utf-32-le", "surrogatepass")
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "ba" and type(body) is str:
            return bytearray.fromhex(body)
        if tag == "r" and type(body) is list:
            return resolve(body)
        if type(body) is not list:
            raise WireError(f"tag {tag!r} needs a list")
        if tag == "t":
            return tuple(decode(item, resolve, deeper) for item in body)
        if tag == "s":
            return {decode(item, resolve, deeper) for item in body}
        if tag == "fs":
            return frozenset(decode(item, resolve, deeper) for item in body)
        if tag == "d":
            out = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise WireError("a dict entry must be a [key, value] pair")
                out[decode(pair[0], resolve, deeper)] = decode(pair[1], resolve, deeper)
            return out
    except (TypeError, ValueError, OverflowError) as err:  # unhashable keys, bad hex, ...
        raise WireError(f"bad {tag!r} value: {err}") from None
    raise WireError(f"unknown tag {tag!r}")


def send(fd: int, message: dict) -> None:
    """Write one frame: a 4-byte length, then the message as JSON (ASCII: lone surrogates survive)."""
    body = json.dumps(message, separators=(",", ":")).encode("ascii")
    view = memoryview(_HEADER.pack(len(body)) + body)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes:
    chunks, left = [], size
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not poller.poll(max(1, int(wait * 1000))):
                raise TimeoutError("no reply in time")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise PeerGone("the other side closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd: int, limit: int, deadline: float | None = None) -> dict:
    """Read one frame (at most ``limit`` bytes of JSON) and parse it; ``deadline`` is a ``time.monotonic()``."""
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if size > limit:
        raise WireError(f"a reply of {size} bytes (the limit is {limit})")
    try:
        message = json.loads(_read_exact(fd, size, deadline))
    except (ValueError, RecursionError) as err:
        raise WireError(f"not JSON: {err}") from None
    if type(message) is not dict:
        raise WireError("a frame must hold an object")
    return message

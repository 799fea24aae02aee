"""The solution's side of a test suite (child side, standard library only): load it, then answer calls.

This process runs the model's code, so nothing here is trusted by the judge: whatever it sends
is decoded by :func:`wire.decode` into plain values (or references to objects that stay here).
It holds neither the tests, nor the result channel, nor the nonce.
"""

from __future__ import annotations

import builtins
import linecache
import operator
import reprlib
import signal
import traceback
import types

try:
    from . import wire
except ImportError:  # a top-level module in the sandboxed interpreter
    import wire

_OPERATIONS = {
    "call": lambda obj, args, kwargs: obj(*args, **kwargs),
    "construct": lambda obj, args, kwargs: obj(*args, **kwargs),
    "iter": lambda obj, args, kwargs: iter(obj),
    "next": lambda obj, args, kwargs: next(obj),
    "len": lambda obj, args, kwargs: len(obj),
    "bool": lambda obj, args, kwargs: bool(obj),
    "int": lambda obj, args, kwargs: int(obj),
    "index": lambda obj, args, kwargs: operator.index(obj),
    "float": lambda obj, args, kwargs: float(obj),
    "str": lambda obj, args, kwargs: str(obj),
}
"""What the judge may ask of an object that stayed here (a :class:`judge.Remote`): no attribute
look-ups (an object of the solution's is no oracle the tests can consult) and no comparisons."""
_MISSING = object()


class CallTimeout(BaseException):
    """The time the judge gave a call ran out."""


def _alarm(signum, frame):
    raise CallTimeout()


class _Objects:
    """Objects that crossed as references, by id."""

    def __init__(self) -> None:
        self.by_ref: dict[int, object] = {}
        self.refs: dict[int, int] = {}  # id(obj) -> ref
        self.display = reprlib.Repr()
        self.display.maxstring = self.display.maxother = 160

    def register(self, obj: object) -> list:
        ref = self.refs.get(id(obj))
        if ref is None or self.by_ref.get(ref) is not obj:
            ref = len(self.by_ref) + 1
            self.by_ref[ref] = obj
            self.refs[id(obj)] = ref
        try:
            shown = self.display.repr(obj)
        except BaseException:  # noqa: B036 - a hostile __repr__
            shown = f"<{type(obj).__name__} object>"
        return [ref, shown if isinstance(shown, str) else "<unprintable>"]

    def resolve(self, ref: object) -> object:
        if type(ref) is not list or not ref or ref[0] not in self.by_ref:
            raise wire.WireError(f"unknown reference {ref!r}")
        return self.by_ref[ref[0]]


def _describe(err: BaseException, names: set[str]) -> dict:
    """The exception for the judge: its type, one line, and the frames in the prompt and solution."""
    try:
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename in names]
        trace = "".join(traceback.format_list(frames[-8:]))[-3000:]
        line = "".join(traceback.format_exception_only(type(err), err)).strip()
        line = line.splitlines()[-1] if line else type(err).__name__
    except BaseException:  # noqa: B036 - a hostile __str__
        trace, line = "", type(err).__name__
    kind = type(err).__name__
    builtin = getattr(builtins, kind, None) is type(err)
    return {"type": kind, "builtin": builtin, "error": line[:1000], "traceback": trace}


def _timed(seconds: float, run):
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        return run()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _origin(value: object) -> list | None:
    """``[module, qualified name]`` of a function or class the solution imported rather than defined."""
    if isinstance(value, (types.BuiltinFunctionType, types.FunctionType, type)):
        module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
        if isinstance(module, str) and isinstance(qualname, str) and module != "solution":
            return [module, qualname]
    return None


def _names_defined(namespace: dict, before: dict, objects: _Objects, entry_point: str | None,
                   max_bytes: int) -> list:
    """``[name, how]`` for each top-level name the solution bound (or rebound) after the prelude:
    a module or an imported function or class by its name (the judge imports its own), the entry
    point and anything else callable as a reference. Other values only when no entry point is
    named (the judge binds none otherwise), as values, or references when large."""
    out = []
    for name, value in list(namespace.items()):
        if name.startswith("__") and name.endswith("__") or before.get(name, _MISSING) is value:
            continue
        origin = _origin(value) if name != entry_point else None
        if name == entry_point:
            try:
                out.append([name, {"value": wire.encode(value, objects.register)}])
            except (wire.WireError, RecursionError):
                out.append([name, {"ref": objects.register(value)}])
        elif isinstance(value, types.ModuleType):
            out.append([name, {"module": getattr(value, "__name__", name)}])
        elif origin is not None:
            out.append([name, {"import": origin}])
        elif callable(value):
            out.append([name, {"ref": objects.register(value), "class": isinstance(value, type)}])
        elif entry_point is None:
            try:
                if not _small(value, max_bytes // 16):
                    raise wire.WireError("too large to copy")
                out.append([name, {"value": wire.encode(value, objects.register)}])
            except (wire.WireError, RecursionError):
                out.append([name, {"ref": objects.register(value)}])
    return out


def _small(value: object, budget: int) -> bool:
    """Whether ``value`` holds fewer than about ``budget`` characters and items (so that copying it is cheap)."""
    stack = [value]
    while stack:
        item = stack.pop()
        budget -= len(item) + 1 if isinstance(item, (str, bytes, bytearray)) else 1
        if isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        if budget < 0:
            return False
    return True


def serve(requests: int, replies: int, parts: list, test_timeout: float, max_bytes: int,
          entry_point: str | None = None) -> None:
    """Run ``parts`` (``[stage, file name, source]``: the prelude, then the solution) in one namespace,
    report the names the solution defined, then answer each request until the judge hangs up."""
    signal.signal(signal.SIGALRM, _alarm)
    names = {name for _, name, _ in parts}
    namespace = {"__name__": "solution", "__builtins__": builtins}
    objects = _Objects()
    before: dict = {}
    for stage, name, source in parts:
        if stage == "solution":
            before = dict(namespace)
        if not source.strip():
            continue
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        try:
            _timed(test_timeout, lambda source=source, name=name: exec(compile(source, name, "exec"), namespace))
        except CallTimeout:
            wire.send(replies, {"load_error": {"stage": stage, "error": f"Timeout: took longer than {test_timeout:g} s",
                                               "traceback": ""}})
            return
        except BaseException as err:  # noqa: B036 - whatever the solution raises is reported
            report = _describe(err, names)
            if isinstance(err, SyntaxError):
                report["traceback"] = "".join(traceback.format_exception_only(type(err), err)).strip()
            wire.send(replies, {"load_error": {"stage": stage, **report}})
            return
    wire.send(replies, {"loaded": _names_defined(namespace, before, objects, entry_point, max_bytes)})
    while True:
        try:
            message = wire.receive(requests, max_bytes)
        except (wire.PeerGone, wire.WireError, OSError):
            return
        wire.send(replies, _answer(message, objects, names))


def _answer(message: dict, objects: _Objects, names: set[str]) -> dict:
    budget = message.get("budget")
    budget = float(budget) if isinstance(budget, (int, float)) else 1.0
    try:
        operation = _OPERATIONS[message["op"]]
        target = objects.resolve(message["target"])
        args = [wire.decode(a, objects.resolve) for a in message.get("args", [])]
        kwargs = {str(k): wire.decode(v, objects.resolve) for k, v in message.get("kwargs", [])}
        return {"value": _timed(budget, lambda: wire.encode(operation(target, args, kwargs), objects.register))}
    except CallTimeout:
        return {"timeout": True}
    except BaseException as err:  # noqa: B036 - reported to the judge, which re-raises it in the test
        return {"raise": _describe(err, names)}

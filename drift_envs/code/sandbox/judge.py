"""The judge's side of a test suite (child side, standard library only): run the tests, report each.

The judge runs only trusted code, in a process the model's code never runs in: the prelude (the
problem's stub with its imports and helpers), the test setup and the tests. The solution runs
in a second process (:mod:`server`) and its functions are called through :class:`Remote`
proxies: arguments go over as plain values, results come back as plain values built by
:func:`wire.decode` (or as further proxies). So every comparison a test makes is between
builtin values, with the interpreter's own ``==``, ``<``, ``abs``, ``set``, ``math``, ...,
none of which the solution could have patched. Results go to the channel (fd 3), which only
this process holds, tagged with a nonce that only this process ever knew.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import json
import linecache
import os
import reprlib
import signal
import time
import traceback

try:
    from . import wire
except ImportError:  # a top-level module in the sandboxed interpreter
    import wire

GRACE_S = 0.5
"""How long past a call's time limit the judge waits before deciding that the solution ignores its timer."""


class CaseTimeout(BaseException):
    """The test ran out of time (a BaseException: a test's ``except Exception`` does not swallow it)."""


class SolutionGone(BaseException):
    """The solution's process can no longer answer (it exited, crashed, or ignored its timer)."""


class RemoteError(Exception):
    """An exception the solution raised whose type the judge does not have (a class it defined)."""


OBJECT, CONSTRUCTOR, INERT = "object", "constructor", "inert"
"""What a :class:`Remote` may be asked: everything it supports; only to be called, making inert objects;
only to be passed back to the solution."""


class Remote:
    """An object that stayed in the solution's process.

    One that the entry point (the function under test) returned, or the entry point itself, is an
    ``OBJECT``: it can be called, iterated, measured and converted (each answer crosses back as a
    plain value) and passed back to the solution. It cannot be compared (``==`` is identity),
    indexed or asked for attributes, so nothing of the solution's serves a test as an oracle
    (``math.isclose`` from a ``class math`` it defined). A class the solution defined is a
    ``CONSTRUCTOR``: calling it must give an object, which is ``INERT``: the tests can only pass it
    to the entry point (``longest_chain([Pair(1, 2)])``). Whether a name is a class the judge learns
    from the solution's process, which may lie: a function posing as a class still only makes
    inert objects.
    """

    __slots__ = ("_link", "_ref", "_shown", "_kind")

    def __init__(self, link: Link, ref: int, shown: str, kind: str = OBJECT):
        self._link, self._ref, self._shown, self._kind = link, ref, shown, kind

    def __repr__(self) -> str:
        return self._shown

    def _ask(self, op: str, args: tuple = ()):
        if self._kind != OBJECT:
            raise TypeError(f"{self._shown} is the solution's: a test may only pass it back to the solution")
        return self._link.ask(op, self, args)

    def __call__(self, *args, **kwargs):
        if self._kind == CONSTRUCTOR:
            return self._link.ask("construct", self, args, kwargs)
        if self._kind != OBJECT:
            raise TypeError(f"{self._shown} is the solution's: a test may only pass it back to the solution")
        return self._link.ask("call", self, args, kwargs)

    def __iter__(self):
        return self._ask("iter")

    def __next__(self):
        return self._ask("next")

    def __len__(self):
        return self._ask("len")

    def __bool__(self):
        return self._ask("bool")

    def __int__(self):
        return self._ask("int")

    def __index__(self):
        return self._ask("index")

    def __float__(self):
        return self._ask("float")

    def __str__(self):
        return self._ask("str")


class Link:
    """The judge's end of the two pipes to the solution's process."""

    def __init__(self, requests: int, replies: int, pid: int, max_bytes: int, exit_codes: dict):
        self.requests, self.replies, self.pid = requests, replies, pid
        self.max_bytes = max_bytes
        self.exit_codes = exit_codes
        self.gone: str | None = None
        self.cpu_limit = 0
        self._remotes: dict[int, Remote] = {}

    def receive(self, deadline: float) -> dict:
        try:
            return wire.receive(self.replies, self.max_bytes, deadline)
        except TimeoutError:
            raise self._hang_up("the solution did not answer in time") from None
        except wire.WireError as err:
            raise self._hang_up(f"the solution's process sent a bad message ({err})") from None
        except (wire.PeerGone, OSError):
            raise self._hang_up(self._ended()) from None

    def remote(self, body: object) -> Remote:
        """A decoded reference (``[id, repr]``) as a :class:`Remote`, one per id."""
        ref, shown = _reference_parts(body)
        found = self._remotes.get(ref)
        if found is None:
            found = self._remotes[ref] = Remote(self, ref, shown)
        return found

    def _reference(self, obj: object) -> list:
        if type(obj) is Remote and obj._link is self:
            return [obj._ref]
        raise TypeError(f"a {type(obj).__name__} cannot be passed to the solution (only plain values, "
                        "and objects the solution returned)")

    def ask(self, op: str, target: Remote, args: tuple = (), kwargs: dict | None = None):
        """Do ``op`` on ``target`` in the solution's process, within the test's time left."""
        if self.gone is not None:
            raise SolutionGone(self.gone)
        message = {"op": op, "target": [target._ref], "args": [wire.encode(a, self._reference) for a in args],
                   "kwargs": [[str(k), wire.encode(v, self._reference)] for k, v in (kwargs or {}).items()]}
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        budget = left - GRACE_S if left > 0 else 1.0
        if budget <= 0:
            raise CaseTimeout()
        message["budget"] = budget
        try:
            wire.send(self.requests, message)
            # Past our own timer (GRACE_S after the solution's), so that the timer decides, not a race.
            reply = self.receive(time.monotonic() + budget + 2 * GRACE_S)
        except CaseTimeout:  # our own timer, GRACE_S after the solution's: it blocked or caught its timer
            self._hang_up("the solution did not stop at the time limit (it blocked or caught the timer)")
            raise
        except OSError:
            raise self._hang_up(self._ended()) from None
        if "value" in reply:
            try:
                value = wire.decode(reply["value"], self.remote)
            except wire.WireError as err:
                raise self._hang_up(f"the solution's process sent a bad value ({err})") from None
            if op == "construct":
                if type(value) is not Remote:
                    raise self._hang_up("a class of the solution's made a plain value")
                if value._kind == OBJECT:
                    value._kind = INERT
            return value
        if reply.get("timeout") is True:
            raise CaseTimeout()
        if isinstance(reply.get("raise"), dict):
            raise _remote_exception(reply["raise"])
        raise self._hang_up("the solution's process sent an unknown reply")

    def _hang_up(self, why: str) -> SolutionGone:
        if self.gone is None:
            self.gone = why
            try:
                os.kill(self.pid, signal.SIGKILL)  # refused when it runs as another user: the host kills it
            except OSError:
                pass
            os.close(self.requests)
        return SolutionGone(self.gone)

    def _ended(self) -> str:
        """Why the solution's process stopped answering, from its exit status."""
        for _ in range(50):
            try:
                pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == self.pid:
                code = os.waitstatus_to_exitcode(status)
                if code == -signal.SIGXCPU or (code == -signal.SIGKILL and usage.ru_utime + usage.ru_stime
                                               >= self.cpu_limit > 0):
                    return "the solution's process reached the CPU-time limit"
                if code == self.exit_codes.get("memory"):
                    return "the solution's process ran out of memory"
                if code < 0:
                    try:
                        name = signal.Signals(-code).name
                    except ValueError:
                        name = f"signal {-code}"
                    return f"the solution's process was killed by {name}"
                return f"the solution's process exited (status {code})"
            time.sleep(0.005)
        return "the solution's process stopped answering"

    def close(self, usage_fd: int) -> None:
        """Report the solution's peak memory, hang up, and reap it (so its CPU time counts in ours)."""
        try:
            with open(f"/proc/{self.pid}/status", "rb") as handle:
                for line in handle:
                    if line.startswith(b"VmHWM:"):
                        os.write(usage_fd, b"%d\n" % (int(line.split()[1]) * 1024))
        except (OSError, ValueError):
            pass
        if self.gone is None:
            self.gone = "closed"
            os.close(self.requests)
        for _ in range(100):
            try:
                pid, _, _ = os.wait4(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == self.pid:
                return
            time.sleep(0.005)


def _remote_exception(info: dict) -> BaseException:
    """The solution's exception, re-raised here: a builtin type as itself (so ``except ValueError`` in a
    test works), any other as :class:`RemoteError`; ``_drift_remote`` holds its line and traceback."""
    name, line = str(info.get("type", "")), str(info.get("error", ""))[:1000]
    trace = str(info.get("traceback", ""))[-3000:]
    kind = getattr(builtins, name, None) if info.get("builtin") is True else None
    text = line[len(name) + 2:] if line.startswith(name + ": ") else ""
    err: BaseException = RemoteError(line)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            err = kind(text) if text else kind()
        except Exception:  # noqa: BLE001 - a type that needs other arguments (UnicodeDecodeError)
            pass
    err._drift_remote = (line or name, trace)
    return err


def _contains_call(node: ast.AST) -> bool:
    return any(isinstance(sub, ast.Call) for sub in ast.walk(node))


class _BindChecked(ast.NodeTransformer):
    """``assert f(x) == y`` -> ``assert (GOT := f(x)) == y``; also ``assert f(x)``, ``assert not f(x)``.

    Compiled from the tree, so tracebacks still show the test's own text.
    """

    def __init__(self, got_name: str):
        self.got_name = got_name

    def _bind(self, expr: ast.expr) -> ast.expr:
        target = ast.copy_location(ast.Name(id=self.got_name, ctx=ast.Store()), expr)
        return ast.copy_location(ast.NamedExpr(target=target, value=expr), expr)

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        test = node.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.NotEq)):
            right = test.comparators[0]
            if _contains_call(test.left) or not _contains_call(right):
                test.left = self._bind(test.left)
            else:
                test.comparators = [self._bind(right)]
        elif isinstance(test, ast.Call):
            node.test = self._bind(test)
        elif isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and isinstance(test.operand, ast.Call):
            test.operand = self._bind(test.operand)
        return node


def run(link: Link, nonce: str, prelude: str, setup: str, tests: list, test_timeout: float, instrument: bool,
        got_name: str, entry_point: str | None, load_timeout: float, usage_fd: int) -> None:
    """Run the prelude, bind the solution's names, run the setup and each test; report to fd 3."""
    write, dumps = os.write, json.dumps
    limited = reprlib.Repr()
    limited.maxstring = limited.maxother = 160
    limited.maxlist = limited.maxtuple = limited.maxdict = limited.maxset = 12
    own_files = {"prompt.py", "setup.py"}

    def emit(**record):
        record["nonce"] = nonce
        write(3, (dumps(record) + "\n").encode())

    def on_alarm(signum, frame):
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, on_alarm)

    def describe(err: BaseException) -> tuple[str, str]:
        remote = getattr(err, "_drift_remote", None)
        if isinstance(remote, tuple):
            return remote
        # A test's own frames are left out of its traceback: the caller knows the test.
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename in own_files]
        error = "".join(traceback.format_exception_only(type(err), err)).strip()
        if isinstance(err, SyntaxError):
            return error.splitlines()[-1], error
        return error.splitlines()[-1] if error else type(err).__name__, "".join(traceback.format_list(frames[-8:]))

    def checked_value(err: BaseException, name: str) -> str | None:
        tb, value = err.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == name and got_name in tb.tb_frame.f_locals:
                value = tb.tb_frame.f_locals[got_name]
            tb = tb.tb_next
        if value is None:
            return None
        try:
            return limited.repr(value)
        except ValueError:  # an int beyond the interpreter's digit limit for str()
            return f"<{type(value).__name__} too large to show>"

    def build(name: str, source: str, test: bool):
        if test and instrument:
            try:
                return compile(_BindChecked(got_name).visit(ast.parse(source, name)), name, "exec")
            except (SyntaxError, ValueError, TypeError):
                pass  # e.g. a walrus where none may stand: run the test as written
        return compile(source, name, "exec")

    def execute(name: str, source: str, test: bool = False) -> None:
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        code = build(name, source, test)
        signal.setitimer(signal.ITIMER_REAL, test_timeout + GRACE_S)
        try:
            exec(code, namespace)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def load(stage: str, name: str, source: str) -> bool:
        if not source.strip():
            return True
        try:
            execute(name, source)
        except CaseTimeout:
            emit(stage=stage, error=f"Timeout: took longer than {test_timeout:g} s", traceback="")
            return False
        except BaseException as err:  # noqa: B036 - whatever the trusted code raised is reported
            error, trace = describe(err)
            emit(stage=stage, error=error, traceback=trace)
            return False
        return True

    namespace: dict = {"__name__": "solution", "__builtins__": builtins}

    def steps() -> None:
        if not load("prelude", "prompt.py", prelude):
            return
        trusted = {name for name in namespace if not name.startswith("__")}
        try:
            loaded = link.receive(time.monotonic() + load_timeout)
        except SolutionGone as gone:
            timed_out = "in time" in str(gone)
            emit(stage="solution", error=f"Timeout: took longer than {test_timeout:g} s" if timed_out else str(gone),
                 traceback="")
            return
        if isinstance(loaded.get("load_error"), dict):
            report = loaded["load_error"]
            emit(stage=str(report.get("stage", "solution")), error=str(report.get("error", ""))[:1000],
                 traceback=str(report.get("traceback", ""))[-3000:])
            return
        signal.setitimer(signal.ITIMER_REAL, test_timeout + GRACE_S)  # fresh imports of what the solution imported
        try:
            _bind(namespace, loaded.get("loaded"), link, trusted, entry_point)
        except (wire.WireError, TypeError, ValueError) as err:
            emit(stage="solution", error=f"the solution's process sent a bad report ({err})", traceback="")
            return
        except CaseTimeout:
            emit(stage="solution", error=f"Timeout: importing what the solution imported took longer than "
                 f"{test_timeout:g} s", traceback="")
            return
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if not load("setup", "setup.py", setup):
            return
        emit(stage="loaded")
        for index, source in enumerate(tests):
            name = f"test_{index}.py"
            namespace.pop(got_name, None)  # no stale value from an earlier test
            try:
                execute(name, source, test=True)
            except CaseTimeout:
                emit(test=index, passed=False, error=f"Timeout: took longer than {test_timeout:g} s", traceback="")
            except SolutionGone as gone:
                emit(test=index, passed=False, error=f"not run: {gone}", traceback="")
            except BaseException as err:  # noqa: B036
                error, trace = describe(err)
                emit(test=index, passed=False, error=error, traceback=trace, got=checked_value(err, name))
            else:
                emit(test=index, passed=True)

    try:
        steps()
    finally:
        link.close(usage_fd)


def _reference_parts(body: object) -> tuple[int, str]:
    if type(body) is not list or len(body) != 2 or type(body[0]) is not int or type(body[1]) is not str:
        raise wire.WireError(f"bad reference {body!r:.80}")
    return body[0], body[1][:300]


def _bind(namespace: dict, names: object, link: Link, trusted: set, entry_point: str | None) -> None:
    """Bind the names the solution defined, so that a test can use it but not consult it.

    The modules, functions and classes the solution imported are imported here afresh (by name:
    what it did to its own copies does not matter). The entry point (the function the solution is
    to write) becomes a proxy, the classes the solution defined constructors of inert objects
    (see :class:`Remote`); with no entry point named, all its functions are proxies and its other
    values copies. Nothing else of the solution's is bound, and a name of the builtins or one the
    prelude defines keeps its trusted meaning (except the entry point): a test that relies on the
    solution for ``isclose`` or ``pi`` finds nothing, and the report ``names`` comes from the
    solution's process, so whatever it claims binds nothing a test could consult.
    """
    if type(names) is not list:
        raise wire.WireError("no list of names")
    for entry in names:
        if type(entry) is not list or len(entry) != 2 or type(entry[0]) is not str or type(entry[1]) is not dict:
            raise wire.WireError("bad name entry")
        name, how = entry
        if not name.isidentifier() or (name != entry_point and (name in trusted or hasattr(builtins, name))):
            continue
        if type(how.get("module")) is str:
            try:
                namespace[name] = importlib.import_module(how["module"])
            except Exception:  # noqa: BLE001 - a module only the solution has (its own, or a broken import)
                pass
        elif type(how.get("import")) is list and len(how["import"]) == 2 and all(
                type(part) is str for part in how["import"]):
            module, qualname = how["import"]
            try:
                found = importlib.import_module(module)
                for part in qualname.split("."):
                    found = getattr(found, part)
            except Exception:  # noqa: BLE001 - made up, or local to the solution: the tests do without it
                continue
            namespace[name] = found
        elif "ref" in how and (entry_point is None or name == entry_point):
            namespace[name] = link.remote(how["ref"])
        elif "ref" in how and how.get("class") is True:
            namespace[name] = Remote(link, *_reference_parts(how["ref"]), kind=CONSTRUCTOR)
        elif "value" in how and (entry_point is None or name == entry_point):
            namespace[name] = wire.decode(how["value"], link.remote)

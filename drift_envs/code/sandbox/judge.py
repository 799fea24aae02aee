"""The child side of a test suite: runs the tests in the sandboxed interpreter and reports each.

Imported by :mod:`child` (standard library only).
"""

from __future__ import annotations

import ast
import builtins
import json
import linecache
import os
import reprlib
import signal
import traceback


def run(nonce, parts, tests, test_timeout, instrument, got_name):
    """Run the parts (prelude, solution, setup) in one namespace, then each test; report to fd 3."""
    write, dumps = os.write, json.dumps  # kept before the solution can patch them
    limited = reprlib.Repr()
    limited.maxstring = limited.maxother = 160
    limited.maxlist = limited.maxtuple = limited.maxdict = limited.maxset = 12
    names = {name for _, name, _ in parts} | {f"test_{i}.py" for i in range(len(tests))}

    def emit(**record):
        record["nonce"] = nonce
        write(3, (dumps(record) + "\n").encode())

    class CaseTimeout(BaseException):
        pass

    def on_alarm(signum, frame):
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, on_alarm)

    def describe(err, name):
        # A test's own frames are left out of its traceback: the caller knows the test.
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename in names and
                  not f.filename.startswith("test_")]
        lines = traceback.format_list(frames[-8:])
        error = "".join(traceback.format_exception_only(type(err), err)).strip()
        if isinstance(err, SyntaxError):
            return error.splitlines()[-1], error
        return error.splitlines()[-1] if error else type(err).__name__, "".join(lines)[-3000:]

    def checked_value(err, name):
        tb, value = err.__traceback__, None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == name and got_name in tb.tb_frame.f_locals:
                value = tb.tb_frame.f_locals[got_name]
            tb = tb.tb_next
        if value is None:
            return None
        try:
            return limited.repr(value)
        except BaseException:  # noqa: B036 - a hostile __repr__
            return "<unprintable>"

    def contains_call(node):
        return any(isinstance(sub, ast.Call) for sub in ast.walk(node))

    def bind(expr):
        target = ast.copy_location(ast.Name(id=got_name, ctx=ast.Store()), expr)
        return ast.copy_location(ast.NamedExpr(target=target, value=expr), expr)

    class BindChecked(ast.NodeTransformer):
        # assert f(x) == y  ->  assert (got_name := f(x)) == y; also `assert f(x)`, `assert not f(x)`.
        # Compiled from the tree, so tracebacks still show the test's own text.
        def visit_Assert(self, node):
            test = node.test
            if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.NotEq)):
                right = test.comparators[0]
                if contains_call(test.left) or not contains_call(right):
                    test.left = bind(test.left)
                else:
                    test.comparators = [bind(right)]
            elif isinstance(test, ast.Call):
                node.test = bind(test)
            elif isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and isinstance(test.operand, ast.Call):
                test.operand = bind(test.operand)
            return node

    def build(name, source, test):
        if test and instrument:
            try:
                return compile(BindChecked().visit(ast.parse(source, name)), name, "exec")
            except (SyntaxError, ValueError, TypeError):
                pass  # e.g. a walrus where none may stand: run the test as written
        return compile(source, name, "exec")

    def run(name, source, test=False):
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        code = build(name, source, test)
        signal.setitimer(signal.ITIMER_REAL, test_timeout)
        try:
            exec(code, namespace)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    namespace = {"__name__": "solution", "__builtins__": builtins}
    for stage, name, source in parts:
        if not source.strip():
            continue
        try:
            run(name, source)
        except CaseTimeout:
            emit(stage=stage, error=f"Timeout: took longer than {test_timeout:g} s", traceback="")
            return
        except BaseException as err:  # noqa: B036 - whatever the solution raises is reported
            error, trace = describe(err, name)
            emit(stage=stage, error=error, traceback=trace)
            return
    emit(stage="loaded")
    for index, source in enumerate(tests):
        name = f"test_{index}.py"
        namespace.pop(got_name, None)  # no stale value from an earlier test
        try:
            run(name, source, test=True)
        except CaseTimeout:
            emit(test=index, passed=False, error=f"Timeout: took longer than {test_timeout:g} s", traceback="")
        except BaseException as err:  # noqa: B036
            error, trace = describe(err, name)
            emit(test=index, passed=False, error=error, traceback=trace, got=checked_value(err, name))
        else:
            emit(test=index, passed=True)

"""Inside the sandbox: serve function calls to the evaluator, or record a reference run's test cases.

Imported by `_sandbox_child.py` (a sibling file, on the runner's path before the program runs). Nothing here
decides a verdict: a program may patch or replace any of it, and all it can achieve is to send different plain data
(`_plaindata`), which the evaluating process type-checks and compares with expected values the program never sees.

Calls mode (`serve_calls`): the program (candidate source only, no test) is executed once; the runner then reads
one call per line from `calls_fd` (`[args, kwargs]` or `[args, kwargs, reduce]`, plain-data encoded; reduce "bool" or
"not_none" sends only `bool(result)` / `result is not None`), calls the entry point, and writes one JSON
line per call to `results_fd`: {"i": k, "v": value} | {"i": k, "raised": "Type: message"} |
{"i": k, "unplain": why}. The first line is {"ready": true} or {"ready": false, "error": ...}. With `trace`, every
line also carries "lines": the line numbers of program.py executed since the previous message (sys.settrace).

Record mode (`recorder`): a trusted reference program calls `_mt_case(...)` for each converted test assertion;
each call runs the reference entry point and writes one JSON line with the arguments, the test's expected value and
the reference's own output (code_io.py builds these programs).
"""

import copy
import json
import os
import sys
import time

from _plaindata import NotPlainData, _dec, encode_value

PROGRAM = "program.py"


class Lines:
    """Writes JSON lines to a pipe (whole lines, retried on partial writes)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, msg: dict) -> None:
        data = (json.dumps(msg, separators=(",", ":"), allow_nan=False) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]


class Reader:
    """Reads newline-terminated lines from a pipe (None at end of file)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf = fd, bytearray()

    def line(self) -> bytes | None:
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        i = self.buf.index(b"\n")
        line = bytes(self.buf[:i])
        del self.buf[: i + 1]
        return line


class Tracer:
    """Line numbers of program.py executed (sys.settrace: Python 3.11 has no sys.monitoring)."""

    def __init__(self) -> None:
        self.new: set[int] = set()

    def _global(self, frame, event, arg):
        return self._local if frame.f_code.co_filename == PROGRAM else None

    def _local(self, frame, event, arg):
        if event == "line":
            self.new.add(frame.f_lineno)
        return self._local

    def start(self) -> None:
        sys.settrace(self._global)

    def stop(self) -> None:
        sys.settrace(None)

    def take(self) -> list[int]:
        lines, self.new = sorted(self.new), set()
        return lines


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"[:500]
    except Exception:  # noqa: BLE001 - a program's exception may have a hostile __str__
        return type(exc).__name__


def serve_calls(code, glb: dict, entry: str, calls_fd: int, results_fd: int, trace: bool) -> None:
    """Run the compiled program in `glb`, then answer calls until the evaluator closes `calls_fd`."""
    out, calls = Lines(results_fd), Reader(calls_fd)
    tracer = Tracer() if trace else None

    def send(msg: dict) -> None:
        if tracer is not None:
            msg["lines"] = tracer.take()
        out.send(msg)

    try:
        if tracer:
            tracer.start()
        exec(code, glb)  # noqa: S102 - running the candidate is the point; the verdict is decided elsewhere
        fn = glb.get(entry)
        if not callable(fn):
            raise NameError(f"the program defines no function {entry!r}")  # noqa: TRY004 - as Python says it
    except BaseException as exc:  # noqa: BLE001 - the program's own failure, whatever it raised
        if tracer:
            tracer.stop()
        send({"ready": False, "error": _describe(exc)})
        return
    if tracer:
        tracer.stop()
    send({"ready": True})
    k = 0
    while (line := calls.line()) is not None:
        args, kwargs, *reduce = _dec(json.loads(line), 0)
        try:
            if tracer:
                tracer.start()
            result = fn(*args, **kwargs)
            if reduce:  # a truthiness / not-None test needs only that bit: no expected value to lie about
                result = bool(result) if reduce[0] == "bool" else result is not None
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are failures too
            msg = {"i": k, "raised": _describe(exc)}
        else:
            msg = _encoded(k, result)
        finally:
            if tracer:
                tracer.stop()
        send(msg)
        k += 1


def _encoded(k: int, result) -> dict:
    try:
        return {"i": k, "v": encode_value(result)}
    except NotPlainData as exc:
        return {"i": k, "unplain": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - e.g. MemoryError while encoding a huge result
        return {"i": k, "unplain": _describe(exc)}


def recorder(results_fd: int):
    """`_mt_case(fn, line, kind, view, args, kwargs, expected, tol)` for a trusted reference program."""
    out = Lines(results_fd)

    def _mt_case(fn, line, kind, view, args, kwargs, expected, tol) -> None:
        msg = {"line": line, "kind": kind, "view": view}
        try:
            msg.update(args=encode_value(list(args)), kwargs=encode_value(dict(kwargs)),
                       expected=encode_value(expected), tol=encode_value(tol))
        except NotPlainData as exc:
            out.send({"line": line, "unplain": f"test values: {exc}"})
            return
        start = time.perf_counter()
        ref = fn(*copy.deepcopy(args), **copy.deepcopy(kwargs))
        msg["ref_s"] = time.perf_counter() - start
        if kind in ("truthy", "falsy") and not view:
            ref = bool(ref)  # as the candidate's result will be reduced (serve_calls)
        try:
            msg["ref"] = encode_value(ref)
        except NotPlainData as exc:
            msg["ref_unplain"] = str(exc)
        out.send(msg)

    return _mt_case

"""Call a sandboxed program's function on test inputs and judge each plain-data result here, outside the program.

`run_calls(source, entry, calls, judge, limits, call_s, caps)` starts the program in the runner's calls mode
(`_sandbox_calls.py`): the program (the candidate's code only; no test, nothing worth patching) is executed once,
then this process sends one call at a time (plain-data encoded arguments), waits for its result with that call's own
time budget, decodes it (`_plaindata`: builtin types only, type-checked) and hands it to `judge(k, result)`, which
compares with expected values the program never sees and says whether to go on. The verdict is therefore decided
in this process: a program can only send data, never run code where the comparison happens.

What the runner reports before the program's own code runs (setup, "compiled" or a syntax error) comes through the
token-signed status channel, which the runner closes before the program starts; everything on the results channel
after that is untrusted and only ever decoded as data.
"""

import json
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mixtune.evaluate._plaindata import _dec
from mixtune.evaluate.sandbox import (
    BASE_LAYERS,
    Launch,
    Limits,
    _Head,
    _Tail,
    encode_source,
    finish,
    launch,
    read_rest,
    status_lines,
)

READY_CAP = 1 << 20  # bytes of the ready line (a traced program's module-level lines included)


@dataclass
class CallResult:
    """One call's result. kind: "value" | "raised" | "unplain" (returned something that may not cross) | "bad"
    (a malformed or oversized result line) | "timeout" | "died" (the process ended during the call)."""

    kind: str
    value: Any = None
    detail: str = ""
    seconds: float = 0.0


@dataclass
class CallsRun:
    """How a calls-mode run went. phase: "error" (the sandbox failed) | "compile" | "load" (running the program's
    top level: see `load`) | "calls" (see `calls`)."""

    phase: str
    detail: str = ""
    load: CallResult | None = None
    calls: list[CallResult] = field(default_factory=list)
    isolation: list[str] = field(default_factory=list)
    stdout_tail: str = ""
    stderr_tail: str = ""
    returncode: int | None = None
    wall_s: float = 0.0
    lines: list[int] | None = None
    """Executed line numbers of the program (trace=True; untrusted, validated as ints within the source)."""


class _Driver:
    """The evaluator's side of one calls-mode run: poll loop over stdout, stderr, status, results and calls."""

    def __init__(self, run: Launch, calls: list[bytes], judge: Callable[[int, CallResult], bool],
                 limits: Limits, call_s: list[float], caps: list[int], n_lines: int) -> None:
        self.run, self.calls, self.judge, self.call_s, self.caps = run, calls, judge, call_s, caps
        self.out, self.err, self.status = _Tail(limits.output_bytes), _Tail(limits.output_bytes), _Head(1 << 16)
        self.wall_end = run.start + limits.wall_s
        # every call is written as soon as the pipe takes it (the inputs are no secret); call k's clock starts when
        # result k-1 (or the ready line) arrives, so each call still gets exactly its own budget
        self.k, self.sent_at, self.pending, self.buf = -1, run.start, b"".join(calls), bytearray()
        self.load: CallResult | None = None
        self.results: list[CallResult] = []
        self.lines: set[int] | None = set()
        self.n_lines, self.done = n_lines, False
        os.set_blocking(run.calls_w, False)

    def loop(self) -> None:
        run = self.run
        sinks = {run.out_r: self.out, run.err_r: self.err, run.status_r: self.status}
        poll = select.poll()
        for fd in [*sinks, run.results_r] + ([run.runner.pidfd] if run.runner.pidfd is not None else []):
            poll.register(fd, select.POLLIN)
        if self.pending:
            poll.register(run.calls_w, select.POLLOUT)
        while not self.done:
            now = time.monotonic()
            end = min(self.wall_end, self.sent_at + self.call_s[self.k]) if self.k >= 0 else self.wall_end
            if now >= end:
                return self._stop(CallResult("timeout", detail="time limit", seconds=now - self.sent_at))
            events = dict(poll.poll((end - now) * 1000))
            if run.calls_w in events:
                self._write(poll)
            for fd in set(events) & set(sinks):
                self._read_into(fd, sinks, poll)
            if run.results_r in events and not self._read_results(poll):
                return self._ended(sinks)
            if run.runner.pidfd is not None and run.runner.pidfd in events:
                return self._ended(sinks)

    def _read_into(self, fd: int, sinks: dict, poll) -> None:
        chunk = os.read(fd, 1 << 16)
        if chunk:
            sinks[fd].add(chunk)
        else:
            poll.unregister(fd)
            del sinks[fd]

    def _write(self, poll) -> None:
        try:
            n = os.write(self.run.calls_w, self.pending)
        except BlockingIOError:
            return
        except OSError:  # the program closed its end; its missing answer ends the run
            n = len(self.pending)
        self.pending = self.pending[n:]
        if not self.pending:
            poll.unregister(self.run.calls_w)

    def _read_results(self, poll) -> bool:
        """Take result bytes and handle every complete line; False at end of file."""
        chunk = os.read(self.run.results_r, 1 << 16)
        if not chunk:
            return False
        self.buf += chunk
        while not self.done and b"\n" in self.buf:
            i = self.buf.index(b"\n")
            line = bytes(self.buf[:i])
            del self.buf[: i + 1]
            self._handle(line, poll)
        cap = READY_CAP if self.k < 0 else self.caps[self.k]
        if not self.done and len(self.buf) > cap:
            self._stop(CallResult("bad", detail=f"result larger than {cap} bytes", seconds=self._elapsed()))
        return True

    def _handle(self, line: bytes, poll) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            return self._stop(CallResult("bad", detail="malformed result line", seconds=self._elapsed()))
        self._take_lines(msg.get("lines"))
        if self.k < 0:
            if msg.get("ready") is True:
                return self._next(poll)
            error = msg.get("error") if msg.get("ready") is False else "malformed ready line"
            return self._stop(CallResult("raised", detail=str(error)[:500], seconds=self._elapsed()))
        result = _call_result(msg, self.k, self._elapsed())
        self.results.append(result)
        if self.judge(self.k, result) and self.k + 1 < len(self.calls):
            self._next(poll)
        else:
            self.done = True

    def _next(self, poll) -> None:
        self.k += 1
        self.sent_at = time.monotonic()
        if self.k >= len(self.calls):
            self.done = True

    def _take_lines(self, lines) -> None:
        if self.lines is None or lines is None:
            return
        if type(lines) is list and all(type(n) is int and 1 <= n <= self.n_lines for n in lines):
            self.lines.update(lines)
        else:
            self.lines = None  # a program that forges its trace loses it: masking falls back to every token

    def _elapsed(self) -> float:
        return time.monotonic() - self.sent_at

    def _stop(self, result: CallResult) -> None:
        if self.k < 0:
            self.load = result
        else:
            self.results.append(result)
            self.judge(self.k, result)
        self.done = True

    def _ended(self, sinks: dict) -> None:
        """The runner exited (or closed the results channel): take what is buffered, then record the end."""
        read_rest(sinks)
        os.set_blocking(self.run.results_r, False)
        try:
            while not self.done and (chunk := os.read(self.run.results_r, 1 << 16)):
                self.buf += chunk
                while not self.done and b"\n" in self.buf:
                    i = self.buf.index(b"\n")
                    line = bytes(self.buf[:i])
                    del self.buf[: i + 1]
                    self._handle(line, None)
        except BlockingIOError:
            pass
        if not self.done:
            self._stop(CallResult("died", detail="the program ended", seconds=self._elapsed()))


def _call_result(msg: dict, k: int, seconds: float) -> CallResult:
    if msg.get("i") != k:
        return CallResult("bad", detail=f"result for call {msg.get('i')!r} while call {k} was running",
                          seconds=seconds)
    if "v" in msg:
        try:
            return CallResult("value", _dec(msg["v"], 0), seconds=seconds)
        except (ValueError, TypeError, RecursionError, OverflowError, MemoryError) as exc:
            return CallResult("bad", detail=f"result is not plain data: {exc}"[:300], seconds=seconds)
    for kind in ("raised", "unplain"):
        if kind in msg:
            return CallResult(kind, detail=str(msg[kind])[:500], seconds=seconds)
    return CallResult("bad", detail="result line without a value", seconds=seconds)


def run_calls(source: str, entry: str, calls: list[bytes], judge: Callable[[int, CallResult], bool],
              limits: Limits | None = None, call_s: list[float] | None = None, caps: list[int] | None = None,
              trace: bool = False) -> CallsRun:
    """Run `source` in calls mode and feed it `calls` (encoded `[args, kwargs]` lines) one at a time.

    `judge(k, result)` sees every call's result (a timeout or a crash too) and returns whether to continue.
    `call_s[k]` / `caps[k]`: call k's time budget (within the whole run's `limits.wall_s`) and the most bytes its
    result line may have. Never raises for anything the program does.
    """
    limits = limits or Limits()
    n = len(calls)
    call_s, caps = call_s or [limits.wall_s] * n, caps or [1 << 24] * n
    data = encode_source(source)
    if isinstance(data, str):
        return CallsRun("compile", data)
    start = time.monotonic()
    try:
        run = launch(data, limits, {"mode": "calls", "entry": entry, "trace": trace}, calls=True, results=True)
    except OSError as exc:
        return CallsRun("error", str(exc), wall_s=time.monotonic() - start)
    driver = _Driver(run, [c if c.endswith(b"\n") else c + b"\n" for c in calls], judge, limits, call_s, caps,
                     source.count("\n") + 1)
    failure = ""
    try:
        driver.loop()
        _let_it_end(run)
    except Exception as exc:  # noqa: BLE001 - never let one program end the evaluation
        failure = f"sandbox failed while running: {type(exc).__name__}: {exc}"
    returncode = finish(run)
    return _summarise(driver, run, returncode, failure, trace, time.monotonic() - start)


def _let_it_end(run: Launch, wait_s: float = 0.05) -> None:
    """Close the calls channel and give the runner a moment to exit by itself (an honest runner does at once):
    a group that ends on its own is gone sooner than one killed mid-run."""
    os.close(run.calls_w)
    run.calls_w = None
    if run.runner.pidfd is not None:
        select.select([run.runner.pidfd], [], [], wait_s)


def _summarise(driver: _Driver, run: Launch, returncode: int | None, failure: str, trace: bool,
               wall_s: float) -> CallsRun:
    lines = status_lines(driver.status.text(), run.token)
    setup = next((m for m in lines if m.get("stage") in ("setup", "setup-error")), None)
    compiled = any(m.get("stage") == "compiled" for m in lines)
    done = next((m for m in lines if m.get("stage") == "done"), None)
    common = {"isolation": BASE_LAYERS + (list(setup.get("isolation", [])) if setup else []),
              "stdout_tail": driver.out.text(), "stderr_tail": driver.err.text(), "returncode": returncode,
              "wall_s": wall_s, "lines": sorted(driver.lines) if trace and driver.lines is not None else None}
    if failure:
        return CallsRun("error", failure, **common)
    if setup is None or setup.get("stage") == "setup-error":
        detail = str(setup.get("detail", "")) if setup else f"sandbox runner failed to start (exit status {returncode})"
        if setup is None and driver.load is not None and driver.load.kind == "timeout":
            detail = "sandbox runner did not start within the time limit"
        return CallsRun("error", detail, **common)
    if not compiled:
        if done is not None and done.get("phase") == "compile":
            return CallsRun("compile", str(done.get("detail", "")), **common)
        return CallsRun("load", "ended before it compiled", load=driver.load or CallResult("died"), **common)
    cpu = returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU)
    for result in ([driver.load] if driver.load else []) + driver.results[-1:]:
        if result.kind == "died":
            result.detail = f"the program ended (exit status {returncode})"
            if cpu:
                result.kind, result.detail = "timeout", "CPU-time limit"
    if driver.load is not None:
        return CallsRun("load", driver.load.detail, load=driver.load, **common)
    return CallsRun("calls", "", calls=driver.results, **common)

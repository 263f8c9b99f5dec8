"""Sandbox runner: the first process of one sandboxed program (started by `sandbox.run_program`).

Invoked as `python -S -s -B _sandbox_child.py CONFIG_JSON` with a clean environment, in its own session, with two
inherited pipe ends: `token_fd` (holds the per-run secret token, read once and closed) and `status_fd` (where the
outcome is reported). Steps, each best effort and each recorded in the isolation list it reports:

1. Linux namespaces through libc `unshare(2)` (Python 3.11 has no `os.unshare`): net, mount, pid, ipc, uts; as a
   non-root user inside a new user namespace that maps only the caller's uid.
2. With a pid namespace it forks: this process stays outside as a relay that waits and passes the exit status on;
   the child is pid 1 of the namespace, so when it ends the kernel kills every process the program left behind.
3. With a mount namespace: no propagation to the host, a fresh /proc, the whole tree re-mounted read-only, and a
   private size-limited tmpfs on /tmp holding the working directory /tmp/work.
4. Resource limits, then privileges dropped (root: to a sandbox uid; user namespace: capabilities dropped),
   no_new_privs, every other file descriptor closed.
5. The program runs in this interpreter (`exec`). Only a program that returns normally is reported as passed, with
   the token; `exit(0)`, `os._exit(0)` or a signal before the end cannot produce that line.

Status lines (JSON, one per line): {"token", "stage": "setup", "isolation": [...]} before the program runs (or
"setup-error" with a detail), then {"token", "stage": "done", "outcome": "passed"|"failed", "detail"}.
"""

import builtins
import ctypes
import json
import os
import resource
import signal
import sys
import traceback

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 0x400, 0x800, 0x200000
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1
PR_SET_PDEATHSIG, PR_SET_SECUREBITS, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 28, 24, 38
NAMESPACES = {"net": CLONE_NEWNET, "mount": CLONE_NEWNS, "pid": CLONE_NEWPID, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS}

_PREIMPORT = ("math", "re", "string", "collections", "itertools", "functools", "heapq", "bisect", "hashlib",
              "random", "typing", "statistics", "fractions", "decimal", "datetime", "copy", "operator", "array",
              "cmath", "textwrap", "unicodedata", "struct", "numbers", "enum", "dataclasses", "sys", "os")
_libc = ctypes.CDLL(None, use_errno=True)
_write, _exit = os.write, os._exit  # captured before the program can replace them


def _status(cfg: dict, token: str, **fields) -> None:
    line = json.dumps({"token": token, **fields}) + "\n"
    try:
        _write(cfg["status_fd"], line.encode())
    except OSError:
        pass  # the program closed or replaced the channel: the parent then sees no verdict, i.e. a failure


def _unshare_namespaces(want: bool) -> list[str]:
    """Enter new namespaces; returns the names entered ("user" when a user namespace was needed)."""
    if not want:
        return []
    all_flags = sum(NAMESPACES.values())
    if _libc.unshare(all_flags) == 0:
        return list(NAMESPACES)
    if os.geteuid() != 0:
        uid, gid = os.getuid(), os.getgid()
        if _libc.unshare(CLONE_NEWUSER | all_flags) == 0:
            # map only the caller's own uid/gid: "root" in here is the caller outside, nothing more
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            return ["user", *NAMESPACES]
    return [name for name, flag in NAMESPACES.items() if _libc.unshare(flag) == 0]


def _mount(source, target, fstype, flags, data=None) -> bool:
    enc = (lambda s: s.encode() if s is not None else None)
    return _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) == 0


def _readonly_tree() -> bool:
    """Make every mount read-only: one recursive mount_setattr(2) (Linux >= 5.12), else one remount per mount."""

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    if _libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)) == 0:
        return True
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
            "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
    root_done = False
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            target = fields[4].encode().decode("unicode_escape")
            # locked flags (nosuid, nodev, ...) must be repeated or the remount is refused
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY | sum(keep.get(o, 0) for o in fields[5].split(","))
            ok = _mount(None, target, None, flags)
            root_done = root_done or (ok and target == "/")
    return root_done


def _setup_mounts(cfg: dict, entered: list[str]) -> tuple[str, list[str]]:
    """Returns (working directory, isolation layers). Without a mount namespace the parent's directory is used."""
    layers: list[str] = []
    if "mount" not in entered or not _mount(None, "/", None, MS_REC | MS_PRIVATE):
        return cfg["workdir"], layers
    if "pid" in entered and _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC):
        layers.append("private-proc")
    if _readonly_tree():
        layers.append("readonly-root")
    tmpfs = f"size={cfg['tmpfs_mb']}m,mode=1777"
    if _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs):
        layers.append("private-tmp")
        os.mkdir("/tmp/work", 0o700)
        if cfg["uid"] is not None:
            os.chown("/tmp/work", cfg["uid"], cfg["gid"])
            _expose_import_path()
        return "/tmp/work", layers
    return cfg["workdir"], layers


def _expose_import_path() -> None:
    """Bind the interpreter's import folders under /tmp/.lib so a dropped uid can import the standard library even
    when it is installed below a private folder (e.g. /root/.pyenv). The bind mounts inherit read-only."""
    os.mkdir("/tmp/.lib", 0o755)
    moved = {}
    for i, path in enumerate(sys.path[1:]):  # sys.path[0] is the runner's own folder: not for the program
        target = f"/tmp/.lib/{i}"
        if os.path.isdir(path):
            os.mkdir(target, 0o755)
            moved[path] = target if _mount(path, target, None, MS_BIND | MS_REC) else path
    sys.path[:] = list(moved.values())
    sys.path_importer_cache.clear()
    # packages imported already (encodings, json, ...) look up their submodules through __path__
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            for j, folder in enumerate(search):
                for old, new in moved.items():
                    if folder == old or folder.startswith(old + os.sep):
                        search[j] = new + folder[len(old):]


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


def _run_program(source: str) -> tuple[str, str]:
    """Execute the program in a fresh __main__ namespace; only a normal return counts as passed."""
    sys.argv = ["program.py"]
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]  # the runner's folder is no business of the program
    try:
        code = compile(source, "program.py", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": builtins})  # noqa: S102 - running it is the point
    except SystemExit as exc:
        return "failed", f"SystemExit({exc.code!r}) before the tests finished"
    except BaseException as exc:  # noqa: BLE001 - the program's own failure, whatever it raised
        traceback.print_exc()
        return "failed", f"{type(exc).__name__}: {exc}"[:500]
    return "passed", ""


def run_child(cfg: dict) -> None:
    """Isolate, run the program described by `cfg`, report, exit. Never returns."""
    token = os.read(cfg["token_fd"], 256).decode()
    os.close(cfg["token_fd"])
    with open(cfg["program"], encoding="utf-8") as f:  # read before privileges drop and /tmp is hidden
        source = f.read()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    entered = _unshare_namespaces(cfg["namespaces"])
    if "pid" in entered:
        child = os.fork()
        if child:
            _relay(child)
    try:
        workdir, layers = _setup_mounts(cfg, entered)
        os.chdir(workdir)
        os.environ.update(HOME=workdir, TMPDIR="/tmp" if "private-tmp" in layers else workdir)
        _set_limits(cfg)
        layers = [f"namespace-{n}" for n in entered] + layers + ["rlimits"] + _drop_privileges(cfg, entered)
        os.closerange(3, cfg["status_fd"])
        os.closerange(cfg["status_fd"] + 1, 1 << 16)
        missing = [r for r in cfg["require"] if not any(layer.startswith(r) for layer in layers)]
        if missing:
            raise RuntimeError(f"required isolation not available: {missing}")
        memory = cfg["limits"]["memory_mb"] << 20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))  # last: the runner itself needs little
    except Exception as exc:  # noqa: BLE001 - any setup failure must be reported, not raised
        _status(cfg, token, stage="setup-error", detail=f"{type(exc).__name__}: {exc}")
        _exit(3)
    # the kernel's SIGXCPU is ignored by a pid-namespace init that has no handler: exit with 128 + SIGXCPU instead
    signal.signal(signal.SIGXCPU, lambda *_: _exit(128 + signal.SIGXCPU))
    _status(cfg, token, stage="setup", isolation=layers)
    outcome, detail = _run_program(source)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - the program may have replaced or broken its streams
            pass
    _status(cfg, token, stage="done", outcome=outcome, detail=detail)
    _exit(0 if outcome == "passed" else 1)


def _serve_spawn(sock, children: dict, sel) -> bool:
    """Handle one request from the parent: spawn a program, or kill one. False when the parent has gone."""
    import socket

    try:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
    except OSError:
        return False
    if not msg:
        return False
    req = json.loads(msg)
    if "kill" in req:
        pid = next((p for p, (rid, _) in children.items() if rid == req["kill"]), None)
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)  # not reaped yet, so the group id is still this program's
        return True
    pid = os.fork()
    if pid == 0:
        sock.close()  # first of all: the control channel must never reach the program
        os.setsid()
        out, err, status_fd, token_fd = fds
        os.dup2(out, 1)
        os.dup2(err, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        cfg = req["cfg"]
        cfg.update(status_fd=status_fd, token_fd=token_fd)
        try:
            run_child(cfg)
        finally:
            _exit(4)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    children[pid] = (req["id"], pidfd)
    sel.register(pidfd, 1, pid)
    sock.send(json.dumps({"id": req["id"], "pid": pid}).encode())
    return True


def serve(sock_fd: int) -> None:
    """Fork server: one per sandbox user, started with a clean environment. Forking a warm interpreter saves the
    interpreter start-up per program. Ends (killing its programs) when the parent closes the socket."""
    import selectors
    import socket

    _preimport()  # shared, copy-on-write, by every program forked from here
    sock = socket.socket(fileno=sock_fd)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, None)
    children: dict[int, tuple[int, int]] = {}
    while True:
        for key, _ in sel.select():
            if key.data is None:
                if not _serve_spawn(sock, children, sel):
                    for pid in children:
                        os.killpg(pid, signal.SIGKILL)
                    _exit(0)
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
            sock.send(json.dumps({"id": rid, "exit": os.waitstatus_to_exitcode(status)}).encode())


def main() -> None:
    if sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        run_child(json.loads(sys.argv[1]))


if __name__ == "__main__":
    main()

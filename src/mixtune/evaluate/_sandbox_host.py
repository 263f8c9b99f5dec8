"""Evaluator-side plumbing of the sandbox: the temp root, sandbox uids, the fork server and one started runner.

Temp folders: every program's private folder lives under one folder per evaluating process,
`<tmpdir>/mixtune-sandbox-<pid>-<random>/`, which holds `owner.lock` locked (flock) by that process for its
lifetime. When the evaluator is killed (SIGKILL included) the kernel drops the lock; the fork server, which notices
its parent's death on its control socket, then removes the folder, and the next evaluator that starts removes every
such folder whose lock it can take (`_sweep`). Folders without a lock file (left by older versions) are removed
once they are an hour old.
"""

import atexit
import fcntl
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")
PREFIX = "mixtune-sandbox-"
LOCK_NAME = "owner.lock"
_UID_BASE, _UID_SLOTS = 61000, 1024  # sandbox uids used when running as root (no passwd entry needed)
_STALE_UNLOCKED_S = 3600.0
MAX_FDS = 6  # stdout, stderr, status, token, calls, results


def clean_env(home: str) -> dict[str, str]:
    """The program's whole environment: fixed values, nothing from the caller."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": home,
            "TMPDIR": home, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}


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


UIDS = _UidPool()

_ROOT: dict[int, tuple[str, int]] = {}  # pid -> (root folder, fd holding its lock)
_ROOT_LOCK = threading.Lock()


def tmp_root() -> str:
    """This process's temp root (created, locked and stale roots swept on first use; re-made after a fork)."""
    pid = os.getpid()
    with _ROOT_LOCK:
        if pid in _ROOT:
            if os.path.isdir(_ROOT[pid][0]):
                return _ROOT[pid][0]
            os.close(_ROOT.pop(pid)[1])
        parent = tempfile.gettempdir()
        sweep(parent)
        # made under a name the sweep ignores, renamed once locked: a sweep never sees an unlocked new root
        fresh = tempfile.mkdtemp(prefix=f".{PREFIX}new-", dir=parent)
        os.chmod(fresh, 0o711)
        fd = os.open(os.path.join(fresh, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        root = os.path.join(parent, f"{PREFIX}{pid}-{os.path.basename(fresh)[len(PREFIX) + 5:]}")
        os.rename(fresh, root)
        _ROOT[pid] = (root, fd)
        if len(_ROOT) == 1:
            atexit.register(_remove_own_root)
        return root


def _remove_own_root() -> None:
    entry = _ROOT.pop(os.getpid(), None)
    if entry is not None:
        shutil.rmtree(entry[0], ignore_errors=True)
        os.close(entry[1])


def sweep(parent: str) -> list[str]:
    """Remove the temp roots under `parent` whose owner is gone (its lock can be taken); returns them."""
    removed = []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(PREFIX) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return removed
    for entry in entries:
        if remove_if_abandoned(entry.path):
            removed.append(entry.path)
    return removed


def remove_if_abandoned(root: str) -> bool:
    """rmtree `root` if no live process holds its lock (or, without a lock file, if it is an hour old)."""
    try:
        fd = os.open(os.path.join(root, LOCK_NAME), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        try:
            old = time.time() - os.stat(root).st_mtime > _STALE_UNLOCKED_S
        except OSError:
            return False
        if old:
            shutil.rmtree(root, ignore_errors=True)
        return old
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a live owner holds it
    else:
        shutil.rmtree(root, ignore_errors=True)
        return True
    finally:
        os.close(fd)


class ForkServer:
    """A warm runner (`_sandbox_child.py --serve`, clean environment, own session) that forks one child per
    program: saves an interpreter start per program. Programs never see its control socket (closed first thing
    after the fork); it kills its programs, removes the evaluator's temp root and exits when this process closes
    the socket or dies."""

    def __init__(self, flags: list[str], root: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([sys.executable, *flags, CHILD, "--serve", str(theirs.fileno()), root],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     pass_fds=(theirs.fileno(),), env=clean_env("/"), cwd="/",
                                     start_new_session=True)
        theirs.close()
        self.sock, self.lock, self.next_id, self.owner = ours, threading.Lock(), 0, os.getpid()
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


_SERVERS: dict[tuple[int, bool], ForkServer] = {}
_SERVERS_LOCK = threading.Lock()


def flags(site_packages: bool) -> list[str]:
    return ["-s", "-B"] + ([] if site_packages else ["-S"])


def fork_server(use: bool, site_packages: bool) -> ForkServer | None:
    """The fork server of this process for this interpreter configuration (restarted if it died); None where
    pidfds or fd passing are missing or when not wanted."""
    if not (use and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")):
        return None
    key = (os.getpid(), site_packages)
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is None or server.proc.poll() is not None:
            server = _SERVERS[key] = ForkServer(flags(site_packages), tmp_root())
        return server


class Runner:
    """One started runner, through the fork server or as a direct child; `finish` kills its group and reaps it.

    `fds` are the child's ends: stdout, stderr, then the channels the runner finds under the cfg keys `names`."""

    def __init__(self, cfg: dict, fds: list[int], names: list[str], use_server: bool, site_packages: bool) -> None:
        self.server, self.proc = fork_server(use_server, site_packages), None
        if self.server is not None:
            self.rid, self.box, pid = self.server.spawn({**cfg, "fd_names": names}, fds)
        else:
            cfg = {**cfg, **dict(zip(names, fds[2:])), "parent": os.getpid()}
            self.proc = subprocess.Popen([sys.executable, *flags(site_packages), CHILD, json.dumps(cfg)],
                                         stdin=subprocess.DEVNULL, stdout=fds[0], stderr=fds[1],
                                         pass_fds=tuple(fds[2:]), env=clean_env(cfg["workdir"]),
                                         cwd=os.path.dirname(cfg["program"]), start_new_session=True)
            pid = self.proc.pid
        try:
            self.pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
        except OSError:  # already gone and reaped by the server, or no pidfd support in this kernel
            self.pidfd = None
        self.pid = pid

    def finish(self) -> int | None:
        """Kill the group, reap the leader, then wait (at most 2 s) until every killed member is gone."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
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

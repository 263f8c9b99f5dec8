"""The run folder (ground floor): resolved config, version and git sha, metrics.jsonl, the writer lock, and the one
atomic writer every file and folder of a run goes through.

Atomic writes: a file or folder is built under a temp name unique to this writer (`.tmp-<name>-<pid>-<random>`), in
the same folder, every file is fsync'd, then it is renamed over the target and the parent folder is fsync'd, so a
killed writer leaves the old version intact and a reader never sees half a checkpoint. A full disk is reported in
those words, whatever library was writing. Temp names of writers that are gone are removed by
`remove_stale_temps` when a run starts.

Locks: one writer per run folder (and per study folder). `RunLock` takes an exclusive `flock` on `<folder>/.lock`
and writes its pid there; a second writer is refused with a one-line error naming the holder's pid. The kernel drops
the lock when its holder dies, so a stale lock never blocks (the pid left in the file is only a report).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import mixtune
from mixtune.config import Recipe, dump_recipe
from mixtune.errors import UserError
from mixtune.jsonl import dumps_line, iter_jsonl

if TYPE_CHECKING:
    from typing_extensions import Self

LOCK_NAME = ".lock"
_TEMP = re.compile(r"^\.tmp-.+-(\d+)-[^-]+$")
LOW_DISK_BYTES = 64 << 20
"""Below this much free space a failed write is reported as a full disk (torch's writer hides ENOSPC)."""


class DiskFullError(UserError, OSError):
    """A write failed because the disk (or quota) is full; the message names the path and how much is free."""


class RunLockedError(UserError, RuntimeError):
    """Another process holds the writer lock of a run or study folder."""


# ------------------------------------------------------------------------------------------------ atomic writes
def _temp_prefix(target: Path) -> str:
    return f".tmp-{target.name}-{os.getpid()}-"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


def _raise_if_disk_full(path: Path, exc: BaseException) -> None:
    """Re-raise a write failure caused by a full disk as DiskFullError (torch says `inline_container.cc`)."""
    free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or free < LOW_DISK_BYTES:
        raise DiskFullError(errno.ENOSPC, f"no space left on device while writing {path} "
                                          f"({free >> 20} MiB free); free some space and rerun with --resume") from exc


def atomic_write_file(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(temp_path)` (any library's save function), fsync, chmod 644, rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path))
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _fsync_path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by others
        os.replace(tmp, path)
        _fsync_path(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _raise_if_disk_full(path, exc)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (see the module docstring)."""
    return atomic_write_file(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    """Write rows as JSON Lines (`mixtune.jsonl.dumps_line` each), atomically; returns the path."""
    return atomic_write_text(path, "".join(dumps_line(row) for row in rows))


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Build a folder: yields an empty temp folder beside `target`; on success its files are fsync'd and it
    replaces `target` (the old one is removed after the swap); on failure it is removed and `target` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temp_prefix(target)))
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        _fsync_tree(tmp)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-old-{target.name}-{os.getpid()}-"))
            os.replace(target, old)  # onto an empty folder: allowed, and atomic
        os.replace(tmp, target)
        _fsync_path(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_disk_full(target, exc)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(root: str | Path) -> list[Path]:
    """Remove temp files/folders left under `root` (any depth) by writers that are no longer running; returns them."""
    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            match = _TEMP.match(name)
            if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
                path = Path(folder) / name
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                removed.append(path)
        dirs[:] = [d for d in dirs if not _TEMP.match(d)]
    return removed


# -------------------------------------------------------------------------------------------------------- lock
class RunLock:
    """Exclusive writer lock on a folder (`with RunLock(folder): ...`); re-entrant within one process."""

    _held: ClassVar[dict[str, int]] = {}

    def __init__(self, folder: str | Path, what: str = "run"):
        self.folder, self.what = Path(folder), what
        self.key = str(self.folder.resolve())
        self.fh = None

    def __enter__(self) -> Self:
        if RunLock._held.get(self.key):
            RunLock._held[self.key] += 1
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = (self.folder / LOCK_NAME).open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise RunLockedError(f"{self.folder}: another mixtune process (pid {holder}) is writing this {self.what} "
                                 f"folder; wait for it to finish or use another folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self.fh = fh
        RunLock._held[self.key] = 1
        return self

    def __exit__(self, *exc: object) -> None:
        RunLock._held[self.key] -= 1
        if RunLock._held[self.key] == 0 and self.fh is not None:
            del RunLock._held[self.key]
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


# ------------------------------------------------------------------------------------------------------ run folder
def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], check=False, capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def prepare_run_dir(recipe: Recipe, run_dir: str | Path | None = None, verb: str = "") -> Path:
    """Create the run folder and write `config.yaml` (resolved) and `meta.json` (version, git sha, time)."""
    run_dir = Path(run_dir) if run_dir else recipe.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_recipe(recipe))
    atomic_write_json(run_dir / "meta.json", {
        "mixtune_version": mixtune.__version__, "git_sha": git_sha(), "verb": verb,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    return run_dir


def is_main_process() -> bool:
    """Whether this process writes: rank 0 under torchrun / accelerate launch (RANK), or a lone process."""
    return int(os.environ.get("RANK", "0") or 0) == 0


class MetricsLog:
    """Appends one JSON object per line to `metrics.jsonl` (and to TensorBoard when asked).

    `resume_at`: the step a resumed run continues from; rows logged after it by the killed run are dropped first,
    so a resumed run never leaves duplicate step rows (TensorBoard events after it are purged too).
    `tensorboard_dir`: the events folder (default `<run_dir>/tensorboard`); `step_offset` is added to TensorBoard
    steps, so a run's later stages continue its x axis. `enabled`: False writes nothing (the ranks other than 0;
    None asks `is_main_process`)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = False, resume_at: int | None = None, *,
                 tensorboard_dir: str | Path | None = None, step_offset: int = 0, enabled: bool | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = is_main_process() if enabled is None else enabled
        self.step_offset = step_offset
        self._tb = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_at is not None and self.path.exists():
            self._truncate_after(resume_at)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_at is None else resume_at + step_offset + 1
            self._tb = SummaryWriter(str(tensorboard_dir or Path(run_dir) / "tensorboard"), purge_step=purge)

    def _truncate_after(self, step: int) -> None:
        rows = [row for _, row in iter_jsonl(self.path) if int(row.get("step", 0)) <= step]
        write_jsonl(self.path, rows)

    def log(self, step: int, **metrics: Any) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step + self.step_offset)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

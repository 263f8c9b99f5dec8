"""Inside the sandbox, before the program: Linux namespaces and the mount tree (a sibling of `_sandbox_child.py`).

`unshare_namespaces` enters new net, mount, pid, ipc and uts namespaces through libc (Python 3.11 has no
`os.unshare`), inside a user namespace when not root. `setup_mounts` then makes mounts private, and either builds the
minimal root (`minimal_root`: a tmpfs holding only the interpreter's import folders and the system library folders,
bound read-only, four device nodes, a private /proc and /tmp; pivot_root into it) or, where that is refused, re-mounts
the whole tree read-only with a private /proc and tmpfs /tmp. Each step is best effort and reported as an isolation
layer by the caller.
"""

import ctypes
import os
import platform
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 0x400, 0x800, 0x200000
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY, MNT_DETACH = 442, -100, 0x8000, 0x1, 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
PR_SET_PDEATHSIG, PR_SET_SECUREBITS, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 28, 24, 38
PR_SET_CHILD_SUBREAPER = 36
NAMESPACES = {"net": CLONE_NEWNET, "mount": CLONE_NEWNS, "pid": CLONE_NEWPID, "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS}
libc = ctypes.CDLL(None, use_errno=True)


def unshare_namespaces(want: bool) -> list[str]:
    """Enter new namespaces; returns the names entered ("user" when a user namespace was needed)."""
    if not want:
        return []
    all_flags = sum(NAMESPACES.values())
    if libc.unshare(all_flags) == 0:
        return list(NAMESPACES)
    if os.geteuid() != 0:
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(CLONE_NEWUSER | all_flags) == 0:
            # map only the caller's own uid/gid: "root" in here is the caller outside, nothing more
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            return ["user", *NAMESPACES]
    return [name for name, flag in NAMESPACES.items() if libc.unshare(flag) == 0]


def _mount(source, target, fstype, flags, data=None) -> bool:
    enc = (lambda s: s.encode() if s is not None else None)
    return libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) == 0


def _readonly_tree(top: str = "/") -> bool:
    """Make every mount at or below `top` read-only: one recursive mount_setattr(2) (Linux >= 5.12), else one
    remount per mount."""

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    if libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, top.encode(), AT_RECURSIVE, ctypes.byref(attr),
                     ctypes.sizeof(attr)) == 0:
        return True
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
            "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
    top_done = False
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            target = fields[4].encode().decode("unicode_escape")
            if not (target == top or target.startswith(top.rstrip("/") + "/")):
                continue
            # locked flags (nosuid, nodev, ...) must be repeated or the remount is refused
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY | sum(keep.get(o, 0) for o in fields[5].split(","))
            ok = _mount(None, target, None, flags)
            top_done = top_done or (ok and target == top)
    return top_done


def setup_mounts(cfg: dict, entered: list[str]) -> tuple[str, list[str]]:
    """Returns (working directory, isolation layers). Without a mount namespace the parent's directory is used."""
    layers: list[str] = []
    if "mount" not in entered or not _mount(None, "/", None, MS_REC | MS_PRIVATE):
        return cfg["workdir"], layers
    if cfg.get("minimal_root"):
        minimal = _minimal_root(cfg, "pid" in entered)
        if minimal is not None:
            if cfg["uid"] is not None:
                os.chown("/tmp/work", cfg["uid"], cfg["gid"])
            return "/tmp/work", minimal
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


def _exposed_folders(site_packages: bool) -> tuple[list[str], list[str]]:
    """(folders bound read-only into the minimal root, folders hidden below them): the import path (not the
    runner's own folder) and the system library folders that extension modules load their libraries from."""
    here = os.path.dirname(os.path.abspath(__file__))
    arch = getattr(sys.implementation, "_multiarch", "")
    wanted = [p for p in sys.path if p and os.path.abspath(p) != here]
    wanted += [f"/usr/lib/{arch}", f"/lib/{arch}", "/usr/lib64", "/lib64"] if arch else ["/usr/lib64", "/lib64"]
    folders: list[str] = []
    for path in sorted({os.path.realpath(p) for p in wanted if os.path.isdir(p)}):
        if not any(path == f or path.startswith(f + "/") for f in folders):
            folders.append(path)
    stdlib = os.path.dirname(os.path.realpath(os.__file__))
    hidden = [] if site_packages else [p for p in (f"{stdlib}/site-packages", f"{stdlib}/dist-packages")
                                       if os.path.isdir(p)]
    return folders, hidden


def _minimal_root(cfg: dict, pid_ns: bool) -> list[str] | None:
    """Build a new root on a tmpfs at /tmp and pivot into it; the isolation layers, or None (nothing changed
    that matters: the old root stays) when the kernel refuses a step."""
    new = "/tmp"
    if SYS_PIVOT_ROOT is None or not _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755"):
        return None
    try:
        folders, hidden = _exposed_folders(cfg["limits"]["site_packages"])
        for path in folders:
            os.makedirs(new + path, 0o755, exist_ok=True)
            if not _mount(path, new + path, None, MS_BIND | MS_REC):
                raise OSError(f"bind {path}")
        for path in hidden:
            if not _mount("tmpfs", new + path, "tmpfs", MS_NOSUID | MS_NODEV, "size=4k,mode=555"):
                raise OSError(f"hide {path}")
        for link in ("/lib", "/lib64", "/lib32", "/libx32"):  # merged-/usr systems: /lib -> usr/lib
            if os.path.islink(link) and not os.path.exists(new + link):
                os.symlink(os.readlink(link), new + link)
        devices = [d for d in DEVICES if os.path.exists(d)] + ["/etc/ld.so.cache"] * os.path.isfile("/etc/ld.so.cache")
        for path in devices + ["/tmp", "/proc", "/.old"]:
            os.makedirs(os.path.dirname(new + path), 0o755, exist_ok=True)
            if path in ("/tmp", "/proc", "/.old"):
                os.mkdir(new + path, 0o755)
            else:
                open(new + path, "w").close()
        if not _readonly_tree(new):
            raise OSError("read-only")
        for path in devices:
            if not _mount(path, new + path, None, MS_BIND):
                raise OSError(f"bind {path}")
        tmpfs = f"size={cfg['tmpfs_mb']}m,mode=1777"
        if not _mount("tmpfs", new + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs):
            raise OSError("tmpfs")
        os.mkdir(new + "/tmp/work", 0o700)
        proc = pid_ns and _mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        if libc.syscall(SYS_PIVOT_ROOT, new.encode(), (new + "/.old").encode()) != 0:
            raise OSError("pivot_root")
    except OSError:
        libc.umount2(new.encode(), MNT_DETACH)
        return None
    os.chdir("/")
    libc.umount2(b"/.old", MNT_DETACH)
    return ["minimal-root", "readonly-root", "private-tmp"] + (["private-proc"] if proc else [])


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

"""The sandbox contains what a model-generated program may do (docs/sandbox.md)."""

import glob
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from mixtune.evaluate.sandbox import Limits, isolation_available, run_many, run_program

FAST = Limits(wall_s=5.0, cpu_s=5.0)
AVAILABLE = isolation_available()


def _group_members(pgid: int) -> list[int]:
    """Processes still in the given process group (from /proc)."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                members.append(int(name))
    return members


@pytest.mark.parametrize("fork_server", [True, False])
def test_pass_fail_and_output(fork_server):
    limits = Limits(wall_s=5.0, cpu_s=5.0, fork_server=fork_server)
    ok = run_program("print('hello')\n", limits)
    assert ok.status == "passed" and ok.returncode == 0 and ok.stdout_tail == "hello\n"
    bad = run_program("assert 1 + 1 == 3\n", limits)
    assert bad.status == "failed" and "AssertionError" in bad.detail and "AssertionError" in bad.stderr_tail
    syntax = run_program("def f(:\n", limits)
    assert syntax.status == "failed" and "SyntaxError" in syntax.detail


@pytest.mark.parametrize("exit_code", ["import sys; sys.exit(0)", "exit(0)", "quit()", "import os; os._exit(0)",
                                       "raise SystemExit", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
@pytest.mark.parametrize("fork_server", [True, False])
def test_exit_before_the_tests_is_a_failure(exit_code, fork_server):
    program = f"def check():\n    assert False\n{exit_code}\ncheck()\n"
    result = run_program(program, Limits(wall_s=5.0, fork_server=fork_server))
    assert result.status == "failed", result


def test_forged_verdict_without_the_token_is_a_failure():
    # writes a plausible "passed" line everywhere it can, then leaves before the (failing) tests
    program = ("import os, json\nline = json.dumps({'token': '0' * 32, 'stage': 'done', 'outcome': 'passed'})\n"
               "for fd in range(20):\n    try:\n        os.write(fd, (line + '\\n').encode())\n"
               "    except OSError:\n        pass\nos._exit(0)\nassert False\n")
    assert run_program(program, FAST).status == "failed"


def test_callers_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("MIXTUNE_TEST_SECRET", "hunter2")
    program = ("import os\nassert 'MIXTUNE_TEST_SECRET' not in os.environ, 'leaked'\n"
               "try:\n    assert b'hunter2' not in open('/proc/self/environ', 'rb').read()\n"
               "except PermissionError:\n    pass\n"
               "print(sorted(os.environ))\n")
    result = run_program(program, FAST)
    assert result.status == "passed", result
    assert "MIXTUNE_TEST_SECRET" not in result.stdout_tail


def test_writes_outside_the_workdir_do_not_land(tmp_path):
    os.chmod(tmp_path, 0o777)  # even a world-writable host folder must stay untouched
    targets = [tmp_path / "escaped.txt", "/tmp/mixtune-sandbox-escape-test.txt"]
    body = "".join(f"try:\n    open({str(t)!r}, 'w').write('x')\nexcept OSError:\n    pass\n" for t in targets)
    program = body + "open('inside.txt', 'w').write('fine')\nassert open('inside.txt').read() == 'fine'\n"
    result = run_program(program, FAST)
    assert result.status == "passed", result
    assert not any(os.path.exists(t) for t in targets)


def test_loopback_connection_fails():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(3.0)
    port = listener.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(listener)))
    thread.start()
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n"
    result = run_program(program, FAST)
    thread.join()
    listener.close()
    if "namespace-net" not in AVAILABLE:
        pytest.skip("no network namespace on this machine: docs/sandbox.md says the network is then NOT isolated")
    assert result.status == "failed" and accepted == [None], result


def _accept(listener: socket.socket):
    try:
        return listener.accept()[1]
    except OSError:
        return None


def test_fork_bomb_is_contained():
    if os.geteuid() == 0 and not any(layer.startswith("uid-") for layer in AVAILABLE):
        pytest.skip("root without a dropped uid: RLIMIT_NPROC does not apply (documented)")
    program = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    start = time.monotonic()
    result = run_program(program, Limits(wall_s=3.0, cpu_s=3.0, nproc=16))
    assert result.status in ("timed out", "failed") and time.monotonic() - start < 10
    assert _group_members(result.pgid) == []
    assert run_program("print(1)\n", FAST).status == "passed"  # the machine and the sandbox still work


def test_memory_bomb_is_contained():
    result = run_program("blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))\n",
                         Limits(wall_s=5.0, memory_mb=512))
    assert result.status == "failed" and "MemoryError" in result.detail, result


def test_infinite_loop_times_out_and_leaves_nothing():
    # the escaping child names itself (prctl PR_SET_NAME) so that other users' sandboxes on a shared machine
    # cannot be mistaken for it
    mark = f"mt{os.getpid() % 10**6}esc"
    program = ("import ctypes, os\nif os.fork() == 0:\n    os.setsid()\n"
               f"    ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b'{mark}'), 0, 0, 0)\n"
               "    while True:\n        pass\nwhile True:\n    pass\n")
    start = time.monotonic()
    result = run_program(program, Limits(wall_s=1.0, cpu_s=10.0))
    assert result.status == "timed out" and time.monotonic() - start < 5
    assert _group_members(result.pgid) == []
    if "namespace-pid" in AVAILABLE:  # the setsid child escaped the group but died with the pid namespace
        time.sleep(0.2)
        assert not any(_named(int(p), mark) for p in os.listdir("/proc") if p.isdigit())


def _named(pid: int, name: str) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == name
    except OSError:
        return False


def test_cpu_limit():
    result = run_program("while True:\n    pass\n", Limits(wall_s=10.0, cpu_s=1.0))
    assert result.status == "timed out" and result.wall_s < 5


def test_killing_the_parent_does_not_reach_the_caller():
    program = (f"import os, signal\nfor pid in (os.getppid(), {os.getpid()}, 1):\n    try:\n"
               "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n")
    run_program(program, FAST)
    time.sleep(0.2)
    assert run_program("print('still here')\n", FAST).stdout_tail == "still here\n"


def test_huge_output_is_truncated():
    program = "import sys\nfor _ in range(400):\n    sys.stdout.write('x' * 100000 + '\\n')\nprint('END')\n"
    result = run_program(program, Limits(wall_s=20.0, output_bytes=1000))
    assert result.status == "passed", result
    assert result.stdout_tail.endswith("END\n") and len(result.stdout_tail) < 1100
    assert "truncated" in result.stdout_tail and "truncated" in result.detail


def test_required_isolation_missing_is_an_error():
    result = run_program("print(1)\n", Limits(wall_s=5.0, require=("namespace-does-not-exist",)))
    assert result.status == "error" and "required isolation" in result.detail


def test_without_namespaces_still_limited_and_clean(monkeypatch):
    monkeypatch.setenv("MIXTUNE_TEST_SECRET", "hunter2")
    limits = Limits(wall_s=5.0, namespaces=False)
    result = run_program("import os\nassert 'MIXTUNE_TEST_SECRET' not in os.environ\nprint(os.getcwd())\n", limits)
    assert result.status == "passed", result
    assert not any(layer.startswith("namespace") for layer in result.isolation) and "rlimits" in result.isolation


def test_isolation_layers_reported():
    assert {"session", "clean-env", "workdir", "rlimits"} <= set(AVAILABLE)
    if os.geteuid() == 0:
        assert any(layer.startswith("uid-") for layer in AVAILABLE)


def test_run_many_keeps_order():
    results = run_many([f"print({i})\n" for i in range(12)] + ["assert False\n"], FAST, workers=2)
    assert [r.stdout_tail for r in results[:12]] == [f"{i}\n" for i in range(12)]
    assert results[-1].status == "failed"


def test_minimal_root_hides_the_host_tree():
    if "namespace-mount" not in AVAILABLE:
        pytest.skip("no mount namespace here: docs/sandbox.md says the host tree is then visible")
    here = os.path.abspath(__file__)
    program = (f"import os\nassert not os.path.exists({here!r})\nassert not os.path.exists('/work')\n"
               "import ssl, sqlite3, decimal, ctypes, lzma, bz2, zlib, hashlib, json, unicodedata, datetime\n"
               "assert sorted(os.listdir('/tmp')) == ['work'] and os.getcwd() == '/tmp/work'\n"
               "open('/dev/null', 'w').write('x')\nassert len(os.urandom(4)) == 4\n")
    result = run_program(program, FAST)
    assert result.status == "passed", result
    # the documented fallback shows the host tree — all of it but /tmp, which is private in every mode, so a checkout
    # under /tmp (a fresh clone in mktemp -d) cannot be the file that proves it: then the fallback only has to run
    under_tmp = here.startswith(os.path.join(tempfile.gettempdir(), ""))
    probe = "pass\n" if under_tmp else f"assert open({here!r}).read(1) == '\"'\n"
    shown = run_program(probe, Limits(wall_s=5.0, minimal_root=False))
    assert shown.status == "passed" and "minimal-root" not in shown.isolation, shown


def _processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions `text` (a runner's cfg names its program's folder)."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/cmdline") as cmd, open(f"/proc/{name}/stat") as stat:
                alive = stat.read().rsplit(")", 1)[1].split()[0] != "Z"
                if alive and text in cmd.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


def _scorer(tmp_path, code: str) -> subprocess.Popen:
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src"))
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(tmp_path),
                                                                "PYTHONPATH": src})


@pytest.mark.parametrize("fork_server", [True, False])
def test_killed_scorer_leaves_no_temp_folder(tmp_path, fork_server):
    os.chmod(tmp_path, 0o711)
    code = ("from mixtune.evaluate.sandbox import Limits, run_program\n"
            f"run_program('import time\\ntime.sleep(60)\\n', Limits(wall_s=120, cpu_s=120, fork_server={fork_server}))\n")
    proc = _scorer(tmp_path, code)
    deadline = time.monotonic() + 30
    # killed once the program's runner exists: the fork server and the child it forked (their command line names the
    # temp root), or the runner the scorer started. program.py is written before either, and a scorer killed in that
    # moment leaves its folder to the next scorer's sweep (the end of this test)
    program = str(tmp_path / "mixtune-sandbox-*" / "p-*" / "program.py")
    runners = 2 if fork_server else 1

    def started() -> bool:
        return bool(glob.glob(program)) and len(_processes_mentioning(str(tmp_path))) >= runners

    while not started() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert started(), "the scorer never started its program"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10  # the runner dies with its parent (the fork server or the scorer's thread)
    while _processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_mentioning(str(tmp_path)) == []
    if fork_server:  # the fork server sees its evaluator die and removes the folder at once
        deadline = time.monotonic() + 10
        while os.listdir(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.listdir(tmp_path) == []
    nxt = _scorer(tmp_path, "from mixtune.evaluate.sandbox import run_program\nassert run_program('pass').passed\n")
    assert nxt.wait(timeout=60) == 0
    assert os.listdir(tmp_path) == []  # the dead scorer's folder was swept, the live one removed its own

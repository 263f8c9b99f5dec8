"""Run a data verb on datatrove's executors: map over blocks of records in parallel tasks, then one reduce task.

Every verb has the same two stages, each a datatrove `PipelineStep` run by a datatrove executor
(`LocalPipelineExecutor` by default; `SlurmPipelineExecutor` or `RayPipelineExecutor` when asked), so a corpus of any
size goes through the same code:
1. map (`--tasks N`): task r reads the input and handles the contiguous block r of its records (`corpus_io.block`),
   computing per-record features (MinHash signatures, benchmark overlaps, filter verdicts); it saves them in
   `WORK/map/<rank>.npz` (arrays, no pickle) and `WORK/map/<rank>.json`;
2. reduce (1 task, after the map tasks): reads all parts in rank order (= input order), decides what is dropped,
   flagged or edited, and writes OUTPUT, `OUTPUT.removed.jsonl` and `OUTPUT.summary.json` (`corpus_io`).

The verb functions are named by "module:function" strings, so a step pickles as plain data (datatrove's local
executor starts its workers with forkserver) and the evaluate-side verbs (decontaminate, synth) keep the import rule:
data never imports evaluate. A map function is `fn(corpus, indices: range, options) -> dict` (numpy arrays and JSON
values); a reduce function is `fn(corpus, parts: list[dict], options) -> (decisions, summary)`.

The local and Ray executors return when the work is done, and the summary is printed as the last stdout line. A Slurm
run returns once its jobs are queued; the reduce job writes the summary file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from mixtune.data.corpus_io import Corpus, CorpusError, read_corpus, side_paths
from mixtune.runs import atomic_write_json

EXECUTORS = ("local", "slurm", "ray")


def _step_classes() -> tuple[type, type]:
    """(MapStep, ReduceStep), imported on use so that importing this module does not import datatrove."""
    from mixtune.data.pipeline_steps import MapStep, ReduceStep

    return MapStep, ReduceStep


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """INPUT, --out and the reading / executor options every data verb takes."""
    parser.add_argument("input", help="input records: .jsonl / .json (list or JSONL) / .parquet, .gz allowed")
    parser.add_argument("--out", required=True, help="output file (same kind as its suffix: .jsonl, .json, .parquet)")
    parser.add_argument("--format", default="auto", help="record format (auto, text, alpaca, sharegpt, messages, "
                        "gsm8k, humaneval, preference) [default auto]")
    parser.add_argument("--text-field", default="text", help="field of a plain document's text [default text]")
    parser.add_argument("--invalid", default="error", choices=("error", "keep", "drop"),
                        help="unreadable records: error (exit 2, default), keep (pass through unexamined) or drop; "
                        "kept and dropped ones are listed in OUTPUT.removed.jsonl")
    parser.add_argument("--executor", default="local", choices=EXECUTORS,
                        help="datatrove executor: local (default), slurm or ray")
    parser.add_argument("--tasks", type=int, default=1, help="map tasks (blocks of records) [default 1]")
    parser.add_argument("--workers", type=int, default=1, help="map tasks run at once (local) [default 1]")
    parser.add_argument("--work-dir", default=None, help="folder for the stages' parts and datatrove logs "
                        "[default OUTPUT.work; must be shared by the nodes on slurm/ray]")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder after a local run")
    parser.add_argument("--slurm-partition", default=None, help="slurm partition (executor slurm)")
    parser.add_argument("--slurm-time", default="2:00:00", help="slurm time limit per task [default 2:00:00]")
    parser.add_argument("--cpus-per-task", type=int, default=1, help="CPUs per task (slurm, ray) [default 1]")


def build_executors(args: argparse.Namespace, map_step: Any, reduce_step: Any, work: Path) -> Any:
    """The reduce executor, depending on the map executor (datatrove runs the dependency first)."""
    logs = work / "logs"
    if args.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        first = LocalPipelineExecutor([map_step], tasks=args.tasks, workers=min(args.workers, args.tasks),
                                      logging_dir=str(logs / "map"), skip_completed=False)
        return LocalPipelineExecutor([reduce_step], tasks=1, workers=1, logging_dir=str(logs / "reduce"),
                                     depends=first, skip_completed=False)
    if args.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        if not args.slurm_partition:
            raise CorpusError("--executor slurm needs --slurm-partition")
        common = {"time": args.slurm_time, "partition": args.slurm_partition, "cpus_per_task": args.cpus_per_task,
                      "job_name": "mixtune-data"}
        first = SlurmPipelineExecutor([map_step], tasks=args.tasks, logging_dir=str(logs / "map"), **common)
        return SlurmPipelineExecutor([reduce_step], tasks=1, logging_dir=str(logs / "reduce"), depends=first,
                                     **common)
    from datatrove.executor.ray import RayPipelineExecutor

    first = RayPipelineExecutor([map_step], tasks=args.tasks, workers=args.workers, logging_dir=str(logs / "map"),
                                cpus_per_task=args.cpus_per_task)
    return RayPipelineExecutor([reduce_step], tasks=1, logging_dir=str(logs / "reduce"), depends=first,
                               cpus_per_task=args.cpus_per_task)


def run_verb(args: argparse.Namespace, verb: str, map_fn: str, reduce_fn: str, options: dict[str, Any],
             corpus: Corpus | None = None) -> int:
    """Check the input, run map + reduce on the chosen executor, print the summary as the last stdout line.

    Returns the exit code (2 for a user error, with one line on stderr).
    """
    started = time.perf_counter()
    try:
        if args.tasks < 1 or args.workers < 1:
            raise CorpusError("--tasks and --workers must be >= 1")
        if Path(args.out).resolve() == Path(args.input).resolve():
            raise CorpusError(f"{args.out}: OUTPUT must differ from INPUT")
        corpus = corpus or read_corpus(args.input, args.format, args.text_field, args.invalid)
        if args.tasks > len(corpus):
            raise CorpusError(f"--tasks {args.tasks} is more than the {len(corpus)} records (one block per task)")
        work = Path(args.work_dir) if args.work_dir else Path(str(args.out) + ".work")
        if work.exists() and args.executor == "local":
            shutil.rmtree(work)
        map_cls, reduce_cls = _step_classes()
        common = {"input_path": str(args.input), "fmt": corpus.format, "text_field": args.text_field,
                      "work_dir": str(work), "options": {**options, "invalid": args.invalid}}
        map_step = map_cls(fn=map_fn, **common)
        reduce_step = reduce_cls(fn=reduce_fn, out=str(args.out), n_parts=args.tasks, verb=verb, **common)
        executor = build_executors(args, map_step, reduce_step, work)
    except CorpusError as e:
        print(f"mixtune data {verb}: {e}", file=sys.stderr)
        return 2
    executor.run()
    summary_path, _ = side_paths(args.out)
    if args.executor == "slurm":
        print(json.dumps({"verb": verb, "submitted": True, "summary_file": str(summary_path)}))
        return 0
    summary = json.loads(summary_path.read_text())
    summary["seconds"] = round(time.perf_counter() - started, 3)
    atomic_write_json(summary_path, summary)
    if args.executor == "local" and not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary))
    return 0



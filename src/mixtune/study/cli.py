"""`mixtune study -c recipe.yaml`: run a strategy × data-fraction × seed grid from one shared base model.

The base is any local checkpoint (`study.base`) or the mini-lab base (world, tokenizer, pre-training; prepared once
and cached). Before the study folder exists, what every run would check is checked once (`study.base.check_study`:
context length, tokenizer and template, judge, data sources), so a bad study fails in one line. The base is scored
once on the study's benchmarks (run `base`, stage `base`). Independent runs execute in parallel, one torch thread
each (on 2 cores two single-thread runs beat one two-thread run), under one overall progress bar with an ETA. Runs
that share a stage prefix train it once (a shared stage cache with a file lock per prefix). Resumable: a finished run
is never redone, an interrupted one continues from its checkpoints. Results: `runs/<study>/results.sqlite`; then the
report.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from mixtune.config import Recipe, load_recipe
from mixtune.errors import UserError
from mixtune.results import DB_NAME, ResultsDB
from mixtune.runs import atomic_write_json, prepare_run_dir
from mixtune.study.base import BASE_RUN, base_run_recipe, check_study, study_base
from mixtune.study.grid import GridRun, expand_grid

REFRESH_S = 15.0
"""Seconds between redraws of the study's progress bar (elapsed time, ETA) while no run finishes."""


def _run_one(run: GridRun, study_dir: str, threads: int) -> tuple[str, float, str | None]:
    """Worker: train and evaluate one run (resuming it if it was interrupted)."""
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["TQDM_MININTERVAL"] = "30"  # progress lines in train.log, not thousands of redraws
    import torch

    from mixtune.train.run import train

    torch.set_num_threads(threads)
    recipe = run.recipe.model_copy(update={"train": run.recipe.train.model_copy(update={"threads": threads})})
    study_dir = Path(study_dir)
    log_path = Path(recipe.run_dir) / "train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ResultsDB(study_dir / DB_NAME) as db:
        db.set_status(run.run_id, "running")
    try:  # the run's own output (progress, stage logs) goes to its train.log, not the study's terminal
        with log_path.open("a") as fh, redirect_stdout(fh), redirect_stderr(fh):
            if run.setup == BASE_RUN:
                summary = {"scores": {BASE_RUN: score_base(recipe, study_dir)}}
            else:
                summary = train(recipe, resume=True, stage_cache=study_dir / "stage-cache",
                                db_path=study_dir / DB_NAME)
        status, error = "finished", _failed_benchmarks(summary)
    except Exception:  # noqa: BLE001 -- a failed run is recorded and reported; the others go on
        status, error = "failed", traceback.format_exc()
    with ResultsDB(study_dir / DB_NAME) as db:
        db.set_status(run.run_id, status)
    return run.run_id, time.perf_counter() - t0, error


def score_base(recipe: Recipe, study_dir: Path) -> dict:
    """Score the base model on the study's benchmarks: run `base`, stage `base` (index 0, no training)."""
    from mixtune.evaluate.runner import evaluate_model
    from mixtune.model.load import load_model_and_tokenizer, prepare_tokenizer
    from mixtune.train.engine import pick_device

    tokenizer = prepare_tokenizer(recipe.model, recipe.data.template)
    model, tokenizer = load_model_and_tokenizer(recipe.model, tokenizer=tokenizer)
    with ResultsDB(study_dir / DB_NAME) as db:
        db.add_stage(BASE_RUN, 0, BASE_RUN, n_examples=0, n_tokens=0, steps=0, wall_s=0.0)
    return evaluate_model(model.to(pick_device()), tokenizer, recipe, recipe.run_dir, stage=BASE_RUN,
                          db_path=study_dir / DB_NAME)


def _failed_benchmarks(summary: dict) -> str | None:
    """A note naming the benchmarks that have no valid score (status failed), or None."""
    failed = [f"{stage}/{name}" for stage, scores in summary.get("scores", {}).items()
              for name, record in (scores or {}).items() if record.get("status") == "failed"]
    return f"no valid score for {', '.join(failed)}" if failed else None


class StudyConfigError(UserError, ValueError):
    """The study folder holds runs made from a different configuration."""


def _identity(config: dict) -> dict:
    """What makes a run the same run: its recipe without the study grid around it."""
    return {k: v for k, v in config.items() if k != "study"}


def register_runs(db: ResultsDB, study: Recipe, runs: list[GridRun]) -> None:
    """Record the grid's runs as pending; a run id already there must come from the same configuration, or a
    resumed study would silently mix results (or resume checkpoints) of two different recipes."""
    known = {r["run_id"]: r for r in db.runs(study.name)}
    for run in runs:
        config = json.loads(run.recipe.model_dump_json())
        if run.run_id in known:
            old = known[run.run_id]
            if old["config_json"] and _identity(json.loads(old["config_json"])) != _identity(config):
                raise StudyConfigError(
                    f"study {study.name}: run {run.run_id} in {study.run_dir} was made from a different recipe; "
                    f"use another study name (name=...) or delete {study.run_dir}")
            if old["status"] == "finished":
                continue
        db.upsert_run(run.run_id, study=study.name, strategy=run.label, fraction=run.fraction, seed=run.seed,
                      setup=run.setup, adapter=run.recipe.adapter.type, config_json=json.dumps(config),
                      status="pending")


def study_runs(study: Recipe, study_dir: Path, base: Path) -> list[GridRun]:
    """The grid's runs, preceded by the base-scoring run when the study has benchmarks."""
    runs = expand_grid(study, study_dir, base)
    if study.eval.benchmarks:
        runs.insert(0, GridRun(run_id=BASE_RUN, label=BASE_RUN, fraction=None, seed=study.seed, setup=BASE_RUN,
                               recipe=base_run_recipe(study, study_dir, base)))
    return runs


def run_study(study: Recipe, workers: int | None = None, log=print) -> Path:
    """Prepare (or find) the base, check the study, run every unfinished run of the grid, write the study meta;
    returns the study folder. Runs that fail, or finish with a benchmark left without a valid score, are listed
    in study.json (`failed`) and raise a StudyRunError after the others have finished."""
    t0 = time.perf_counter()
    base = study_base(study, log=log)
    check_study(study, base, log=log)
    study_dir = prepare_run_dir(study, verb="study")
    runs = study_runs(study, study_dir, base)
    with ResultsDB(study_dir / DB_NAME) as db:
        register_runs(db, study, runs)
        done = db.finished_runs(study.name)
    todo = [r for r in runs if r.run_id not in done]
    workers = min(workers or study.study.workers, max(1, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    log(f"[study] {study.name}: {len(runs)} runs ({len(runs) - len(todo)} already finished), "
        f"{workers} workers x {threads} thread(s), protocol {study.study.protocol}")
    failures = _run_all(todo, study_dir, workers, threads, log) if todo else []
    atomic_write_json(study_dir / "study.json", {
        "study": study.name, "protocol": study.study.protocol, "fractions": study.study.fractions,
        "seeds": study.study.seeds, "runs": [r.run_id for r in runs], "base": str(base),
        "benchmarks": study.eval.benchmarks, "wall_s_last_invocation": round(time.perf_counter() - t0, 1),
        "failed": failures,
    })
    if failures:
        raise StudyRunError(f"{len(failures)} run(s) failed or have no valid score: {', '.join(failures)}; "
                            f"see their train.log in {study_dir}")
    return study_dir


def _run_all(todo: list[GridRun], study_dir: Path, workers: int, threads: int, log) -> list[str]:
    """Run `todo` in a spawn pool under one overall progress bar (runs done / total, elapsed, ETA)."""
    from tqdm import tqdm

    failures = []
    ctx = mp.get_context("spawn")  # fork after torch's thread pools started is unsafe
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool, \
            tqdm(total=len(todo), desc="study", unit="run", leave=True, dynamic_ncols=True) as bar:
        pending = {pool.submit(_run_one, run, str(study_dir), threads) for run in todo}
        n = 0
        while pending:
            done, pending = wait(pending, timeout=REFRESH_S, return_when=FIRST_COMPLETED)
            bar.refresh()  # elapsed time and ETA move on while long runs train
            for fut in done:
                n += 1
                run_id, wall, error = fut.result()
                bar.update(1)
                emit = bar.write if log is print else log  # lines above the bar, which stays at the bottom
                emit(f"[study] {n}/{len(todo)} {run_id}: {'failed' if error else 'done'} in {wall:.0f} s")
                if error:
                    failures.append(run_id)
                    emit(error)
    return failures


class StudyRunError(RuntimeError):
    """Some runs of a study failed (their tracebacks are in their train.log and were printed)."""


def main(argv: list[str]) -> int:
    """Exit 0 when every run finished with valid scores, 1 when some failed (the report is still written), 2 for a
    user error (one line, `mixtune.cli`)."""
    import sys

    from mixtune.cliutil import recipe_parser

    parser = recipe_parser("study", __doc__.split("\n")[0], sections=["study", "model", "data", "train", "eval",
                                                                       "adapter"])
    parser.add_argument("--workers", type=int, default=None, help="parallel runs (default: study.workers)")
    parser.add_argument("--no-report", action="store_true", help="skip the report at the end")
    args: argparse.Namespace = parser.parse_args(argv)
    study = load_recipe(args.config, args.overrides)
    failed = None
    try:
        study_dir = run_study(study, workers=args.workers)
    except StudyRunError as e:
        study_dir, failed = study.run_dir, str(e)
    if not args.no_report:
        from mixtune.study.report_cli import main as report_main

        report_main([str(study_dir)])
    if failed:
        print(f"mixtune study: {failed}", file=sys.stderr)
        return 1
    return 0

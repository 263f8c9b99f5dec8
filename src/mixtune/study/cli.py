"""`mixtune study -c recipe.yaml`: run a strategy × data-fraction × seed grid from one shared base model.

The base is any local checkpoint (`study.base`) or the mini-lab base (world, tokenizer, pre-training; prepared once
and cached; one per `study.base_seeds`). Before the study folder exists, what every run would check is checked once
(`study.base.check_study`: context length, tokenizer and template, judge, data sources), so a bad study fails in one
line; then the held-out check (`study.contamination`). Each base is scored once on the study's benchmarks (run
`base`, stage `base`). Independent runs execute in parallel, one torch thread each (on 2 cores two single-thread
runs beat one two-thread run), under one overall progress bar with an ETA. Runs that share a stage prefix train it
once (a shared stage cache with a file lock per prefix). Resumable: a finished run is never redone, an interrupted
one continues from its checkpoints; one `mixtune study` at a time per folder. Results:
`runs/<study>/results.sqlite`; then the report. `study.executor: ray` runs the same worker functions
(study/workers.py) as Ray tasks (study/ray_exec.py). With train.tensorboard every run logs to
`<study>/tensorboard/<run_id>`: `tensorboard --logdir runs/<study>/tensorboard`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from mixtune.config import Recipe, load_recipe
from mixtune.errors import UserError
from mixtune.results import DB_NAME, ResultsDB
from mixtune.runs import RunLock, atomic_write_json, prepare_run_dir
from mixtune.study.base import BASE_RUN, base_run_recipe, check_study, prepare_base, study_base
from mixtune.study.contamination import check_contamination
from mixtune.study.grid import GridRun, expand_grid
from mixtune.study.workers import die_with_parent, run_one

REFRESH_S = 15.0
"""Seconds between redraws of the study's progress bar (elapsed time, ETA) while no run finishes."""


def _execute(study: Recipe, todo: list[GridRun], study_dir: Path, workers: int, threads: int,
             log) -> Iterator[tuple[str, float, str | None]]:
    """(run_id, seconds, error) of each run of `todo` as it ends, from the local pool or Ray."""
    if not todo:
        return
    if study.study.executor == "ray":
        from mixtune.study.ray_exec import run_on_ray

        yield from run_on_ray(study.study, todo, study_dir, log)
        return
    ctx = mp.get_context("spawn")  # fork after torch's thread pools started is unsafe
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        pending = {pool.submit(run_one, run, str(study_dir), threads) for run in todo}
        while pending:
            done, pending = wait(pending, timeout=REFRESH_S, return_when=FIRST_COMPLETED)
            if not done:
                yield None  # nothing finished: the caller redraws its progress bar (elapsed time, ETA)
            for fut in done:
                yield fut.result()


class StudyConfigError(UserError, ValueError):
    """The study folder holds runs made from a different configuration."""


def _identity(config: dict) -> dict:
    """What makes a run the same run: its recipe without the study grid around it."""
    return {k: v for k, v in config.items() if k != "study"}


def _as_today(config: dict) -> dict | None:
    """A stored run's recipe read with today's schema (fields added since it was stored take their defaults, as the
    code that trained it behaved), or None when today's schema cannot read it (a field removed or renamed)."""
    try:
        return json.loads(Recipe.model_validate(config).model_dump_json())
    except ValueError:
        return None


def register_runs(db: ResultsDB, study: Recipe, runs: list[GridRun]) -> None:
    """Record the grid's runs as pending; a run id already there must come from the same configuration, or a
    resumed study would silently mix results (or resume checkpoints) of two different recipes."""
    known = {r["run_id"]: r for r in db.runs(study.name)}
    for run in runs:
        config = json.loads(run.recipe.model_dump_json())
        if run.run_id in known:
            old = known[run.run_id]
            stored = _as_today(json.loads(old["config_json"])) if old["config_json"] else config
            if stored is None or _identity(stored) != _identity(config):
                raise StudyConfigError(
                    f"study {study.name}: run {run.run_id} in {study.run_dir} was made from a different recipe; "
                    f"use another study name (name=...) or delete {study.run_dir}")
            if old["status"] == "finished":
                continue
        db.upsert_run(run.run_id, study=study.name, strategy=run.label, fraction=run.fraction, seed=run.seed,
                      setup=run.setup, adapter=run.recipe.adapter.type, config_json=json.dumps(config),
                      status="pending", protocol=run.protocol, base=run.base)


def prepare_bases(study: Recipe, log=print) -> dict[str, dict]:
    """The study's base models: `study.base` (a checkpoint) as it is; else the mini-lab base recipe as it is, or one
    pre-training per `study.base_seeds` (same world and tokenizer, `train.seed` = the base seed, folder
    `<base name>-b<seed>`). name -> {path, eval_loss, seed}."""
    if study.study.base is not None:  # any local checkpoint (or a run folder's final/) as it is
        if study.study.base_seeds:
            raise StudyConfigError("study.base_seeds pre-trains mini-lab bases; with study.base (a checkpoint) "
                                   "leave it empty")
        return {"base": {"path": str(study_base(study, log=log)), "eval_loss": None, "seed": None}}
    recipe = load_recipe(study.study.base_recipe_path())
    variants = [(recipe.name, recipe)]
    if study.study.base_seeds:  # the recipe's own seed keeps its folder (the demo's base is not trained twice)
        variants = [(f"{recipe.name}-b{s}", recipe if s == recipe.train.seed else recipe.model_copy(update={
            "name": f"{recipe.name}-b{s}", "out_dir": f"{recipe.run_dir}-b{s}",
            "train": recipe.train.model_copy(update={"seed": s})})) for s in study.study.base_seeds]
    bases = {}
    for name, variant in variants:
        final = prepare_base(variant, log=log)
        bases[name] = {"path": str(final), "eval_loss": base_eval_loss(variant.run_dir), "seed": variant.train.seed}
        log(f"[study] base {name}: eval loss {bases[name]['eval_loss']}")
    return bases


def base_eval_loss(run_dir: Path) -> float | None:
    """The last eval loss a pre-training run logged (its final held-out loss)."""
    from mixtune.jsonl import iter_jsonl

    path = Path(run_dir) / "metrics.jsonl"
    losses = [row["eval_loss"] for _, row in iter_jsonl(path) if row.get("eval_loss") is not None] \
        if path.exists() else []
    return losses[-1] if losses else None


def study_runs(study: Recipe, study_dir: Path, bases: dict[str, dict]) -> list[GridRun]:
    """The grid's runs, preceded by one base-scoring run per base when the study has benchmarks (run id `base`, or
    `base-b<seed>` with several bases)."""
    runs = expand_grid(study, study_dir, {name: Path(b["path"]) for name, b in bases.items()})
    if study.eval.benchmarks:
        for k, (name, b) in enumerate(reversed(bases.items())):
            # tagged as the grid's runs are (expand_grid): with study.base_seeds, even one base is `base-b<seed>`
            run_id = f"{BASE_RUN}-{name.rsplit('-', 1)[-1]}" if study.study.base_seeds else BASE_RUN
            runs.insert(0, GridRun(run_id=run_id, label=BASE_RUN, fraction=None, seed=study.seed, setup=BASE_RUN,
                                   recipe=base_run_recipe(study, study_dir, Path(b["path"]), run_id),
                                   protocol="", base=name))
    return runs


def run_study(study: Recipe, workers: int | None = None, log=print) -> Path:
    """Prepare (or find) the bases, check the study, run every unfinished run of the grid, write the study meta;
    returns the study folder. One `mixtune study` at a time per study folder (a second is refused, naming the first
    one's pid). Runs that fail, or finish with a benchmark left without a valid score, are listed in study.json
    (`failed`) and raise a StudyRunError after the others have finished."""
    t0 = time.perf_counter()
    from mixtune.train.levers import check_compiler

    check_compiler(study.train)  # before the bases' minutes of pre-training (a stage's own override: at its run's start)
    bases = prepare_bases(study, log=log)  # before the lock: a study that cannot start leaves no folder
    for b in bases.values():
        check_study(study, Path(b["path"]), log=log)
    with RunLock(study.run_dir, what="study"):
        return _run_study(study, bases, workers, log, t0)


def _run_study(study: Recipe, bases: dict[str, dict], workers: int | None, log, t0: float) -> Path:
    study_dir = prepare_run_dir(study, verb="study")
    contamination = check_contamination(study, study_dir, log) if study.study.contamination == "check" else None
    runs = study_runs(study, study_dir, bases)
    with ResultsDB(study_dir / DB_NAME) as db:
        register_runs(db, study, runs)
        done = db.finished_runs(study.name)
    todo = [r for r in runs if r.run_id not in done]
    workers = min(workers or study.study.workers, max(1, len(todo)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    how = (f"{workers} workers x {threads} thread(s)" if study.study.executor == "local" else
           f"ray ({study.study.ray_address or 'local cluster'}), {study.study.cpus_per_run:g} CPU + "
           f"{study.study.gpus_per_run:g} GPU per run")
    log(f"[study] {study.name}: {len(runs)} runs ({len(runs) - len(todo)} already finished), {how}, "
        f"protocol {', '.join(study.study.protocols)}")
    failures = _run_all(study, todo, study_dir, workers, threads, log) if todo else []
    # An invocation that runs part of the folder's grid (other seeds, one base) adds to what the folder holds
    before = json.loads((study_dir / "study.json").read_text()) if (study_dir / "study.json").exists() else {}
    bases = {**(before.get("bases") or {}), **bases}
    run_ids = list(dict.fromkeys([*(before.get("runs") or []), *(r.run_id for r in runs)]))
    atomic_write_json(study_dir / "study.json", {
        "study": study.name, "protocols": list(study.study.protocols), "fractions": study.study.fractions,
        "seeds": study.study.seeds, "runs": run_ids, "bases": bases,
        "base": next(iter(bases.values()))["path"] if len(bases) == 1 else None,
        "step_budget": next((r.recipe.train.step_budget for r in runs if r.recipe.train.step_budget), None),
        "benchmarks": study.eval.benchmarks, "wall_s_last_invocation": round(time.perf_counter() - t0, 1),
        "contamination": {name: {k: c[k] for k in ("records", "flagged", "by_benchmark")}
                          for name, c in contamination["sources"].items()} if contamination else None,
        "failed": failures,
    })
    if failures:
        raise StudyRunError(f"{len(failures)} run(s) failed or have no valid score: {', '.join(failures)}; "
                            f"see their train.log in {study_dir}")
    return study_dir


def _run_all(study: Recipe, todo: list[GridRun], study_dir: Path, workers: int, threads: int, log) -> list[str]:
    """Run `todo` (local spawn pool or Ray) under one overall progress bar (runs done / total, elapsed, ETA);
    returns the ids of the runs that failed."""
    from tqdm import tqdm

    failures = []
    with tqdm(total=len(todo), desc="study", unit="run", leave=True, dynamic_ncols=True) as bar:
        emit = bar.write if log is print else log  # lines above the bar, which stays at the bottom
        n = 0
        for ended in _execute(study, todo, study_dir, workers, threads, log):
            bar.refresh()  # elapsed time and ETA move on while long runs train
            if ended is None:
                continue
            n += 1
            run_id, wall, error = ended
            bar.update(1)
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

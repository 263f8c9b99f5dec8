"""What a study's worker process does for one run, the same under the local pool and Ray: train it (resuming), its
output into the run's train.log, its status and results into the study's database.
"""

from __future__ import annotations

import os
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from mixtune.config import Recipe
from mixtune.results import DB_NAME, ResultsDB
from mixtune.study.base import BASE_RUN
from mixtune.study.grid import GridRun


def die_with_parent(parent: int) -> None:
    """Pool initializer: the worker is killed when the study that started it dies (Linux: PR_SET_PDEATHSIG), so a
    killed `mixtune study` leaves no orphan training the runs it had queued into the study's folder."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1  # prctl(2)'s option number
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the study died before the line above took effect
        os._exit(1)


def run_one(run: GridRun, study_dir: str, threads: int, *_after: object) -> tuple[str, float, str | None]:
    """Worker: train and evaluate one run (resuming it if it was interrupted); its status goes to the database.
    `_after`: results of the tasks it waited for (the shared prefixes, under Ray), unused."""
    with ResultsDB(Path(study_dir) / DB_NAME) as db:
        db.set_status(run.run_id, "running")
    wall, error = _train_in_worker(run, Path(study_dir), threads)
    with ResultsDB(Path(study_dir) / DB_NAME) as db:  # a run left without a valid score is finished, not failed:
        db.set_status(run.run_id, "failed" if error and error.startswith("Traceback") else "finished")  # no retrain
    return run.run_id, wall, error


def train_prefix(run: GridRun, study_dir: str, threads: int, stage_index: int,
                 *_after: object) -> tuple[str, float, str | None]:
    """Worker (Ray): train `run`'s stages 0..stage_index into the study's stage cache, for the runs sharing them.
    The run itself continues later from its finished stages; its status is left to `run_one`."""
    wall, error = _train_in_worker(run, Path(study_dir), threads, stop_after_stage=stage_index)
    return run.run_id, wall, error


def _train_in_worker(run: GridRun, study_dir: Path, threads: int, **options) -> tuple[float, str | None]:
    """Train (resuming) in this worker process, its output into the run's train.log; (seconds, traceback or None)."""
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ["TQDM_MININTERVAL"] = "30"  # progress lines in train.log, not thousands of redraws
    import torch

    from mixtune.train.run import train

    torch.set_num_threads(threads)
    recipe = run.recipe.model_copy(update={"train": run.recipe.train.model_copy(update={"threads": threads})})
    log_path = Path(recipe.run_dir) / "train.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:  # the run's own output (progress, stage logs) goes to its train.log, not the study's terminal
        with log_path.open("a") as fh, redirect_stdout(fh), redirect_stderr(fh):
            if run.setup == BASE_RUN:
                summary = {"scores": {BASE_RUN: score_base(recipe, study_dir)}}
            else:
                summary = train(recipe, resume=True, stage_cache=study_dir / "stage-cache",
                                db_path=study_dir / DB_NAME, tensorboard_dir=study_dir / "tensorboard" / run.run_id,
                                **options)
        error = None if summary.get("stopped") else failed_benchmarks(summary)
    except Exception:  # noqa: BLE001 -- a failed run is recorded and reported; the others go on
        error = traceback.format_exc()
    return time.perf_counter() - t0, error


def score_base(recipe: Recipe, study_dir: Path) -> dict:
    """Score a base model on the study's benchmarks: stage `base` (index 0, no training) of its base run."""
    from mixtune.evaluate.runner import evaluate_model
    from mixtune.model.load import load_model_and_tokenizer, prepare_tokenizer
    from mixtune.train.engine import pick_device

    tokenizer = prepare_tokenizer(recipe.model, recipe.data.template)
    model, tokenizer = load_model_and_tokenizer(recipe.model, tokenizer=tokenizer)
    with ResultsDB(study_dir / DB_NAME) as db:
        db.add_stage(recipe.name, 0, BASE_RUN, n_examples=0, n_tokens=0, steps=0, wall_s=0.0)
    return evaluate_model(model.to(pick_device()), tokenizer, recipe, recipe.run_dir, stage=BASE_RUN,
                          db_path=study_dir / DB_NAME)


def failed_benchmarks(summary: dict) -> str | None:
    """A note naming the benchmarks that have no valid score (status failed), or None."""
    failed = [f"{stage}/{name}" for stage, scores in summary.get("scores", {}).items()
              for name, record in (scores or {}).items() if record.get("status") == "failed"]
    return f"no valid score for {', '.join(failed)}" if failed else None

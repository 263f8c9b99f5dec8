"""`study.executor: ray`: each run of a study, and each stage prefix that several runs share, as a Ray task.

The driver (`mixtune study`) connects to `study.ray_address` (an existing cluster) or starts a local one, submits one
task per shared stage prefix (it trains the first run that needs it up to that stage and publishes the stage to the
study's stage cache), then one task per run, which takes the results of the prefix tasks it uses as arguments, so
Ray starts it only once they are done. Every task asks for `study.cpus_per_run` CPUs and `study.gpus_per_run` GPUs.
A task whose worker process dies (killed, out of memory, node lost) is started again up to `study.max_retries` times
and resumes from its run's checkpoints. A run's results reach the study's database from its worker, through the same
code as the local pool (`workers.run_one`); the database's rows are keyed (run, stage, step, benchmark, metric; stage
metrics by (run, stage, step, name)), so a retried or resumed run replaces its rows instead of adding to them.

Where the files are: workers read and write the study folder (checkpoints, the stage cache, results.sqlite). On one
machine that just works. On several, the study folder must be on a filesystem every node mounts at the same path,
and mixtune installed on every node (see docs/distributed.md for the database on a network filesystem).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mixtune.config import StudyConfig
from mixtune.results import DB_NAME, ResultsDB
from mixtune.study.base import BASE_RUN
from mixtune.study.grid import GridRun
from mixtune.study.workers import run_one, train_prefix


def shared_prefixes(runs: list[GridRun], cache: Path) -> tuple[dict[str, tuple[GridRun, int, str | None]],
                                                               dict[str, list[str]]]:
    """The stage prefixes that two or more of `runs` train and the cache does not hold yet:
    ({key: (the first run that trains it, its last stage index, the key one stage shorter)}, in stage order;
    {run_id: the keys it uses})."""
    from mixtune.train.run import finished_stage, prefix_keys

    users: dict[str, list[tuple[GridRun, int]]] = {}
    parent_of: dict[str, str | None] = {}
    keys_of: dict[str, list[str]] = {}
    for run in runs:
        if run.setup == BASE_RUN:  # scores a base model: trains no stage, shares none
            continue
        parent = None
        for index, key in enumerate(prefix_keys(run.recipe)):
            users.setdefault(key, []).append((run, index))
            parent_of.setdefault(key, parent)
            keys_of.setdefault(run.run_id, []).append(key)
            parent = key
    shared = {k: v[0] for k, v in users.items() if len(v) > 1 and not finished_stage(cache / k)}
    order = sorted(shared, key=lambda k: shared[k][1])  # a prefix after the shorter one it extends
    prefixes = {k: (*shared[k], parent_of[k] if parent_of[k] in shared else None) for k in order}
    return prefixes, {run_id: [k for k in keys if k in shared] for run_id, keys in keys_of.items()}


def run_on_ray(cfg: StudyConfig, todo: list[GridRun], study_dir: Path,
               log) -> Iterator[tuple[str, float, str | None]]:
    """Run `todo` as Ray tasks; yields (run_id, seconds, error) as each run ends."""
    try:
        import ray
    except ImportError:
        from mixtune.config import RecipeError

        raise RecipeError("study.executor: ray needs Ray: pip install 'mixtune[ray]' (or ray==2.60.0)") from None

    started = not ray.is_initialized()
    if started:  # the cluster at ray_address ("auto": the one `ray start` began on this machine), else a new local one
        ray.init(address=cfg.ray_address or "local", include_dashboard=False, log_to_driver=False)
    threads = max(1, int(cfg.cpus_per_run))
    options = {"num_cpus": cfg.cpus_per_run, "num_gpus": cfg.gpus_per_run, "max_retries": cfg.max_retries}
    run_task, prefix_task = ray.remote(**options)(run_one), ray.remote(**options)(train_prefix)
    prefixes, uses = shared_prefixes(todo, study_dir / "stage-cache")
    prefix_refs = {}
    for key, (run, index, parent) in prefixes.items():
        after = [prefix_refs[parent]] if parent else []
        prefix_refs[key] = prefix_task.remote(run, str(study_dir), threads, index, *after)
        log(f"[study] shared stages 0-{index} of {run.run_id} (prefix {key}): one task before the runs using them")
    pending = {run_task.remote(run, str(study_dir), threads, *(prefix_refs[k] for k in uses.get(run.run_id, []))): run
               for run in todo}
    try:
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(done)
            try:
                yield ray.get(done)
            except ray.exceptions.RayError as e:  # its worker died more than max_retries times (or a prefix's did)
                with ResultsDB(study_dir / DB_NAME) as db:
                    db.set_status(run.run_id, "failed")
                yield run.run_id, 0.0, f"{type(e).__name__}: {e}"
    finally:
        if started:
            ray.shutdown()

"""`study.executor: ray` on a local Ray head started by the test: shared stage prefixes trained once as their own
tasks, a run whose worker is SIGKILLed mid-stage retried (it resumes from its checkpoint), the study driver killed and
started again (finished runs are not redone), every (run, stage, benchmark, metric) row in the database once, and
TensorBoard events of the whole study under one folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from test_study import base, child_env, finished, query, study_cmd, study_recipe  # noqa: F401 -- `base` fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head with 2 CPUs (2 workers of 1 CPU each), owned by this test process and shut down after it."""
    import ray

    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _lock_pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / ".lock").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def _kill_a_worker_mid_stage(study_dir: Path, deadline: float) -> str | None:
    """SIGKILL the Ray worker of the first run seen with a checkpoint in its second stage (its pid is in the run
    folder's lock); returns that run's id."""
    while time.monotonic() < deadline:
        for ckpt in study_dir.glob("*/stages/1-general/checkpoints/step-*"):
            run_dir = ckpt.parents[3]
            pid = _lock_pid(run_dir)
            if pid and not (run_dir / "stages" / "1-general" / "stage.json").exists() and _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
                return run_dir.name
        time.sleep(0.05)
    return None


def test_ray_study_retries_a_killed_worker_resumes_a_killed_driver_and_records_each_row_once(
        tmp_path, base, ray_head):  # noqa: F811 -- `base` is test_study's fixture
    runs = [{"label": "mixed sequential", "strategy": {"name": "mixed_sequential"}},
            {"label": "DMT k=1/4", "strategy": {"name": "dmt", "k": 0.25}}]
    recipe, study_dir = study_recipe(tmp_path / "ray.yaml", base, runs, "matched_steps", 1, ["minilab_math"])
    tree = yaml.safe_load(recipe.read_text())
    tree["study"].update(executor="ray", ray_address=ray_head, cpus_per_run=1, max_retries=2)
    tree["train"].update(save_every=2, tensorboard=True)
    recipe.write_text(yaml.safe_dump(tree))
    db_path = study_dir / "results.sqlite"
    ids = [f"{s}-f{f}-s0-matched" for f in ("1", "0.5") for s in ("mixed-sequential", "dmt-k-1-4")]

    # 1. a worker SIGKILLed in the middle of a stage: Ray starts its task again, the run resumes, the study ends well
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(study_cmd(recipe, "--no-report"), env=child_env(), stdout=log, stderr=subprocess.STDOUT)
    killed_run = _kill_a_worker_mid_stage(study_dir, time.monotonic() + 600)
    rc = proc.wait(timeout=900)
    log.close()
    first = (tmp_path / "first.log").read_text()
    assert killed_run, f"no run reached a checkpoint of its second stage: {first[-3000:]}"
    assert rc == 0, first[-3000:]
    assert finished(db_path) == {"base", *ids} and json.loads((study_dir / "study.json").read_text())["failed"] == []
    assert "resume: continuing from" in (study_dir / killed_run / "train.log").read_text()  # from its checkpoint
    for f in ("1", "0.5"):  # the shared specialised stage: its own task, trained once, reused by the other run
        assert f"shared stages 0-0 of mixed-sequential-f{f}-s0-matched" in first
        stages = [json.loads((study_dir / r / "stages" / "0-specialized" / "stage.json").read_text())
                  for r in (f"mixed-sequential-f{f}-s0-matched", f"dmt-k-1-4-f{f}-s0-matched")]
        assert ["reused_from" in st for st in stages] == [False, True]
    mtimes = {p: p.stat().st_mtime_ns for p in study_dir.glob("*/stages/*/stage.json")}

    # 2. a third fraction added; the driver SIGKILLed once its shared prefix is trained, then started again
    more = study_cmd(recipe, "--no-report", "study.fractions=[1.0,0.5,0.25]")
    proc = subprocess.Popen(more, env=child_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    def cached() -> set[str]:
        return {p.name for p in (study_dir / "stage-cache").iterdir() if p.is_dir()}

    before, deadline = cached(), time.monotonic() + 600
    while len(cached()) == len(before) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # until the new fraction's shared stage is published
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(cached()) == len(before) + 1 and not finished(db_path) >= {"mixed-sequential-f0.25-s0-matched"}
    prefix = study_dir / "mixed-sequential-f0.25-s0-matched" / "stages" / "0-specialized" / "stage_weights.safetensors"
    prefix_mtime = prefix.stat().st_mtime_ns
    while any(_pid_alive(pid) for pid in filter(None, map(_lock_pid, study_dir.glob("*-s0-matched")))) and \
            time.monotonic() < deadline:  # Ray stops a dead driver's workers
        time.sleep(0.2)
    out = subprocess.run(more, env=child_env(), capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "7 runs (5 already finished)" in out.stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # finished runs were not redone
    assert prefix.stat().st_mtime_ns == prefix_mtime  # nor the prefix the killed driver had trained
    ids += ["mixed-sequential-f0.25-s0-matched", "dmt-k-1-4-f0.25-s0-matched"]
    assert finished(db_path) == {"base", *ids}

    # 3. each row once: scores per (run, stage, benchmark, metric), stages per (run, stage)
    counts = query(db_path, "SELECT run_id, stage, benchmark, metric, COUNT(*) FROM scores GROUP BY 1, 2, 3, 4")
    assert {c[-1] for c in counts} == {1}
    assert {(c[0], c[1], c[2]) for c in counts} == {(r, s, "minilab_math") for r in ids
                                                     for s in ("specialized", "general")} | {
        ("base", "base", "minilab_math")}  # the base, scored once
    assert sorted(query(db_path, "SELECT run_id, stage_name FROM stages WHERE run_id != 'base'")) == sorted(
        (r, s) for r in ids for s in ("specialized", "general"))

    # 4. TensorBoard: the whole study under one folder, one run per grid run, loss and scores read back
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert sorted(p.name for p in (study_dir / "tensorboard").iterdir()) == sorted(ids)
    events = EventAccumulator(str(study_dir / "tensorboard" / "dmt-k-1-4-f1-s0-matched"))
    events.Reload()
    assert {"loss", "lr", "score/minilab_math/strict"} <= set(events.Tags()["scalars"])
    steps = [e.step for e in events.Scalars("score/minilab_math/strict")]
    assert steps == [8, 12]  # after stage 1 (8 steps) and stage 2 (4 more, matched steps): the run's global steps

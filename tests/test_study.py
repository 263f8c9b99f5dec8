"""`mixtune study` end to end on a tiny world and a tiny pre-trained base: results database rows, the shared stage
prefix trained once, matched-steps vs fixed-epochs protocols, `mixtune report --json`, kill and resume, spawn
workers."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_lab import tiny_base_tree

from mixtune.config import load_recipe

pytestmark = pytest.mark.slow  # end-to-end runs: `pytest -m "not slow"` skips them; CI runs everything

REQUIRED_KEYS = {"strategy", "fraction", "seed", "stage", "ability", "benchmark", "metric", "value"}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """A tiny world (40 examples per ability), a tokenizer trained on it and a base pre-trained for 3 steps."""
    from mixtune.study.base import prepare_base

    root = tmp_path_factory.mktemp("study-base")
    tree = tiny_base_tree(root)
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(tree))
    final = prepare_base(load_recipe(path), log=lambda _: None)
    return {"recipe": str(path), "world": tree["world"]["out_dir"], "final": final}


def study_recipe(path: Path, base: dict, runs: list[dict], protocol: str, workers: int, benchmarks: list[str]):
    tree = {
        "name": path.stem, "out_dir": str(path.parent / path.stem),
        "study": {"base_recipe": base["recipe"], "runs": runs, "fractions": [1.0, 0.5], "seeds": [0],
                  "protocol": protocol, "workers": workers},
        "world": {"out_dir": base["world"]},
        # 16 per source and batch 4: every stage's size divides evenly at both fractions
        "data": {"sources": [{"name": a, "minilab": a, "count": 16} for a in ("code", "math", "general")],
                 "max_seq_len": 256},
        "train": {"lr": 1e-3, "epochs": 1, "batch_size": 4, "bf16": False, "threads": 1, "log_every": 1,
                  "warmup_ratio": 0.0},
        "eval": {"benchmarks": benchmarks, "limit": 3, "max_new_tokens": 8, "batch_size": 3},
    }
    path.write_text(yaml.safe_dump(tree))
    return path, Path(tree["out_dir"])


def finished(db_path: Path) -> set[str]:
    if not db_path.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as conn:
            return {r[0] for r in conn.execute("SELECT run_id FROM runs WHERE status = 'finished'")}
    except sqlite3.OperationalError:  # the schema is being created
        return set()


def query(db_path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(sql).fetchall()


def study_cmd(recipe: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mixtune.cli", "study", "-c", str(recipe), *extra]


def child_env() -> dict:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_killed_study_takes_its_workers_with_it(tmp_path, base):
    """SIGKILL of the study process alone (not its group): its pool workers die too, instead of training the runs it
    had queued into the study folder with nobody to record them."""
    runs = [{"label": "math only", "sources": ["math"]}, {"label": "multi-task"}]
    recipe, study_dir = study_recipe(tmp_path / "orphans.yaml", base, runs, "matched_steps", 2, ["minilab_math"])
    proc = subprocess.Popen(study_cmd(recipe, "--no-report"), env=child_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    workers, deadline = set(), time.monotonic() + 120
    while not workers and proc.poll() is None and time.monotonic() < deadline:
        for lock in study_dir.glob("*/.lock"):  # a run folder's lock names the worker training it
            try:
                workers.add(int(lock.read_text().split()[0]))
            except (OSError, IndexError, ValueError):
                pass
        time.sleep(0.05)
    try:
        assert workers, "no worker took a run before the study ended"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, workers)), f"workers {workers} outlived their study"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in filter(_alive, workers):
            os.kill(pid, signal.SIGKILL)


def test_killed_study_resumes_and_records_one_row_per_run_stage_benchmark_metric(tmp_path, base):
    runs = [{"label": "mixed sequential", "strategy": {"name": "mixed_sequential"}},
            {"label": "DMT k=1/4", "strategy": {"name": "dmt", "k": 0.25}}]
    recipe, study_dir = study_recipe(tmp_path / "kill.yaml", base, runs, "matched_steps", 1, ["minilab_math"])
    db_path = study_dir / "results.sqlite"

    # 1. start, SIGKILL the whole process group (study and its worker) once one run has finished
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(study_cmd(recipe, "--no-report"), env=child_env(), start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (done_before := finished(db_path) - {"base"}) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    mtimes = {p: p.stat().st_mtime_ns for run in done_before for p in (study_dir / run).glob("stages/*/stage.json")}
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert done_before, f"no run finished before the study ended: {(tmp_path / 'first.log').read_text()[-2000:]}"
    print(f"killed after {sorted(done_before)} finished")
    assert len(done_before) < 4, "the whole study finished before it could be killed"
    assert len(mtimes) == 2 * len(done_before)

    # 2. restart: the finished runs are not retrained, the others finish
    out = subprocess.run(study_cmd(recipe), env=child_env(), capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"({len(done_before) + 1} already finished)" in out.stdout  # and the base's scores
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    ids = ["mixed-sequential-f1-s0-matched", "dmt-k-1-4-f1-s0-matched", "mixed-sequential-f0.5-s0-matched",
           "dmt-k-1-4-f0.5-s0-matched"]
    assert finished(db_path) == {"base", *ids}
    assert json.loads((study_dir / "study.json").read_text())["failed"] == []

    # 3. the specialised stage is shared by mixed sequential and DMT: trained once per fraction, then reused
    def stage(run: str, name: str) -> dict:
        return json.loads(next((study_dir / run / "stages").glob(f"*-{name}/stage.json")).read_text())

    for f in ("1", "0.5"):
        ms, dmt = f"mixed-sequential-f{f}-s0-matched", f"dmt-k-1-4-f{f}-s0-matched"
        assert "reused_from" not in stage(ms, "specialized")  # workers 1: mixed sequential runs first
        assert stage(dmt, "specialized")["reused_from"].startswith(str(study_dir / "stage-cache"))
        assert "reused_from" not in stage(dmt, "general")
        weights = [(study_dir / r / "stages" / "0-specialized" / "stage_weights.safetensors").read_bytes()
                   for r in (ms, dmt)]
        assert weights[0] == weights[1]
        for r in (ms, dmt):  # the audit trail: every stage the run used has its manifest, cached or not
            for folder in (study_dir / r / "stages").iterdir():
                stage_manifest = json.loads((folder / "manifest.json").read_text())
                assert stage_manifest["n_drawn"] == stage_manifest["n_trained"] + sum(
                    len(ids) for ids in stage_manifest["dropped"].values())
            for m in json.loads((study_dir / r / "manifest.json").read_text())["sources"].values():
                assert m["drawn"] == m["trained"] + sum(len(ids) for ids in m["dropped"].values())

    # 4. one score row per (run, stage, benchmark, metric), for every run and stage
    counts = query(db_path, "SELECT run_id, stage, benchmark, metric, COUNT(*) FROM scores GROUP BY 1, 2, 3, 4")
    assert {c[-1] for c in counts} == {1}
    assert {(c[0], c[1], c[2]) for c in counts} == {(r, s, "minilab_math") for r in ids
                                                     for s in ("specialized", "general")} | {
        ("base", "base", "minilab_math")}  # the base, scored once
    assert {c[3] for c in counts} >= {"strict", "flexible", "n"}

    # 5. matched steps: every run trains the budget (ceil(1 epoch × 48 examples / batch 4) = 12 steps), split by
    #    each stage's distinct examples (32 : 16), whatever its fraction or replay
    rows = query(db_path, "SELECT run_id, stage_name, n_examples, steps FROM stages WHERE run_id != 'base'")
    steps = {(r.removesuffix("-s0-matched"), s): (n, k) for r, s, n, k in rows}
    assert steps == {
        ("mixed-sequential-f1", "specialized"): (32, 8), ("mixed-sequential-f0.5", "specialized"): (16, 8),
        ("dmt-k-1-4-f1", "specialized"): (32, 8), ("dmt-k-1-4-f0.5", "specialized"): (16, 8),
        ("mixed-sequential-f1", "general"): (16, 4), ("mixed-sequential-f0.5", "general"): (8, 4),
        ("dmt-k-1-4-f1", "general"): (24, 4), ("dmt-k-1-4-f0.5", "general"): (12, 4),  # 16|8 + 2 × 4|2 replayed
    }
    per_run = query(db_path, "SELECT run_id, SUM(steps) FROM stages WHERE run_id != 'base' GROUP BY run_id")
    assert {n for _, n in per_run} == {12} and json.loads((study_dir / "study.json").read_text())["step_budget"] == 12

    # 6. the report: JSON rows with the required keys; the page names the protocol
    report = subprocess.run([sys.executable, "-m", "mixtune.cli", "report", str(study_dir), "--json"],
                            env=child_env(), capture_output=True, text=True, timeout=120, check=True)
    rows = json.loads(report.stdout)
    assert len(rows) == len(query(db_path, "SELECT 1 FROM scores WHERE value IS NOT NULL"))
    assert all(REQUIRED_KEYS <= set(row) for row in rows)
    assert {(r["strategy"], r["fraction"], r["seed"], r["stage"]) for r in rows} == {
        (label, f, 0, s) for label in ("mixed sequential", "DMT k=1/4") for f in (1.0, 0.5)
        for s in ("specialized", "general")} | {("base", None, 0, "base")}
    assert {(r["ability"], r["benchmark"]) for r in rows} == {("math", "minilab_math")}
    assert "training protocol: matched steps" in (study_dir / "report" / "index.html").read_text()


def test_fixed_epochs_halves_the_steps_and_workers_are_spawned_processes(tmp_path, base, monkeypatch):
    from mixtune.study import cli

    pools = []

    class Recording(cli.ProcessPoolExecutor):
        def __init__(self, max_workers, mp_context, **options):
            pools.append((max_workers, mp_context.get_start_method(), options["initializer"].__name__))
            super().__init__(max_workers=max_workers, mp_context=mp_context, **options)

    monkeypatch.setattr(cli, "ProcessPoolExecutor", Recording)
    runs = [{"label": "multi-task", "strategy": {"name": "multi_task"}}]
    recipe, study_dir = study_recipe(tmp_path / "epochs.yaml", base, runs, "fixed_epochs", 2, [])
    lines = []
    cli.run_study(load_recipe(recipe), log=lines.append)
    assert pools == [(2, "spawn", "die_with_parent")]
    assert "2 runs (0 already finished), 2 workers x" in "\n".join(lines)
    steps = dict(query(study_dir / "results.sqlite", "SELECT run_id, steps FROM stages"))
    assert steps == {"multi-task-f1-s0-epochs": 12, "multi-task-f0.5-s0-epochs": 6}  # 48 / 4 and 24 / 4 per step
    assert json.loads((study_dir / "study.json").read_text())["protocols"] == ["fixed_epochs"]
    # started again: nothing to do, nothing retrained
    lines.clear()
    cli.run_study(load_recipe(recipe), log=lines.append)
    assert "2 runs (2 already finished)" in "\n".join(lines) and len(pools) == 1


def test_a_stage_with_the_same_steps_under_both_protocols_is_trained_once(tmp_path, base):
    """Multi-task under matched steps (a budget of 12 = max_steps 12) and under fixed epochs (1 epoch of 48 examples,
    batch 4 = 12 steps) is one training: the second run reuses the first's stage; at fraction 0.5 fixed epochs
    trains 6 steps, a different stage, trained again."""
    from mixtune.study import cli

    runs = [{"label": "multi-task", "strategy": {"name": "multi_task"}}]
    recipe, study_dir = study_recipe(tmp_path / "both.yaml", base, runs, "matched_steps", 1, ["minilab_math"])
    tree = yaml.safe_load(recipe.read_text())
    tree["study"]["protocol"] = ["matched_steps", "fixed_epochs"]
    recipe.write_text(yaml.safe_dump(tree))
    cli.run_study(load_recipe(recipe), log=lambda _: None)

    def stage(run: str) -> dict:
        return json.loads((study_dir / run / "stages" / "0-multi_task" / "stage.json").read_text())

    matched, epochs = stage("multi-task-f1-s0-matched"), stage("multi-task-f1-s0-epochs")
    assert matched["steps"] == epochs["steps"] == 12
    assert ("reused_from" in matched) != ("reused_from" in epochs)  # one trained it, the other reused it
    assert matched["scores"] == epochs["scores"]
    half = [stage(f"multi-task-f0.5-s0-{p}") for p in ("matched", "epochs")]
    assert [h["steps"] for h in half] == [12, 6] and not any("reused_from" in h for h in half)
    weights = {r: (study_dir / r / "final" / "model.safetensors").read_bytes()
               for r in ("multi-task-f1-s0-matched", "multi-task-f1-s0-epochs")}
    assert len(set(weights.values())) == 1


def test_grid_expands_runs_fractions_seeds_and_ratio_setups(tmp_path):
    from mixtune.config import Recipe
    from mixtune.study.grid import expand_grid

    study = Recipe.model_validate({
        "name": "g", "train": {"epochs": 3},
        "data": {"sources": [{"name": "code", "minilab": "code", "count": 640},
                             {"name": "math", "minilab": "math", "fraction": 0.5},
                             {"name": "general", "minilab": "general", "count": 1280}]},
        "study": {"runs": [{"label": "math only", "sources": ["math"]},
                           {"label": "DMT k=1/64", "strategy": {"name": "dmt", "k": 1 / 64}}],
                  "fractions": [1.0, 0.25], "seeds": [0, 1], "protocol": "matched_steps", "step_budget": 500,
                  "ratio_setups": [{"label": "full general", "vary": "specialized"},
                                   {"label": "1/64 general", "vary": "specialized", "fixed_fraction": 1 / 64}]}})
    runs = {r.run_id.removesuffix("-matched"): r for r in expand_grid(study, tmp_path, {"b": tmp_path / "base"})}
    assert len(runs) == 2 * 2 * (2 + 2)  # seeds × fractions × (runs + ratio set-ups)
    quarter = runs["dmt-k-1-64-f0.25-s1"].recipe
    assert [(s.name, s.count, s.fraction) for s in quarter.data.sources] == [
        ("code", 160, None), ("math", None, 0.125), ("general", 320, None)]
    assert all(r.recipe.train.step_budget == 500 and r.protocol == "matched_steps" for r in runs.values())
    assert quarter.train.epochs == 3 and quarter.train.seed == quarter.data.shuffle_seed == 1
    assert quarter.model.path == str(tmp_path / "base")
    assert quarter.run_dir == tmp_path / "dmt-k-1-64-f0.25-s1-matched"
    assert [s.name for s in runs["math-only-f1-s0"].recipe.data.sources] == ["math"]
    assert runs["math-only-f1-s0"].setup == "single" and runs["dmt-k-1-64-f1-s0"].setup == "mixed"
    ratio = runs["ratio-1-64-general-f0.25-s0"]
    assert [(s.count, s.fraction) for s in ratio.recipe.data.sources] == [(160, None), (None, 0.125), (20, None)]
    assert ratio.label == "1/64 general (k=16)" and ratio.recipe.strategy.name == "multi_task"  # (1/4) / (1/64)
    assert runs["ratio-full-general-f0.25-s0"].label == "full general (k=0.25)"


def test_a_changed_recipe_does_not_reuse_the_old_runs(tmp_path):
    from mixtune.config import Recipe
    from mixtune.results import ResultsDB
    from mixtune.study.cli import StudyConfigError, register_runs
    from mixtune.study.grid import expand_grid

    tree = {"name": "s", "out_dir": str(tmp_path / "s"), "data": {"sources": [{"name": "m", "minilab": "math"}]},
            "study": {"runs": [{"label": "math only"}], "protocol": "fixed_epochs"}}
    first = Recipe.model_validate(tree)
    with ResultsDB(tmp_path / "db.sqlite") as db:
        register_runs(db, first, expand_grid(first, tmp_path / "s", {"b": tmp_path / "base"}))
        register_runs(db, first, expand_grid(first, tmp_path / "s", {"b": tmp_path / "base"}))  # same recipe: fine
        changed = Recipe.model_validate({**tree, "train": {"lr": 5e-4}})
        with pytest.raises(StudyConfigError, match="math-only-f1-s0-epochs .* different recipe"):
            register_runs(db, changed, expand_grid(changed, tmp_path / "s", {"b": tmp_path / "base"}))
        # stored by an older mixtune, before a field existed: read with today's defaults, the same run
        stored = json.loads(db.runs("s")[0]["config_json"])
        del stored["train"]["fused_ce"], stored["rl"]
        db.upsert_run("math-only-f1-s0-epochs", config_json=stored)
        register_runs(db, first, expand_grid(first, tmp_path / "s", {"b": tmp_path / "base"}))
        stored["train"]["no_such_field"] = 1  # a field today's schema does not know: not provably the same run
        db.upsert_run("math-only-f1-s0-epochs", config_json=stored)
        with pytest.raises(StudyConfigError, match="different recipe"):
            register_runs(db, first, expand_grid(first, tmp_path / "s", {"b": tmp_path / "base"}))


def test_adding_seeds_keeps_the_finished_runs(tmp_path):
    from mixtune.config import Recipe
    from mixtune.results import ResultsDB
    from mixtune.study.cli import register_runs
    from mixtune.study.grid import expand_grid

    tree = {"name": "s", "out_dir": str(tmp_path / "s"), "data": {"sources": [{"name": "m", "minilab": "math"}]},
            "study": {"runs": [{"label": "math only"}], "seeds": [0], "protocol": "fixed_epochs"}}
    first = Recipe.model_validate(tree)
    with ResultsDB(tmp_path / "db.sqlite") as db:
        register_runs(db, first, expand_grid(first, tmp_path / "s", {"b": tmp_path / "base"}))
        db.set_status("math-only-f1-s0-epochs", "finished")
        more = Recipe.model_validate({**tree, "study": {**tree["study"], "seeds": [0, 1]}})
        register_runs(db, more, expand_grid(more, tmp_path / "s", {"b": tmp_path / "base"}))
        assert db.finished_runs("s") == {"math-only-f1-s0-epochs"}
        assert {r["run_id"] for r in db.runs("s")} == {"math-only-f1-s0-epochs", "math-only-f1-s1-epochs"}


def test_both_protocols_share_one_study_folder_and_base_seeds_multiply_the_grid(tmp_path):
    from mixtune.config import Recipe
    from mixtune.study.grid import expand_grid

    study = Recipe.model_validate({
        "name": "p", "train": {"epochs": 2, "batch_size": 10},
        "data": {"sources": [{"name": "m", "minilab": "math", "count": 100}]},
        "study": {"runs": [{"label": "math only"}], "protocol": ["matched_steps", "fixed_epochs"],
                  "step_budget": 7, "base_seeds": [0, 1], "fractions": [1.0, 0.5]}})
    runs = expand_grid(study, tmp_path, {"base-b0": tmp_path / "b0", "base-b1": tmp_path / "b1"})
    assert len(runs) == 2 * 2 * 2  # bases × protocols × fractions
    by_id = {r.run_id: r for r in runs}
    assert by_id["math-only-f0.5-s0-b1-matched"].recipe.train.step_budget == 7
    assert by_id["math-only-f0.5-s0-b1-epochs"].recipe.train.step_budget is None
    assert by_id["math-only-f1-s0-b0-epochs"].recipe.model.path == str(tmp_path / "b0")
    assert {r.base for r in runs} == {"base-b0", "base-b1"} and {r.protocol for r in runs} == {
        "matched_steps", "fixed_epochs"}


def test_a_second_study_on_the_same_folder_is_refused(tmp_path, base):
    from mixtune.runs import RunLock, RunLockedError
    from mixtune.study import cli

    runs = [{"label": "multi-task", "strategy": {"name": "multi_task"}}]
    recipe, study_dir = study_recipe(tmp_path / "lock.yaml", base, runs, "fixed_epochs", 1, [])
    code = (f"from mixtune.runs import RunLock\nimport time\n"
            f"with RunLock({str(study_dir)!r}, what='study'):\n    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid}\) is writing this study folder"):
            cli.run_study(load_recipe(recipe), log=lambda _: None)
        assert not (study_dir / "results.sqlite").exists()
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with RunLock(study_dir, what="study"):
        pass


def test_a_test_item_in_training_data_stops_the_study_before_training(tmp_path, base):
    from mixtune.study import cli
    from mixtune.study.contamination import ContaminationError

    item = json.loads((Path(base["world"]) / "bench" / "math_test.jsonl").read_text().splitlines()[3])
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text("".join(json.dumps({"question": q, "answer": "so #### 1"}) + "\n"
                             for q in ("What is two plus two?", "  " + item["question"].upper() + " ")))
    runs = [{"label": "multi-task", "strategy": {"name": "multi_task"}}]
    recipe, study_dir = study_recipe(tmp_path / "leak.yaml", base, runs, "fixed_epochs", 1, ["minilab_math"])
    tree = yaml.safe_load(recipe.read_text())
    tree["data"]["sources"].append({"name": "leaky", "path": str(leaky), "format": "gsm8k"})
    recipe.write_text(yaml.safe_dump(tree))
    with pytest.raises(ContaminationError, match=rf"source leaky: record leaky/1 is test item {item['task_id']} "
                                                 r"of benchmark minilab_math"):
        cli.run_study(load_recipe(recipe), log=lambda _: None)
    assert not list(study_dir.glob("*-s0-epochs"))  # nothing trained
    tree["data"]["sources"].pop()  # clean sources: counted and recorded, the study runs
    recipe.write_text(yaml.safe_dump(tree))
    lines = []
    cli.run_study(load_recipe(recipe), log=lines.append)
    meta = json.loads((study_dir / "study.json").read_text())
    assert set(meta["contamination"]) == {"code", "math", "general"}
    assert all(c["records"] == 40 for c in meta["contamination"].values())  # each source checked in full
    assert sum("held-out check" in line and "0 test items" in line for line in lines) == 3

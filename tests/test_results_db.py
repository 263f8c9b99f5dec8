"""The results database: round trip, upserts, resume helper, text values, and two writer processes at once."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from mixtune.results import END_OF_STAGE, ResultsDB


def test_round_trip_joins_runs_and_stages(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultsDB(path) as db:
        db.upsert_run("r1", study="s", strategy="dmt", fraction=0.25, seed=3, setup="strategy",
                      config_json={"lr": 1e-3})
        db.add_stage("r1", 1, "stage1", n_examples=100, n_tokens=5000, steps=20, wall_s=1.5)
        db.add_stage("r1", 2, "stage2")
        db.add_scores("r1", "stage1", "minilab_math", "math", {"accuracy": 0.5, "n": 40, "passed_all": True})
        db.add_scores("r1", "stage2", "minilab_math", "math", {"accuracy": 0.25}, step=10)
    # Reopen: everything was committed to disk.
    with ResultsDB(path) as db:
        assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = db.rows("s")
        run = db.runs("s")[0]
        stages = db.stages("r1")
    assert json.loads(run["config_json"]) == {"lr": 1e-3}
    assert [s["stage_name"] for s in stages] == ["stage1", "stage2"]
    assert stages[0]["n_tokens"] == 5000 and stages[0]["wall_s"] == 1.5
    by_metric = {(r["stage"], r["metric"]): r for r in rows}
    assert set(by_metric) == {("stage1", "accuracy"), ("stage1", "n"), ("stage1", "passed_all"),
                              ("stage2", "accuracy")}
    first = by_metric[("stage1", "accuracy")]
    assert (first["strategy"], first["fraction"], first["seed"], first["setup"]) == ("dmt", 0.25, 3, "strategy")
    assert first["value"] == 0.5 and first["step"] == END_OF_STAGE and first["stage_index"] == 1
    assert by_metric[("stage1", "passed_all")]["value"] == 1.0
    assert by_metric[("stage2", "accuracy")]["step"] == 10 and by_metric[("stage2", "accuracy")]["stage_index"] == 2


def test_text_and_non_finite_values_go_to_the_text_column(tmp_path):
    with ResultsDB(tmp_path / "r.sqlite") as db:
        db.upsert_run("r1", study="s")
        db.add_scores("r1", "sft", "mt_bench", "general", {"score": 6.5, "judge": "fake-judge", "f1": math.nan})
        numeric = db.rows()
        everything = db.rows(numeric_only=False)
    assert [(r["metric"], r["value"]) for r in numeric] == [("score", 6.5)]
    text = {r["metric"]: (r["value"], r["text"]) for r in everything}
    assert text["judge"] == (None, "fake-judge")
    assert text["f1"] == (None, "nan")


def test_rescoring_replaces_rows_instead_of_duplicating(tmp_path):
    with ResultsDB(tmp_path / "r.sqlite") as db:
        db.upsert_run("r1", study="s")
        for value in (0.1, 0.2, 0.3):  # step None (end of stage) must not defeat the primary key
            db.add_scores("r1", "sft", "gsm8k", "math", {"accuracy": value})
        db.add_scores("r1", "sft", "gsm8k", "math", {"accuracy": 0.9}, step=5)
        rows = db.rows()
    assert sorted((r["step"], r["value"]) for r in rows) == [(END_OF_STAGE, 0.3), (5, 0.9)]


def test_upsert_updates_only_given_fields_and_validates(tmp_path):
    with ResultsDB(tmp_path / "r.sqlite") as db:
        db.upsert_run("r1", study="s", strategy="sequential", seed=0)
        db.upsert_run("r1", adapter="lora")
        run = db.runs()[0]
        assert (run["strategy"], run["seed"], run["adapter"]) == ("sequential", 0, "lora")
        with pytest.raises(ValueError, match="valid fields: study, strategy"):
            db.upsert_run("r1", stratgy="typo")
        with pytest.raises(ValueError, match="valid statuses"):
            db.set_status("r1", "done")


def test_finished_runs_is_the_resume_set(tmp_path):
    with ResultsDB(tmp_path / "r.sqlite") as db:
        for run_id, study in [("a", "s1"), ("b", "s1"), ("c", "s1"), ("d", "s2")]:
            db.upsert_run(run_id, study=study, status="pending")
        db.set_status("a", "running")
        db.set_status("a", "finished")
        db.set_status("b", "running")
        db.set_status("c", "failed")
        db.set_status("d", "finished")
        assert db.finished_runs("s1") == {"a"}
        assert db.finished_runs("s2") == {"d"}
        runs = {r["run_id"]: r for r in db.runs("s1")}
    assert runs["a"]["started_at"] and runs["a"]["finished_at"]
    assert runs["b"]["started_at"] and runs["b"]["finished_at"] is None
    assert runs["c"]["status"] == "failed" and runs["c"]["finished_at"]


def test_metrics_are_appended_in_order(tmp_path):
    with ResultsDB(tmp_path / "r.sqlite") as db:
        db.add_metric("r1", "sft", 1, "loss", 2.5)
        db.add_metrics("r1", "sft", 2, {"loss": 2.0, "lr": 1e-3})
        assert [(m["step"], m["value"]) for m in db.metrics("r1", "loss")] == [(1, 2.5), (2, 2.0)]
        assert len(db.metrics("r1")) == 3



def test_stage_metrics_recorded_again_replace_their_rows(tmp_path):
    """A resumed or retried run records its finished stages again: their metrics must not double."""
    with ResultsDB(tmp_path / "r.sqlite") as db:
        db.add_metric("r1", "dpo", 3, "loss", 0.9)  # a training curve point: untouched
        db.set_metrics("r1", "dpo", 4, {"reward_accuracy": 0.5, "margin": 1.0})
        db.set_metrics("r1", "dpo", 4, {"reward_accuracy": 0.75})  # the retry
        db.set_metrics("r2", "dpo", 4, {"reward_accuracy": 0.25})  # another run
        rows = sorted((m["run_id"], m["step"], m["name"], m["value"]) for m in db.metrics("r1"))
        assert rows == [("r1", 3, "loss", 0.9), ("r1", 4, "margin", 1.0), ("r1", 4, "reward_accuracy", 0.75)]
        assert [m["value"] for m in db.metrics("r2")] == [0.25]


WRITER = """
import sys
from mixtune.results import ResultsDB
path, name = sys.argv[1], sys.argv[2]
db = ResultsDB(path)
db.upsert_run(name, study="s", status="running")
for i in range(60):
    db.add_scores(name, "sft", f"bench{i}", "math", {"accuracy": i / 60})
    db.add_metric(name, "sft", i, "loss", 1.0 / (i + 1))
db.set_status(name, "finished")
db.close()
"""


def test_two_writer_processes_share_one_file(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsDB(path).close()  # create the schema first, as the grid runner does
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{k}"], stderr=subprocess.PIPE)
             for k in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    with ResultsDB(path) as db:
        assert db.finished_runs("s") == {"w0", "w1"}
        rows = db.rows("s")
        assert len(rows) == 120
        assert len(db.metrics("w0")) == 60 and len(db.metrics("w1")) == 60

"""The report's preference-stage table: the reported metrics of every strategy's stages, mean ± std over seeds,
each run's last value; other metrics left out; in tables.md and the HTML page of `mixtune report`."""

from __future__ import annotations

import pytest

from mixtune.results import ResultsDB
from mixtune.study.report_cli import main as report_main
from mixtune.study.stage_metrics import stage_metrics_table


def test_stage_metrics_mean_and_std_over_seeds_of_each_runs_last_value(tmp_path):
    db_path = tmp_path / "results.sqlite"
    with ResultsDB(db_path) as db:
        for seed, (acc, pairs) in enumerate([(0.6, 40), (0.8, 44)]):
            db.upsert_run(f"rm-s{seed}", study="x", strategy="+ RLAIF reward model", seed=seed)
            db.set_metrics(f"rm-s{seed}", "rm", 3, {"eval/prefs/reward/accuracy": 0.1, "loss": 0.5})
            db.set_metrics(f"rm-s{seed}", "rm", 9, {"eval/prefs/reward/accuracy": acc, "labeller/invalid": 2.0})
            db.upsert_run(f"sr-s{seed}", study="x", strategy="+ self-rewarding", seed=seed)
            db.set_metrics(f"sr-s{seed}", "sr", 6, {"iter0/pairs": pairs, "iter0/judge/heldout/pairwise_accuracy": 0.5,
                                                    "iter0/rewards/margin": 1.0})
    table = stage_metrics_table(db_path)
    assert table.keys == [("+ RLAIF reward model", "rm", "eval/prefs/reward/accuracy"),
                          ("+ RLAIF reward model", "rm", "labeller/invalid"),
                          ("+ self-rewarding", "sr", "iter0/pairs"),
                          ("+ self-rewarding", "sr", "iter0/judge/heldout/pairwise_accuracy")]
    accuracy = table.cells[0][0]
    assert accuracy.mean == pytest.approx(0.7) and accuracy.n == 2  # the last value (step 9) of each seed
    assert accuracy.std == pytest.approx(0.1414214, abs=1e-6)
    assert table.cells[2][0].mean == 42
    assert stage_metrics_table(tmp_path / "none.sqlite").keys == []


def test_the_report_holds_the_stage_metrics_table(tmp_path, capsys):
    with ResultsDB(tmp_path / "results.sqlite") as db:
        db.upsert_run("rm-s0", study="x", strategy="+ RM", seed=0)
        db.set_metrics("rm-s0", "rm", 5, {"eval/prefs/reward/accuracy": 0.75})
    assert report_main([str(tmp_path)]) == 0
    markdown = (tmp_path / "report/tables.md").read_text()
    assert "| + RM | rm | eval/prefs/reward/accuracy | 0.750 (n=1) |" in markdown
    assert "eval/prefs/reward/accuracy" in (tmp_path / "report/index.html").read_text()

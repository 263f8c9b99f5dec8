"""The report's statistics and figures, on a synthetic study worked out by hand: t-based 95% intervals clipped to
[0, 1], the base at stage 0, steps and tokens beside the scores, two protocols side by side, the fraction table only
with several fractions, loss curves from the run folders, and `mixtune report --json` rows with protocol/steps/
tokens."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from mixtune.cli import main as mixtune_main
from mixtune.results import ResultsDB
from mixtune.study.cells import Summary, t_quantile
from mixtune.study.curves import loss_plot, read_loss_curve
from mixtune.study.plots import make_plots
from mixtune.study.report_cli import read_study
from mixtune.study.tables import fraction_table, stage_table, strategy_table

BENCH = ("math", "minilab_math", "strict")


def test_t_interval_by_hand_and_clipped_to_a_rate():
    s = Summary.of([0.5, 0.6, 0.7])  # mean 0.6, s = 0.1, t(0.975, 2) = 4.303: half-width 4.303 * 0.1 / sqrt(3)
    lo, hi = s.ci95(0.0, 1.0)
    assert (lo, hi) == pytest.approx((0.6 - 0.248434, 0.6 + 0.248434), abs=1e-6)
    two = Summary.of([0.05, 0.15])  # n = 2: t(0.975, 1) = 12.706, half-width 12.706 * 0.0707107 / sqrt(2) = 0.6353
    assert two.ci95(0.0, 1.0) == pytest.approx((0.0, 0.1 + 0.6353), abs=1e-4)  # clipped at 0, not -0.535
    assert two.ci95(None, None)[0] == pytest.approx(0.1 - 0.6353, abs=1e-4)
    assert Summary.of([0.4]).ci95() is None
    assert t_quantile(25) == 2.086 and t_quantile(500) == 1.960  # between entries: the smaller df (wider)
    assert s.values == (0.5, 0.6, 0.7)


def make_study(study_dir, protocols=("fixed_epochs",)) -> None:
    """A base (scored once) and two strategies x 2 seeds per protocol: sequential (code -> general, 10 + 20
    steps) and multi-task (one stage of 30 steps); each stage folder holds a metrics.jsonl with a loss."""
    with ResultsDB(study_dir / "results.sqlite") as db:
        db.upsert_run("base", study="s", strategy="base", setup="base", adapter="none", status="finished")
        db.add_stage("base", 0, "base", n_examples=0, n_tokens=0, steps=0)
        db.add_scores("base", "base", BENCH[1], BENCH[0], {BENCH[2]: 0.05, "status": "ok"})
        for protocol in protocols:
            for seed in (0, 1):
                for strategy, stages in (("sequential", [("code", 10, 0.6), ("general", 20, 0.1 + 0.1 * seed)]),
                                         ("multi_task", [("all", 30, 0.5 + 0.2 * seed)])):
                    run = f"{strategy}-{protocol}-s{seed}"
                    db.upsert_run(run, study="s", strategy=strategy, fraction=1.0, seed=seed, setup="mixed",
                                  adapter="none", status="finished")
                    for i, (stage, steps, value) in enumerate(stages):
                        db.add_stage(run, i, stage, n_examples=40, n_tokens=1000 * steps, steps=steps)
                        db.add_scores(run, stage, BENCH[1], BENCH[0], {BENCH[2]: value})
                        folder = study_dir / run / "stages" / f"{i}-{stage}"
                        folder.mkdir(parents=True)
                        (folder / "metrics.jsonl").write_text("".join(
                            json.dumps({"step": k, "loss": 3.0 - 0.05 * k - i}) + "\n" for k in range(5, steps + 1, 5)))
                        (folder / "stage.json").write_text(json.dumps({"steps": steps}))
        db.add_scores("base", "base", "mt_bench", "general", {"status": "skipped", "reason": "judge unreachable"})
    (study_dir / "study.json").write_text(json.dumps({"study": "s", "protocol": protocols[0]}))


@pytest.fixture
def study(tmp_path):
    make_study(tmp_path)
    rows, runs, unscored = read_study(tmp_path / "results.sqlite", json.loads((tmp_path / "study.json").read_text()))
    return tmp_path, rows, runs, unscored


def test_strategy_table_puts_the_base_first_with_steps_and_tokens(study):
    _, rows, _, unscored = study
    table = strategy_table(rows)
    assert table.title == "Strategy × ability (final stage, mean ± std over seeds; protocol: fixed epochs)"
    assert table.key_columns == ["strategy"] and table.value_columns == ["math", "steps", "tokens"]
    assert [k[0] for k in table.keys] == ["base", "sequential", "multi_task"]
    cells = dict(zip((k[0] for k in table.keys), table.cells))
    assert cells["base"][1:] == ["0", "0"] and cells["sequential"][1:] == ["30", "30.0k"]
    assert cells["multi_task"][0].mean == pytest.approx(0.6) and cells["multi_task"][0].n == 2
    assert unscored == ["base/base/mt_bench: skipped"]


def test_stage_table_starts_every_strategy_at_the_base(study):
    _, rows, _, _ = study
    table = stage_table(rows)
    assert [k[-1] for k in table.keys] == ["0: base", "1: code", "2: general"]  # only the multi-stage strategy
    base, code, general = table.cells
    assert base[0].mean == 0.05 and base[0].n == 1  # the base is one run, counted once
    assert code[0].mean == 0.6 and code[0].std == 0.0
    assert general[0].mean == pytest.approx(0.15) and general[0].n == 2
    assert not fraction_table(rows).keys  # one fraction: no fraction table


def test_two_protocols_are_shown_side_by_side(tmp_path):
    make_study(tmp_path, protocols=("fixed_epochs", "matched_steps"))
    with ResultsDB(tmp_path / "results.sqlite") as db:
        rows = db.rows()
    for r in rows:  # what the grid records: the protocol of each run (the runs table's column)
        r["protocol"] = None if r["run_id"] == "base" else r["run_id"].split("-")[1]
    table = strategy_table(rows)
    assert table.key_columns == ["protocol", "strategy"]
    assert [k[:2] for k in table.keys] == [("", "base"), ("fixed_epochs", "sequential"),
                                           ("fixed_epochs", "multi_task"), ("matched_steps", "sequential"),
                                           ("matched_steps", "multi_task")]
    stages = stage_table(rows)
    assert {k[0] for k in stages.keys} == {"fixed_epochs", "matched_steps"}
    assert [p.name for p in make_plots(rows, tmp_path / "plots")] == ["headline.png", "stages.png"]


def test_loss_curves_put_stages_end_to_end(study, tmp_path):
    study_dir, _, runs, _ = study
    curve = read_loss_curve(study_dir / "sequential-fixed_epochs-s0")
    assert curve["steps"] == [5, 10, 15, 20, 25, 30] and curve["boundaries"] == [(0, "code"), (10, "general")]
    assert curve["loss"][:3] == pytest.approx([2.75, 2.5, 1.75])  # stage 2 starts at step 10 + 5
    path = loss_plot({r["run_id"]: read_loss_curve(study_dir / r["run_id"]) for r in runs if r["run_id"] != "base"},
                     runs, tmp_path / "loss.png")
    with Image.open(path) as im:
        assert im.size[0] > 600 and im.convert("L").getextrema()[1] - im.convert("L").getextrema()[0] > 100


def test_report_cli_json_rows_carry_protocol_steps_and_tokens(study, capsys):
    study_dir, _, _, _ = study
    assert mixtune_main(["report", str(study_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    seq = next(r for r in rows if r["run_id"] == "sequential-fixed_epochs-s1" and r["stage"] == "general")
    assert (seq["protocol"], seq["steps"], seq["tokens"], seq["value"]) == ("fixed_epochs", 30, 30000, 0.2)
    base = next(r for r in rows if r["run_id"] == "base")
    assert (base["protocol"], base["steps"], base["tokens"]) == (None, 0, 0)
    assert mixtune_main(["report", str(study_dir)]) == 0
    page = (study_dir / "report" / "index.html").read_text()
    assert "benchmarks without a score: base/base/mt_bench: skipped" in page
    assert page.count("<img ") == 3  # headline, stages, loss (one fraction: no scaling plot)
    assert math.isclose(json.loads(json.dumps(0.2)), 0.2)

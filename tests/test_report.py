"""Tables, plots, the HTML page and `mixtune report` from a synthetic study whose cells are worked out by hand."""

from __future__ import annotations

import json
import math
import re

import pytest
from PIL import Image

from mixtune.cli import main as mixtune_main
from mixtune.results import ResultsDB
from mixtune.study.html import render_page
from mixtune.study.plots import make_plots
from mixtune.study.tables import (
    Summary,
    fmt_fraction,
    fraction_table,
    json_rows,
    source_kind,
    stage_table,
    strategy_table,
)

MATH, CODE, GEN = ("math", "minilab_math"), ("code", "minilab_code"), ("general", "minilab_instruct")
# strategy -> stages; each stage -> (math accuracy, code pass@1, general prompt_level_strict) per seed 0, 1, 2.
STRATEGIES = {
    "multi_task": {"all": [(0.5, 0.2, 0.4), (0.6, 0.2, 0.5), (0.7, 0.5, 0.6)]},
    "sequential": {"code": [(0.0, 0.6, 0.1)] * 3,
                   "math": [(0.6, 0.3, 0.1), (0.7, 0.3, 0.1), (0.8, 0.3, 0.1)],
                   "general": [(0.05, 0.0, 0.6), (0.10, 0.0, 0.6), (0.15, 0.0, 0.6)]},
}
# fraction -> (single math, mixed math) per seed 0, 1; only math is checked by hand, other abilities get fillers.
FRACTIONS = {1.0: [(0.8, 0.7), (0.6, 0.5)], 0.25: [(0.4, 0.45), (0.2, 0.35)], 1 / 16: [(0.1, 0.3), (0.1, 0.3)]}


def _scores(db: ResultsDB, run_id: str, stage: str, values: tuple[float, float, float]) -> None:
    for (ability, bench), metric, v in zip((MATH, CODE, GEN), ("strict", "pass@1", "prompt_level_strict"), values):
        # A second metric per benchmark that the tables must NOT pick, and a text summary they must skip.
        db.add_scores(run_id, stage, bench, ability, {metric: v, "n_examples": 100, "note": "synthetic"})
    # A mid-stage evaluation that the end-of-stage tables must ignore.
    db.add_scores(run_id, stage, "minilab_math", "math", {"strict": 0.99}, step=7)


def make_study(study_dir) -> None:
    """Write a study with a strategy grid (3 seeds) and a single/mixed fraction grid (2 seeds)."""
    with ResultsDB(study_dir / "results.sqlite") as db:
        for strategy, stages in STRATEGIES.items():
            for seed in range(3):
                run_id = f"{strategy}-s{seed}"
                db.upsert_run(run_id, study="synth", strategy=strategy, fraction=1.0, seed=seed, setup="strategy")
                db.add_stage(run_id, 0, "base")
                _scores(db, run_id, "base", (0.0, 0.0, 0.05))
                for i, (stage, per_seed) in enumerate(stages.items(), start=1):
                    db.add_stage(run_id, i, stage)
                    _scores(db, run_id, stage, per_seed[seed])
                db.set_status(run_id, "finished")
        for fraction, per_seed in FRACTIONS.items():
            for seed, (single, mixed) in enumerate(per_seed):
                for setup, math_value in (("single:math", single), ("single:code", 0.9), ("mixed", mixed)):
                    run_id = f"{setup}-{fraction_id(fraction)}-s{seed}"
                    db.upsert_run(run_id, study="synth", strategy="multi_task", fraction=fraction, seed=seed,
                                  setup=setup)
                    db.add_stage(run_id, 1, "sft")
                    _scores(db, run_id, "sft", (math_value, 0.3 * fraction, 0.2 + fraction / 10))
    (study_dir / "study.json").write_text(json.dumps({"name": "synth", "protocol": "fixed epochs", "seeds": 3}))


def fraction_id(f: float) -> str:
    return fmt_fraction(f).replace("/", "_")


@pytest.fixture
def study(tmp_path):
    study_dir = tmp_path / "synth"
    study_dir.mkdir()
    make_study(study_dir)
    with ResultsDB(study_dir / "results.sqlite") as db:
        return study_dir, db.rows()


def _close(s: Summary | None, mean: float, std: float | None, n: int) -> bool:
    assert s is not None
    same_std = (s.std is None) if std is None else math.isclose(s.std, std, abs_tol=1e-12)
    return math.isclose(s.mean, mean, abs_tol=1e-12) and same_std and s.n == n


def test_strategy_table_is_final_stage_mean_and_sample_std(study):
    _, rows = study
    table = strategy_table(rows)
    assert table.key_columns == ["strategy", "setup", "fraction"]  # adapter is never set: column dropped
    assert table.value_columns == ["math", "code", "general"]
    assert table.note == ("metrics: math = minilab_math strict, code = minilab_code pass@1, "
                          "general = minilab_instruct prompt_level_strict")
    cols = {c: c for c in table.value_columns}
    # multi_task math: 0.5, 0.6, 0.7 -> mean 0.6, sample std 0.1; code: 0.2, 0.2, 0.5 -> 0.3 ± sqrt(0.03)
    mt = ("multi_task", "strategy", "1")
    assert _close(table.cell(mt, cols["math"]), 0.6, 0.1, 3)
    assert _close(table.cell(mt, cols["code"]), 0.3, math.sqrt(0.03), 3)
    # sequential ends with the general stage: math forgotten to 0.05, 0.10, 0.15 -> 0.1 ± 0.05 (not the 0.7 after
    # its math stage, and not the 0.99 mid-stage evaluation)
    seq = ("sequential", "strategy", "1")
    assert _close(table.cell(seq, cols["math"]), 0.1, 0.05, 3)
    assert _close(table.cell(seq, cols["general"]), 0.6, 0.0, 3)
    text = table.to_text()
    assert "0.600 ± 0.100 (n=3)" in text and "0.100 ± 0.050 (n=3)" in text
    assert "| multi_task | strategy | 1 | 0.600 ± 0.100 (n=3)" in table.to_markdown()


def test_stage_table_shows_forgetting_in_training_order(study):
    _, rows = study
    table = stage_table(rows)
    seq = [k for k in table.keys if k[0] == "sequential"]
    assert [k[-1] for k in seq] == ["0: base", "1: code", "2: math", "3: general"]
    math_col = "math"
    # math after the math stage: 0.6, 0.7, 0.8 -> 0.7 ± 0.1; after the general stage: 0.1 ± 0.05
    assert _close(table.cell(seq[2], math_col), 0.7, 0.1, 3)
    assert _close(table.cell(seq[3], math_col), 0.1, 0.05, 3)


def test_two_base_models_are_two_columns_not_two_seeds(tmp_path):
    # A study folder with runs from two bases (study.base_seeds): a base is not an SFT seed, so each cell is one
    # base's runs and each strategy's stage 0 is its own base model.
    with ResultsDB(tmp_path / "results.sqlite") as db:
        for base, base_math, offset in (("base-mini-b0", 0.0, 0.0), ("base-mini-b1", 0.1, 0.3)):
            tag = base[-2:]
            db.upsert_run(f"base-{tag}", study="s", strategy="base", seed=0, setup="base", base=base)
            _scores(db, f"base-{tag}", "base", (base_math, 0.0, 0.1))
            db.set_status(f"base-{tag}", "finished")
            for seed in range(2):
                run_id = f"seq-s{seed}-{tag}"
                db.upsert_run(run_id, study="s", strategy="sequential", fraction=1.0, seed=seed, setup="mixed",
                              base=base)
                for i, stage in enumerate(("math", "general")):
                    db.add_stage(run_id, i, stage)
                    _scores(db, run_id, stage, (0.5 + offset + 0.1 * seed if i == 0 else 0.0, 0.0, 0.6))
                db.set_status(run_id, "finished")
        rows = db.rows()
    table = strategy_table(rows)
    assert table.key_columns[:2] == ["base", "strategy"]
    cells = {k[0]: table.cell(k, "math") for k in table.keys if k[1] == "sequential"}
    assert sorted(cells) == ["base-mini-b0", "base-mini-b1"] and all(c.n == 2 for c in cells.values())
    stages = stage_table(rows)
    after_math = {k[0]: stages.cell(k, "math") for k in stages.keys if k[-1] == "1: math"}
    assert _close(after_math["base-mini-b0"], 0.55, math.sqrt(0.005), 2)
    assert _close(after_math["base-mini-b1"], 0.85, math.sqrt(0.005), 2)
    stage0 = {k[0]: stages.cell(k, "math") for k in stages.keys if k[-1] == "0: base"}
    assert _close(stage0["base-mini-b0"], 0.0, None, 1) and _close(stage0["base-mini-b1"], 0.1, None, 1)
    # the header names both bases even when the last invocation's meta knew one
    from mixtune.study.html import bases_line
    from mixtune.study.report_cli import read_study

    meta = {"bases": {"base-mini-b0": {"seed": 0, "eval_loss": 0.73}}}
    read_study(tmp_path / "results.sqlite", meta)
    assert bases_line(meta) == "base models: base-mini-b0 (seed 0, eval loss 0.7300), base-mini-b1"


def test_fraction_table_single_vs_mixed(study):
    _, rows = study
    table = fraction_table(rows)
    assert table.key_columns == ["fraction", "sources"]
    assert table.keys == [(f, src) for f in ("1", "1/4", "1/16") for src in ("single", "mixed")]
    # single:math at 1: 0.8, 0.6 -> 0.7 ± sqrt(0.02); the single:code runs (math 0.9) must not count for math
    assert _close(table.cell(("1", "single"), "math"), 0.7, math.sqrt(0.02), 2)
    assert _close(table.cell(("1", "mixed"), "math"), 0.6, math.sqrt(0.02), 2)
    assert _close(table.cell(("1/4", "single"), "math"), 0.3, math.sqrt(0.02), 2)
    assert _close(table.cell(("1/16", "mixed"), "math"), 0.3, 0.0, 2)
    # code single comes only from single:code runs (0.3 * fraction), general single from none
    assert _close(table.cell(("1/4", "single"), "code"), 0.075, 0.0, 2)
    assert table.cell(("1", "single"), "general") is None


def test_fraction_table_splits_mixed_sources_by_strategy(study):
    _, rows = study
    mixed = [r for r in rows if r["setup"] == "mixed"]
    dmt = [{**r, "strategy": "dmt", "run_id": r["run_id"] + "-dmt", "value": r["value"] / 2} for r in mixed]
    table = fraction_table(rows + dmt)
    assert table.keys[:3] == [("1", "single"), ("1", "mixed: multi_task"), ("1", "mixed: dmt")]
    # dmt mixed math at 1: 0.7/2, 0.5/2 -> 0.3 ± sqrt(0.005); the single cell is unchanged
    assert _close(table.cell(("1", "mixed: dmt"), "math"), 0.3, math.sqrt(0.005), 2)
    assert _close(table.cell(("1", "single"), "math"), 0.7, math.sqrt(0.02), 2)


def test_metric_falls_back_by_ability():
    rows = [{"run_id": "r", "stage": "s", "step": -1, "benchmark": "my_math", "ability": "math", "metric": m,
             "value": v} for m, v in (("n", 50.0), ("accuracy", 0.4))]
    table = strategy_table(rows)
    assert table.note == "metrics: math = my_math accuracy"
    assert _close(table.cells[0][0], 0.4, None, 1)


def test_metric_map_override_and_source_kinds(study):
    _, rows = study
    table = strategy_table(rows, {"minilab_math": "n_examples"})
    col = "math"
    assert "math = minilab_math n_examples" in table.note
    assert _close(table.cell(("multi_task", "strategy", "1"), col), 100.0, 0.0, 3)
    assert source_kind("single:math", "multi_task") == ("single", "math")
    assert source_kind("mixed", "multi_task") == ("mixed", None)
    assert source_kind("strategy", "mixed_sequential") == (None, None)
    assert source_kind(None, "code_only") == ("single", "code")
    assert source_kind("mixed", "sequential") == ("mixed", None)
    assert source_kind("single", "math_only") == ("single", "math")
    assert source_kind("single", "multi_task") == ("single", None)
    assert source_kind("single", "math only") == ("single", "math")  # what the study grid writes
    assert source_kind("mixed", "mixed sequential") == ("mixed", None)
    assert source_kind(None, "mixed_sequential") == (None, None)
    assert source_kind("ratio:general full", "general full + mixed (k=1)") == (None, None)


def test_json_rows_keys_and_values(study):
    _, rows = study
    out = json_rows(rows)
    assert len(out) == len(rows)
    required = {"strategy", "fraction", "seed", "stage", "ability", "benchmark", "metric", "value"}
    assert all(required <= set(r) for r in out)
    one = next(r for r in out if r["run_id"] == "multi_task-s0" and r["stage"] == "all"
               and r["benchmark"] == "minilab_math" and r["metric"] == "strict" and r["value"] != 0.99)
    assert {k: one[k] for k in sorted(required)} == {
        "ability": "math", "benchmark": "minilab_math", "fraction": 1.0, "metric": "strict", "seed": 0,
        "stage": "all", "strategy": "multi_task", "value": 0.5}
    assert one["setup"] == "strategy"


def _assert_png(path, min_size=(400, 200)) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100  # lines and text on a white background, not a blank canvas


def test_plots_are_valid_pngs(study, tmp_path):
    _, rows = study
    paths = make_plots(rows, tmp_path / "report")
    assert [p.name for p in paths] == ["headline.png", "scaling.png", "stages.png"]
    for p in paths:
        _assert_png(p)


def test_no_scaling_plot_with_a_single_fraction(study, tmp_path):
    _, rows = study
    strategy_rows = [r for r in rows if r["setup"] == "strategy"]
    assert [p.name for p in make_plots(strategy_rows, tmp_path / "r")] == ["headline.png", "stages.png"]


def test_html_page_is_self_contained(study, tmp_path):
    _, rows = study
    images = make_plots(rows, tmp_path / "report")
    meta = {"protocol": "matched_steps", "seeds": [0, 1, 2], "runs": [f"r{i}" for i in range(50)], "failed": ["r7"],
            "bases": {"base-mini-b0": {"path": "runs/base-mini/final", "eval_loss": 0.73250, "seed": 0},
                      "base-mini-b1": {"path": "runs/base-mini-b1/final", "eval_loss": 0.707847, "seed": 1}}}
    page = render_page("synth", [strategy_table(rows)], images, meta)
    assert "training protocol: matched steps" in page
    assert "base models: base-mini-b0 (seed 0, eval loss 0.7325), base-mini-b1 (seed 1, eval loss 0.7078)" in page
    assert "<dd>0, 1, 2</dd>" in page and "r49" not in page  # short lists shown, the list of every run is not
    assert "failed runs (not in the tables): r7" in page
    assert page.count("<img ") == 3 and page.count("src='data:image/png;base64,") == 3
    assert "<script" not in page
    # nothing fetched from elsewhere: every src/href is a data URI
    assert all(u.startswith("data:") for u in re.findall(r"(?:src|href)='([^']*)'", page))


def test_report_cli_writes_report_and_prints_table(study, capsys):
    study_dir, _ = study
    assert mixtune_main(["report", str(study_dir)]) == 0
    out = capsys.readouterr().out
    assert "Strategy × ability" in out and "0.600 ± 0.100 (n=3)" in out
    html_path = study_dir / "report" / "index.html"
    assert f"report: {html_path}" in out
    page = html_path.read_text()
    assert "synth" in page and "training protocol: fixed epochs" in page and "0.700 ± 0.141 (n=2)" in page
    assert "| multi_task |" in (study_dir / "report" / "tables.md").read_text()


def test_report_cli_json_is_one_parseable_line(study, capsys):
    study_dir, rows = study
    assert mixtune_main(["report", str(study_dir), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    data = json.loads(out)
    assert isinstance(data, list) and len(data) == len(rows)
    for key in ("strategy", "fraction", "seed", "stage", "ability", "benchmark", "metric", "value"):
        assert key in data[0]
    assert not (study_dir / "report").exists()


def test_report_of_an_empty_study(tmp_path, capsys):
    ResultsDB(tmp_path / "results.sqlite").close()
    assert mixtune_main(["report", str(tmp_path)]) == 0
    assert "no scores recorded yet" in capsys.readouterr().out
    assert "No scores recorded yet" in (tmp_path / "report" / "index.html").read_text()


def test_report_cli_errors(tmp_path, capsys):
    assert mixtune_main(["report", str(tmp_path)]) == 2
    assert "no results database" in capsys.readouterr().err
    ResultsDB(tmp_path / "results.sqlite").close()
    assert mixtune_main(["report", str(tmp_path), "--metric-map", "gsm8k"]) == 2
    assert "BENCHMARK=METRIC" in capsys.readouterr().err

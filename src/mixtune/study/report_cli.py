"""`mixtune report STUDY_DIR`: tables, plots and one HTML page from a study's results database.

Reads `STUDY_DIR/results.sqlite` (and `STUDY_DIR/study.json`, the study's meta, when present) and the runs' stage
folders (loss curves); writes `STUDY_DIR/report/{index.html, tables.md, headline.png, scaling.png, stages.png,
loss.png}` (the plots that have data; the tables include what preference stages report besides ability scores,
`study/stage_metrics.py`); prints the strategy × ability table (and the fraction × ability table when
the study has one) and the path of the HTML page.
With `--json` it writes nothing and prints only the score rows as one JSON list on one line; each row carries its
run's `protocol`, `steps` (optimizer steps) and `tokens` (training tokens), summed over the run's stages.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mixtune.results import DB_NAME, ResultsDB
from mixtune.runs import atomic_write_text
from mixtune.study.stage_metrics import stage_metrics_table
from mixtune.study.tables import (
    BASE_RUN,
    annotate_rows,
    fraction_table,
    json_rows,
    protocols_of,
    stage_table,
    strategy_table,
)

META_NAME = "study.json"


def parse_metric_map(items: list[str]) -> dict[str, str]:
    """['gsm8k=strict', 'mbpp=pass@1'] -> {'gsm8k': 'strict', 'mbpp': 'pass@1'}."""
    out = {}
    for item in items:
        bench, sep, metric = item.partition("=")
        if not sep or not bench or not metric:
            raise ValueError(f"--metric-map expects BENCHMARK=METRIC, got {item!r}")
        out[bench.strip()] = metric.strip()
    return out


def load_meta(study_dir: Path) -> dict[str, Any]:
    path = study_dir / META_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def read_study(db_path: Path, meta: dict[str, Any]) -> tuple[list[dict], list[dict], list[str]]:
    """(score rows annotated with protocol / steps / tokens, run rows with their protocol, one line per benchmark
    left without a score: `run/stage/benchmark: failed|skipped`)."""
    with ResultsDB(db_path) as db:
        rows, runs, totals = db.rows(), db.runs(), db.run_totals()
        unscored = [f"{r['run_id']}/{r['stage']}/{r['benchmark']}: {r['text']}" for r in db.rows(numeric_only=False)
                    if r["metric"] == "status" and r["text"] in ("failed", "skipped")]
    default = meta.get("protocol")
    runs = [{**r, "protocol": None if r["run_id"] == BASE_RUN else (r.get("protocol") or default)} for r in runs]
    rows = annotate_rows(rows, totals, {r["run_id"]: r["protocol"] for r in runs}, default)
    # every base a run of the folder started from is named in the header, also those of an earlier invocation
    bases = meta.setdefault("bases", {}) if isinstance(meta.get("bases", {}), dict) else {}
    for r in runs:
        if r.get("base") and r["base"] not in bases:
            bases[r["base"]] = {}
    return rows, runs, unscored


def write_report(study_dir: str | Path, rows: list[dict], meta: dict[str, Any] | None = None,
                 metric_map: dict[str, str] | None = None, runs: list[dict] | None = None,
                 unscored: list[str] | None = None) -> tuple[Path, list]:
    """Write tables, plots and the HTML page into `study_dir/report/`; return (html path, tables). `runs` (with
    their protocol) name the loss curves read from the run folders."""
    from mixtune.study.curves import loss_plot, read_loss_curves  # matplotlib: only when a report is drawn
    from mixtune.study.html import write_page
    from mixtune.study.plots import make_plots

    study_dir = Path(study_dir)
    meta = meta or {}
    out_dir = study_dir / "report"
    tables = [strategy_table(rows, metric_map), fraction_table(rows, metric_map), stage_table(rows, metric_map),
              stage_metrics_table(study_dir / DB_NAME)]
    images = make_plots(rows, out_dir, metric_map)
    runs = runs or []
    curves = read_loss_curves(study_dir, [r["run_id"] for r in runs])
    loss = loss_plot(curves, runs, out_dir / "loss.png")
    images += [loss] if loss else []
    atomic_write_text(out_dir / "tables.md", "\n\n".join(t.to_markdown() for t in tables if t.keys) + "\n")
    study = str(meta.get("name") or meta.get("study") or study_dir.resolve().name)
    page = write_page(out_dir / "index.html", study, tables, images, meta, protocols_of(rows), unscored)
    return page, tables


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixtune report", description=__doc__.splitlines()[0])
    p.add_argument("study_dir", help=f"the study folder (holds {DB_NAME}), e.g. runs/dmt-mini")
    p.add_argument("--json", action="store_true", help="print only the score rows as one JSON list; write nothing")
    p.add_argument("--metric-map", nargs="*", default=[], metavar="BENCHMARK=METRIC",
                   help="report this metric for a benchmark instead of the default (e.g. gsm8k=strict)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    study_dir = Path(args.study_dir)
    db_path = study_dir / DB_NAME
    if not db_path.exists():
        print(f"mixtune report: no results database at {db_path} (run `mixtune study` first)", file=sys.stderr)
        return 2
    try:
        metric_map = parse_metric_map(args.metric_map)
    except ValueError as e:
        print(f"mixtune report: {e}", file=sys.stderr)
        return 2
    meta = load_meta(study_dir)
    rows, runs, unscored = read_study(db_path, meta)
    if args.json:
        print(json.dumps(json_rows(rows)))
        return 0
    page, tables = write_report(study_dir, rows, meta, metric_map, runs, unscored)
    for table in tables[:2]:
        if table.keys:
            print(table.to_text(), end="\n\n")
    if not rows:
        print("no scores recorded yet")
    print(f"report: {page}")
    return 0

"""`mixtune analyze capacity -c recipes/analysis/capacity.yaml`: knowledge capacity in bits per parameter
(Allen-Zhu & Li, Physics of LMs 3.3; METHODS §8).

Every cell of `analysis.capacity.runs` (model size × N × exposures × junk share) trains a Llama from scratch on
bioS(N) (capacity_train.py) and measures its bits with the bit-complexity lower bound (bits.py); R = bits / counted
parameters (only the vocabulary rows the data uses). A finished cell (`cells/<id>/result.json`) is never redone.

Writes into the run folder (`runs/<name>/`): `tokenizer/` (BPE on the bioS text + junk), `cells/<id>/` (result and
log), `results.sqlite`, `summary.json`, `report/capacity.png` and `report/index.html`.
Results rows: run `capacity/<cell>` (strategy "capacity", setup = cell id); `metrics` with stage `capacity` at the
cell's last step: params_total, params_non_embedding, params_counted, used_vocab_rows, n_people, exposures,
junk_fraction, steps, tokens, bio_tokens, junk_tokens, p1, p2 (per-person mean nats), name_bits, value_bits, bits,
bits/<gender|birth_date|birth_city|university|major|employer|work_city>, max_bits, employer_city_bits
(bits.py: the finite-N table employer -> city), bits_per_param,
memorised_fraction, final_train_loss, tokens_per_s, wall_s; and the curve `train_loss` (stage and name
`train_loss`, one row per logged step).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from matplotlib.figure import Figure

from mixtune.analysis.capacity_train import cell_id, tokenizer_texts, train_cell
from mixtune.analysis.report import AnalysisError, analysis_main, markdown_table, record_run, run_parallel, write_page
from mixtune.config import Recipe
from mixtune.results import DB_NAME, ResultsDB
from mixtune.runs import atomic_write_json, atomic_write_text, prepare_run_dir

PAPER = {1000: 2.0, 100: 1.0}
"""Physics of LMs 3.3: bits per parameter at 1000 and at 100 exposures (GPT-2, no junk)."""
SCALARS = ("params_total", "params_non_embedding", "params_counted", "used_vocab_rows", "n_people", "exposures",
           "junk_fraction", "steps", "tokens", "bio_tokens", "junk_tokens", "p1", "p2", "name_bits", "value_bits",
           "bits", "max_bits", "employer_city_bits", "bits_per_param", "memorised_fraction", "final_train_loss", "tokens_per_s", "wall_s")


def prepare_tokenizer(recipe: Recipe, out: Path, log=print) -> Path:
    """The analysis's BPE tokenizer (digits split, as the mini-lab's), cached by its inputs."""
    from mixtune.data.tokenizer_train import train_tokenizer

    cap = recipe.analysis.capacity
    folder = out / "tokenizer"
    stamp = {"vocab_size": cap.vocab_size, "seed": cap.seed,
             "max_people": max((r.n_people for r in cap.runs), default=0)}
    stamp_path = folder / "stamp.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        return folder
    corpus = out / "tokenizer-text.txt"
    atomic_write_text(corpus, "\n".join(tokenizer_texts(stamp["max_people"], cap.seed)) + "\n")
    train_tokenizer([corpus], cap.vocab_size, 2, folder)
    atomic_write_json(stamp_path, stamp)
    log(f"[capacity] tokenizer: {cap.vocab_size} tokens -> {folder}")
    return folder


def _run_cell(recipe: Recipe, run_json: dict, tokenizer_dir: str, folder: str) -> dict:
    """Worker entry: train and measure one cell, write its result.json."""
    from mixtune.config import CapacityRun

    record = train_cell(recipe, CapacityRun.model_validate(run_json), Path(tokenizer_dir), Path(folder))
    atomic_write_json(Path(folder) / "result.json", record)
    return record


def run_capacity(recipe: Recipe, log=print) -> dict:
    """Train every unfinished cell, record all cells, plot and write the page; returns the summary."""
    cap = recipe.analysis.capacity
    if not cap.runs:
        raise AnalysisError("analysis.capacity.runs is empty: give at least one cell (see recipes/analysis/)")
    t0 = time.perf_counter()
    out = prepare_run_dir(recipe, verb="analyze capacity")
    tokenizer_dir = prepare_tokenizer(recipe, out, log)
    cells = {cell_id(r): r for r in cap.runs}
    jobs = [(cid, _run_cell, (recipe, r.model_dump(), str(tokenizer_dir), str(out / "cells" / cid)),
             out / "cells" / cid / "train.log")
            for cid, r in cells.items() if not (out / "cells" / cid / "result.json").exists()]
    log(f"[capacity] {len(cells)} cells, {len(cells) - len(jobs)} already done; running {len(jobs)} "
        f"with {min(cap.workers, max(1, len(jobs)))} worker(s)")
    run_parallel(jobs, cap.workers, log)
    records = [json.loads((out / "cells" / cid / "result.json").read_text()) for cid in cells]
    with ResultsDB(out / DB_NAME) as db:
        for r in records:
            values = {k: r[k] for k in SCALARS} | {k: v for k, v in r.items() if k.startswith("bits/")}
            record_run(db, "capacity", r["cell"], "capacity", values, r["steps"], config=cells[r["cell"]].model_dump(),
                       curves={"train_loss": r["curve"]})
    plot = capacity_plot(records, out / "report" / "capacity.png")
    summary = {"cells": [{k: r[k] for k in ("cell", *SCALARS)} for r in records], "paper_bits_per_param": PAPER,
               "log2_n0": records[0]["log2_n0"], "log2_s0": records[0]["log2_s0"],
               "wall_s_this_invocation": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "summary.json", summary)
    rows = table_rows(records)
    atomic_write_text(out / "report" / "capacity.md", markdown_table(TABLE_HEADER, rows) + "\n")
    write_page(out / "report" / "index.html", "mixtune analysis: knowledge capacity", [
        (f"bioS(N) with N0 = 2^{records[0]['log2_n0']:.2f} names and log2 S0 = {records[0]['log2_s0']:.2f} bits of "
        "attributes per person; R = bits / counted parameters (used vocabulary rows only). Paper: ~2 bits/param at "
        "1000 exposures, ~1 at 100; 7/8 junk cuts capacity ~20x at 100 exposures."),
        ("memorised = bits / the bits of a model that knows every biography: near 1, the cell is limited by its data "
        "(N too small), not by the model, and R is a lower bound on the capacity.")],
        [("capacity cells", TABLE_HEADER, rows)], [(plot, "R (bits per counted parameter) against parameters")],
        {"recipe": recipe.name, "cells": list(cells)})
    log(f"[capacity] report: {out / 'report' / 'index.html'}")
    return summary


TABLE_HEADER = ("cell", "params counted", "N", "exposures", "junk", "steps", "bits", "max bits", "memorised",
                "bits/param", "wall s")


def table_rows(records: list[dict]) -> list[list]:
    return [[r["cell"], r["params_counted"], r["n_people"], r["exposures"], r["junk_fraction"], r["steps"],
             round(r["bits"]), round(r["max_bits"]), r["memorised_fraction"], r["bits_per_param"], round(r["wall_s"])]
            for r in sorted(records, key=lambda r: (r["exposures"], r["junk_fraction"], r["params_counted"]))]


def capacity_plot(records: list[dict], path: Path) -> Path:
    """R against counted parameters, one line per (exposures, junk, N), the paper's 2 and 1 bits/param as dashed
    lines (log y when every R is positive, so both scales show); right panel: the memorised fraction."""
    fig = Figure(figsize=(11, 4), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2)
    for exposures, junk, n in sorted({(r["exposures"], r["junk_fraction"], r["n_people"]) for r in records}):
        pts = sorted((r["params_counted"], r["bits_per_param"], r["memorised_fraction"]) for r in records
                     if (r["exposures"], r["junk_fraction"], r["n_people"]) == (exposures, junk, n))
        label = f"{exposures} exposures, N={n}" + (f", junk {junk:g}" if junk else "")
        marker = "s" if junk else ("^" if exposures >= 1000 else "o")
        left.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
        right.plot([p[0] for p in pts], [p[2] for p in pts], marker=marker, label=label)
    for exposures, level in PAPER.items():
        left.axhline(level, linestyle="--", color="gray", linewidth=1)
        left.annotate(f"paper, {exposures} exposures", (0.01, level), xycoords=("axes fraction", "data"),
                      fontsize="x-small", color="gray", va="bottom")
    if all(r["bits_per_param"] > 0 for r in records):
        left.set_yscale("log")
    right.set_ylim(min(0.0, right.get_ylim()[0]), 1.05)
    for ax, ylabel in ((left, "bits per counted parameter (R)"), (right, "memorised fraction (bits / max bits)")):
        ax.set_xscale("log")
        ax.set_xlabel("counted parameters")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="x-small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def main(argv: list[str]) -> int:
    """`mixtune analyze capacity -c recipe.yaml [key.sub=value ...]`."""
    return analysis_main("capacity", "knowledge capacity: bits per parameter on bioS(N)", run_capacity, argv)

"""What the analyses share: the results-database rows, cells run in parallel worker processes, and one small
self-contained HTML page (the study report's CSS and PNG embedding, study/html.py; analysis may import study).

Results rows: every analysis run is a row of `runs` (run_id `<analysis>/<name>`, study = the analysis name,
strategy = the run's kind, setup = its label, config_json = what it was made from) and its numbers are rows of
`metrics` (stage = the analysis name or a curve's name, step = the optimizer step the number belongs to).
"""

from __future__ import annotations

import html
import json
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from mixtune.errors import UserError
from mixtune.results import ResultsDB
from mixtune.runs import atomic_write_text
from mixtune.study.html import CSS, png_data_uri


class AnalysisError(UserError, ValueError):
    """A recipe an analysis cannot run (an empty grid, a missing checkpoint...); the CLI prints it as one line."""


SECTIONS = ["analysis", "model", "train", "world", "tokenizer"]
"""The recipe sections `mixtune analyze <what> --help` lists."""


def analysis_main(what: str, description: str, run: Callable[..., dict], argv: list[str]) -> int:
    """`mixtune analyze <what> -c recipe.yaml [key.sub=value ...]`: parse the recipe, run the analysis (its user
    errors are printed as one line with exit 2 by `mixtune.cli`)."""
    from mixtune.cliutil import parse_recipe, recipe_parser

    _, recipe = parse_recipe(recipe_parser(f"analyze {what}", description, sections=SECTIONS), argv)
    run(recipe)
    return 0


def record_run(db: ResultsDB, analysis: str, name: str, kind: str, values: dict[str, float], step: int,
               config: dict | None = None, curves: dict[str, Iterable[tuple[int, float]]] | None = None) -> str:
    """One finished analysis run: its `runs` row, its scalar numbers (`metrics`, stage = `analysis`, at `step`) and
    its curves (`metrics`, stage = curve name, one row per (step, value)); returns the run id."""
    run_id = f"{analysis}/{name}"
    db.upsert_run(run_id, study=analysis, strategy=kind, setup=name, config_json=config or {}, status="finished",
                  finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    db.clear_metrics(run_id)  # a re-recorded run replaces its numbers
    db.add_metrics(run_id, analysis, step, {k: float(v) for k, v in values.items()})
    for curve, points in (curves or {}).items():
        for s, v in points:
            db.add_metric(run_id, curve, int(s), curve, float(v))
    return run_id


def worker_threads(workers: int) -> int:
    """Torch threads of each of `workers` parallel runs: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _worker(fn: Callable[..., dict], args: tuple, log_path: str, threads: int) -> dict:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    import torch

    torch.set_num_threads(threads)
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as fh, redirect_stdout(fh), redirect_stderr(fh):
        return fn(*args)


def run_parallel(jobs: Sequence[tuple[str, Callable[..., dict], tuple, Path]], workers: int, log=print
                 ) -> dict[str, dict]:
    """Run `(name, fn, args, log_path)` jobs in `workers` spawned processes (one torch thread each when there are
    more jobs than cores allow two threads); returns name -> fn's result. A failing job is reported with its
    traceback and the others go on; then RuntimeError names the failures."""
    if not jobs:
        return {}
    workers = max(1, min(workers, len(jobs)))
    threads = worker_threads(workers)
    results, failed = {}, []
    if workers == 1:  # in-process: simpler to debug, and tests stay fast
        for name, fn, args, log_path in jobs:
            results[name] = fn(*args)
            log(f"[{name}] done")
        return results
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_worker, fn, args, str(log_path), threads): (name, log_path)
                   for name, fn, args, log_path in jobs}
        for fut in as_completed(futures):
            name, log_path = futures[fut]
            try:
                results[name] = fut.result()
                log(f"[{name}] done (log: {log_path})")
            except Exception:  # noqa: BLE001 -- one failed job is reported; the rest of the grid goes on
                failed.append(name)
                log(f"[{name}] failed (log: {log_path}):\n{traceback.format_exc()}")
    if failed:
        raise RuntimeError(f"{len(failed)} analysis jobs failed: {failed}")
    return results


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers for tables: counts as integers with separators (up to 1e9), other large or tiny numbers with `digits`
    significant digits, the rest with `digits` decimals."""
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, (int, float)):
        if abs(value) >= 1e9 or (isinstance(value, float) and (abs(value) >= 1e4 or 0 < abs(value) < 1e-3)):
            return f"{value:.{digits}g}"
        if isinstance(value, int) or value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows])


def html_table(caption: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return (f"<table>\n<caption>{esc(caption)}</caption>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n"
            "</tbody>\n</table>")


def write_page(path: Path, title: str, paragraphs: Sequence[str], tables: Sequence[tuple[str, Sequence[str],
               Sequence[Sequence[Any]]]], images: Sequence[tuple[Path, str]], meta: dict | None = None) -> Path:
    """One self-contained page (inline CSS, PNGs as data URIs, no scripts): title, text, tables, plots, settings."""
    esc = html.escape
    parts = [f"<h1>{esc(title)}</h1>", f"<p class='meta'>generated {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>"]
    parts += [f"<p>{esc(p)}</p>" for p in paragraphs]
    parts += [html_table(*t) for t in tables]
    for img, caption in images:
        parts.append(f"<figure><img alt='{esc(Path(img).stem)} plot' src='{png_data_uri(img)}'>"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    if meta:
        parts.append(f"<details><summary>settings</summary><pre>{esc(json.dumps(meta, indent=1))}</pre></details>")
    page = ("<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>\n<link rel='icon' href='data:,'>\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(parts)
            + "\n</body>\n</html>\n")
    atomic_write_text(path, page)
    return path

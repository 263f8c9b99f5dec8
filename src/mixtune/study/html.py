"""One self-contained HTML page for a study: tables and plots, no network and no scripts.

Plots are embedded as base64 PNG data URIs and the CSS is inline, so the file can be mailed, archived or opened
offline. The favicon is an empty data URI so browsers do not request one (a 404 there would be a console error).
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any

from mixtune.runs import atomic_write_text
from mixtune.study.tables import Table

# Keys of the study's meta (study.json) that name how data fractions were trained.
PROTOCOL_KEYS = ("protocols", "protocol", "fraction_protocol", "data_fraction_protocol")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; background: #fff; }
h1 { margin-bottom: 0.2em; }
p.meta { color: #555; margin: 0.2em 0; }
p.failed { color: #a00; }
table { border-collapse: collapse; margin: 1em 0 2em; font-size: 0.9em; }
caption { text-align: left; font-weight: bold; padding: 0.4em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
thead th { background: #f0f0f0; text-align: center; }
tbody th { text-align: left; font-weight: normal; background: #fafafa; }
tbody tr:nth-child(even) td { background: #f7f9fc; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.1em 1em; color: #555; font-size: 0.9em; }
dt { font-weight: bold; }
"""

MAX_LIST = 20  # longer lists in the meta (e.g. every run id) are not shown

INTERVAL = "dots = each seed, marker or bar = the mean, error bar = its 95% t-interval (clipped to [0, 1] for rates)"
CAPTIONS = {
    "headline": f"The strategy × ability table as bars (the base model lighter, first); {INTERVAL}.",
    "scaling": f"Scaling: each ability against the data fraction (log scale), the base dashed; {INTERVAL}.",
    "stages": f"Each ability (a row, one y-axis) after each stage of each strategy (a column), from the base model "
              f"at stage 0: a drop is forgetting; {INTERVAL}.",
    "loss": "Training loss of every run, its stages end to end (dotted lines: stage starts), one line per seed.",
}


def protocol_line(meta: dict[str, Any] | None, protocols: list[str] | None = None) -> str | None:
    """'training protocol: matched steps (1,625 optimizer steps per run)' from the rows' protocols, else the meta's;
    several protocols are named together: the tables and plots then show them side by side."""
    found = list(protocols or [])
    if not found and meta:
        for key in PROTOCOL_KEYS:
            if meta.get(key):
                value = meta[key]
                found = [str(v) for v in (value if isinstance(value, list) else [value])]
                break
    if not found:
        return None
    names = ", ".join(p.replace("_", " ") for p in found)
    budget = (f" ({meta['step_budget']:,} optimizer steps per matched-steps run)"
              if meta and meta.get("step_budget") and "matched_steps" in found else "")
    return f"training protocol{'s' if len(found) > 1 else ''}: {names}{budget}" + (
        " (side by side in every table and plot)" if len(found) > 1 else "")


def png_data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _meta_list(meta: dict[str, Any]) -> str:
    """The meta's scalars and short lists of scalars as a definition list (long lists stay in study.json)."""
    items = []
    for key, value in meta.items():
        if isinstance(value, list) and len(value) <= MAX_LIST and all(isinstance(v, (str, int, float)) for v in value):
            value = ", ".join(map(str, value))
        if isinstance(value, (str, int, float, bool)) and key not in PROTOCOL_KEYS:
            items.append((key, value))
    if not items:
        return ""
    body = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items)
    return f"<details><summary>study settings</summary><dl>{body}</dl></details>"


def bases_line(meta: dict[str, Any] | None) -> str:
    """'base models: name (seed s, eval loss x), ...' from the study's meta, so every table is read beside the bases
    it started from ('' when the meta names none)."""
    bases = (meta or {}).get("bases") or {}
    parts = []
    for name, base in bases.items():
        facts = [f"seed {base['seed']}" if base.get("seed") is not None else "",
                 f"eval loss {base['eval_loss']:.4f}" if isinstance(base.get("eval_loss"), (int, float)) else ""]
        facts = [f for f in facts if f]
        parts.append(f"{name} ({', '.join(facts)})" if facts else f"{name}: {base['path']}" if base.get("path")
                     else name)
    return "base models: " + ", ".join(parts) if parts else ""


def render_page(study: str, tables: list[Table], images: list[Path], meta: dict[str, Any] | None = None,
                protocols: list[str] | None = None, unscored: list[str] | None = None) -> str:
    """The whole page as a string: header, the tables (skipping empty ones), then the plots. `unscored` lists the
    benchmarks that have no score (failed: no valid sample; skipped: unreachable judge)."""
    esc = html.escape
    parts = [f"<h1>mixtune study report: {esc(study)}</h1>"]
    protocol = protocol_line(meta, protocols)
    if protocol:
        parts.append(f"<p class='meta protocol'>{esc(protocol)}</p>")
    if bases_line(meta):
        parts.append(f"<p class='meta bases'>{esc(bases_line(meta))}</p>")
    parts.append(f"<p class='meta'>generated {esc(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>")
    if meta and meta.get("failed"):  # the study runner lists runs that raised: their rows are missing
        failed = ", ".join(map(str, meta["failed"]))
        parts.append(f"<p class='meta failed'>failed runs (not in the tables): {esc(failed)}</p>")
    if unscored:
        parts.append(f"<p class='meta failed'>benchmarks without a score: {esc('; '.join(unscored))}</p>")
    if meta:
        parts.append(_meta_list(meta))
    parts.append("<h2>Tables</h2>")
    shown = [t for t in tables if t.keys]
    parts += [t.to_html() for t in shown] or ["<p>No scores recorded yet.</p>"]
    if images:
        parts.append("<h2>Plots</h2>")
    for path in images:
        path = Path(path)
        caption = CAPTIONS.get(path.stem, path.stem)
        parts.append(f"<figure><img alt='{esc(path.stem)} plot' src='{png_data_uri(path)}'>"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
            f"<link rel='icon' href='data:,'>\n<title>mixtune report: {esc(study)}</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def write_page(out_path: str | Path, study: str, tables: list[Table], images: list[Path],
               meta: dict[str, Any] | None = None, protocols: list[str] | None = None,
               unscored: list[str] | None = None) -> Path:
    """Render and write the page atomically (a reader never sees half a report); return its path."""
    out_path = Path(out_path)
    atomic_write_text(out_path, render_page(study, tables, images, meta, protocols, unscored))
    return out_path

"""Curve plots of the post-training analyses (pruning, test-time scaling) as small PNGs: one panel per measured
quantity, one line per series (matplotlib's object API on the Agg canvas, as study/plots.py)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from mixtune.runs import atomic_write_file

Curve = dict[str, list[tuple[float, float]]]
"""series label -> [(x, y), ...]."""


def curves_png(panels: dict[str, Curve], out_path: str | Path, *, xlabel: str, ylabel: str = "score",
               log2_x: bool = False, dashed: tuple[str, ...] = (), references: dict[str, dict[str, float]] | None = None,
               dpi: int = 72) -> Path:
    """One panel per key of `panels` (its title), lines per series; series whose label contains a `dashed` token
    are dashed; `references[panel][label]` draws a horizontal dotted line (e.g. the dense model)."""
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.0 * ncols, 3.0 * nrows), dpi=dpi, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (title, series) in zip(axes, panels.items()):
        for label, points in series.items():
            points = sorted(points)
            style = "--" if any(tok in label for tok in dashed) else "-"
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", markersize=3, label=label)
        for label, value in (references or {}).get(title, {}).items():
            ax.axhline(value, color="grey", linestyle=":", linewidth=1, label=label)
        if log2_x:
            ax.set_xscale("log", base=2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=5, ncol=2)
    out_path = Path(out_path)
    return atomic_write_file(out_path, lambda tmp: fig.savefig(tmp, format="png"))

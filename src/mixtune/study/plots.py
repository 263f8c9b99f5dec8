"""Study plots as PNG files (matplotlib's object API on the Agg canvas: no pyplot state, no display needed).

- `scaling_plot`: one panel per ability, x = data fraction (log scale), one line per source kind (single vs mixed,
  DMT RQ1/RQ2) or, in a study without a fraction grid, per strategy; error bars = sample std over seeds.
- `stages_plot`: one panel per strategy, x = stage, one line per ability: forgetting across stages (DMT RQ4).
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from mixtune.study.tables import (
    KEY_FIELDS,
    Summary,
    ability_columns,
    aggregate,
    choose_metrics,
    final_rows,
    fmt_fraction,
    fraction_grid_rows,
    main_rows,
    multi_stage_rows,
    run_key,
    stage_order,
)

DPI = 100


def _panels(n: int, width: float = 4.0, height: float = 3.2) -> tuple[Figure, list]:
    """A figure with n panels in at most 4 columns; unused panels hidden."""
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _errorbar(ax, xs: list[float], summaries: list[Summary], label: str) -> None:
    ys = [s.mean for s in summaries]
    yerr = [s.std or 0.0 for s in summaries]
    ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=label)


def scaling_plot(rows: list[dict], out_path: str | Path, metric_map: dict[str, str] | None = None) -> Path | None:
    """Ability vs data fraction; None (no file) when the study has fewer than two fractions."""
    chosen = choose_metrics(rows, metric_map)
    final = final_rows(main_rows(rows, metric_map))
    grid = fraction_grid_rows(final)
    if grid:  # single vs mixed sources
        series_rows, series_of = grid, (lambda r: r["_source"])
    else:  # strategies at several fractions
        series_rows, series_of = final, (lambda r: " ".join(run_key(r, ("strategy", "setup", "adapter"))).strip())
    fractions = {r["fraction"] for r in series_rows if r.get("fraction") is not None}
    if len(fractions) < 2:
        return None
    agg = aggregate([r for r in series_rows if r.get("fraction") is not None],
                    lambda r: (series_of(r), r["fraction"], r.get("ability") or "other", r["benchmark"]))
    series = list(dict.fromkeys(k[0] for k in agg))
    cols = ability_columns(series_rows)
    fig, axes = _panels(len(cols))
    for ax, (ability, bench) in zip(axes, cols):
        for name in series:
            pts = sorted((k[1], s) for k, s in agg.items() if k[0] == name and k[2:] == (ability, bench))
            if pts:
                _errorbar(ax, [p[0] for p in pts], [p[1] for p in pts], name)
        ax.set_xscale("log", base=2)
        ticks = sorted(fractions)
        ax.set_xticks(ticks, [fmt_fraction(f) for f in ticks])
        ax.set_title(f"{ability} ({bench})")
        ax.set_xlabel("data fraction")
        ax.set_ylabel(chosen.get(bench, "value"))
        _floor_at_zero(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, out_path)


def stages_plot(rows: list[dict], out_path: str | Path, metric_map: dict[str, str] | None = None) -> Path | None:
    """Each ability after each stage, one panel per strategy (strategy, setup, adapter, fraction) of runs with at
    least two scored stages; None when there are none."""
    picked = multi_stage_rows(main_rows(rows, metric_map))
    if not picked:
        return None
    order = stage_order(picked)
    used = tuple(f for f in KEY_FIELDS if any(r.get(f) not in (None, "") for r in picked))
    agg = aggregate(picked, lambda r: (run_key(r, used), order[r["run_id"]].index(r["stage"]), r["stage"],
                                       r.get("ability") or "other", r["benchmark"]))
    groups = list(dict.fromkeys(k[0] for k in agg))
    cols = ability_columns(picked)
    fig, axes = _panels(len(groups))
    for ax, group in zip(axes, groups):
        stage_names = dict(sorted({(k[1], k[2]) for k in agg if k[0] == group}))
        for ability, bench in cols:
            pts = sorted((k[1], s) for k, s in agg.items() if k[0] == group and k[3:] == (ability, bench))
            if pts:
                _errorbar(ax, [p[0] for p in pts], [p[1] for p in pts], f"{ability} ({bench})")
        ax.set_xticks(list(stage_names), [f"{i}: {n}" for i, n in stage_names.items()], rotation=20, ha="right",
                      fontsize="small")
        ax.set_title(" · ".join(v for v in group if v))
        ax.set_xlabel("stage")
        ax.set_ylabel("score (main metric)")
        _floor_at_zero(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, out_path)


def _floor_at_zero(ax) -> None:
    """Scores are rates or positive judge scores: start the axis at 0 so a drop reads at its true size."""
    if ax.get_ylim()[0] >= 0 or all(min(line.get_ydata(), default=0) >= 0 for line in ax.get_lines()):
        ax.set_ylim(bottom=0)


def _save(fig: Figure, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png")
    return out_path


def make_plots(rows: list[dict], out_dir: str | Path, metric_map: dict[str, str] | None = None) -> list[Path]:
    """Write `scaling.png` and `stages.png` into out_dir (those that have data); return the paths written."""
    out_dir = Path(out_dir)
    made = [scaling_plot(rows, out_dir / "scaling.png", metric_map), stages_plot(rows, out_dir / "stages.png",
                                                                                   metric_map)]
    return [p for p in made if p is not None]

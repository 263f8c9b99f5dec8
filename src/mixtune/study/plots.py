"""Study plots as PNG files (matplotlib's object API on the Agg canvas: no pyplot state, no display needed).

Every score point is a cell of the tables: the mean over seeds (a marker), each seed's own value (small dots
beside it) and the t-based 95% interval of the mean (error bar; clipped to [0, 1] for rates, so n = 2 never draws a
rate below 0). Each figure names the benchmark and metric of every ability and the protocol of its runs.

- `headline_plot`: the strategy × ability table as grouped bars (one group per strategy, the base first; one
  panel per protocol, abilities whose metric is not a rate, e.g. MT-Bench's 1-10, in their own row of panels).
- `stages_plot`: a row of panels per ability (a shared y-axis along the row), a column per multi-stage strategy,
  x = stage from the base (stage 0) on: forgetting across stages (DMT RQ4).
- `scaling_plot`: one panel per ability, x = data fraction (log scale), one line per source kind (single vs mixed,
  DMT RQ1/RQ2) or per strategy; the base as a dashed line.
Loss curves are drawn by `mixtune.study.curves` (`mixtune.study.report_cli` writes all of them).
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mixtune.study.cells import Summary, fmt_fraction
from mixtune.study.tables import (
    ABILITIES,
    BASE_RUN,
    KEY_FIELDS,
    ability_columns,
    aggregate,
    choose_metrics,
    final_rows,
    fraction_grid_rows,
    is_base,
    key_fields,
    main_rows,
    protocols_of,
    run_key,
    with_base_stage,
)

DPI = 100
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def ability_color(ability: str) -> str:
    rank = ABILITIES.index(ability) if ability in ABILITIES else len(ABILITIES) + abs(hash(ability)) % 4
    return COLORS[rank % len(COLORS)]


def column_title(ability: str, bench: str, chosen: dict[str, str]) -> str:
    return f"{ability}: {bench} ({chosen.get(bench, 'score')})"


def is_rate(summaries: list[Summary]) -> bool:
    """All values within [0, 1]: a rate (accuracy, pass@1), whose interval is clipped to [0, 1]."""
    return all(0.0 <= v <= 1.0 for s in summaries for v in (s.values or (s.mean,)))


def draw_point(ax, x: float, s: Summary, color: str, rate: bool, width: float = 0.0, label: str | None = None):
    """The mean (marker), each seed's value (dots spread over `width`) and the 95% interval (error bar)."""
    ci = s.ci95(0.0, 1.0 if rate else None)
    yerr = [[s.mean - ci[0]], [ci[1] - s.mean]] if ci else None
    ax.errorbar([x], [s.mean], yerr=yerr, fmt="o", color=color, ms=5, capsize=3, lw=1.2, label=label, zorder=3)
    n = len(s.values)
    if n > 1:
        xs = [x + width * (i / (n - 1) - 0.5) for i in range(n)]
        ax.scatter(xs, s.values, s=9, color=color, alpha=0.45, edgecolors="none", zorder=2)


def group_title(values: tuple[str, ...], fields: tuple[str, ...]) -> str:
    """'DMT k=1/4 · mixed · fraction 1/4 · matched steps': a run group's key values, each readable alone."""
    parts = [f"fraction {v}" if f == "fraction" else v.replace("_", " ") for f, v in zip(fields, values) if v]
    return " · ".join(parts)


def _finish_axes(ax, rate: bool) -> None:
    ax.grid(alpha=0.3, axis="y")
    if rate:
        ax.set_ylim(0, 1.02)
    else:
        ax.set_ylim(bottom=0)


def _save(fig: Figure, out_path: str | Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png")
    return out_path


def _protocol_text(protocols: list[str]) -> str:
    return ", ".join(p.replace("_", " ") for p in protocols) or "—"


# --------------------------------------------------------------------------------------------- headline bars
def headline_plot(rows: list[dict], out_path: str | Path, metric_map: dict[str, str] | None = None) -> Path | None:
    """Grouped bars of the strategy × ability table; None when nothing was scored."""
    chosen = choose_metrics(rows, metric_map)
    final = final_rows(main_rows(rows, metric_map))
    if not final:
        return None
    used = tuple(f for f in key_fields(final) if f != "protocol")

    def name_of(r: dict) -> str:  # with several bases each is its own bar (a base is not a seed)
        if is_base(r):
            return f"{BASE_RUN} {r.get('base')}" if "base" in used else BASE_RUN
        return group_title(run_key(r, used), used)

    agg = aggregate(final, lambda r: (r.get("protocol") or "", name_of(r), r.get("ability") or "other",
                                      r["benchmark"]))
    cols = ability_columns(final)
    rate_of = {c: is_rate([s for k, s in agg.items() if k[2:] == c]) for c in cols}
    scales = [g for g in ([c for c in cols if rate_of[c]], [c for c in cols if not rate_of[c]]) if g]
    protocols = protocols_of(final) or [""]
    base_names = {name_of(r) for r in final if is_base(r)}
    n_names = len({k[1] for k in agg})
    width = min(16.0, max(7.0, (0.3 * len(cols) + 0.4) * n_names * len(protocols) + 3.0))
    fig = Figure(figsize=(width, 4.4 * len(scales)), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(scales), len(protocols), squeeze=False, sharey="row")
    for j, protocol in enumerate(protocols):
        names = sorted(dict.fromkeys(k[1] for k in agg if k[0] in (protocol, "")), key=lambda n: n not in base_names)
        for i, group in enumerate(scales):
            ax, width = axes[i][j], 0.8 / len(group)
            for c, (ability, bench) in enumerate(group):
                for x, name in enumerate(names):
                    s = agg.get((protocol, name, ability, bench)) or agg.get(("", name, ability, bench))
                    if s is None:
                        continue
                    pos = x - 0.4 + width * (c + 0.5)
                    ax.bar(pos, s.mean, width * 0.9, color=ability_color(ability),
                           alpha=0.4 if name in base_names else 0.8)
                    draw_point(ax, pos, s, "black", rate_of[(ability, bench)], width * 0.5)
            ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize="small")
            _finish_axes(ax, rate_of[group[0]])
            ax.set_ylabel("score (main metric)")
            ax.set_title(f"final stage, protocol: {_protocol_text([protocol] if protocol else [])}", fontsize="medium")
    handles = [Patch(color=ability_color(a), alpha=0.8, label=column_title(a, b, chosen)) for a, b in cols]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize="small")
    fig.suptitle("Strategy × ability: mean over seeds (bar), each seed (dots), 95% interval (t, clipped to [0, 1])",
                 fontsize="medium")
    return _save(fig, out_path)


# ------------------------------------------------------------------------------------------------ stage grid
def stages_plot(rows: list[dict], out_path: str | Path, metric_map: dict[str, str] | None = None) -> Path | None:
    """Each ability after each stage of each multi-stage strategy, from the base on; None when there is none."""
    chosen = choose_metrics(rows, metric_map)
    picked = with_base_stage(main_rows(rows, metric_map))
    if not any(not is_base(r) for r in picked):
        return None
    used = key_fields(picked, KEY_FIELDS)
    agg = aggregate(picked, lambda r: (run_key(r, used), r["_stage_pos"], r["stage"], r.get("ability") or "other",
                                       r["benchmark"]))
    groups = list(dict.fromkeys(k[0] for k in agg))
    cols = ability_columns(picked)
    fig = Figure(figsize=(max(4.5, 2.9 * len(groups) + 0.8), 2.5 * len(cols) + 1.1), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(cols), len(groups), squeeze=False, sharey="row", sharex="col")
    for i, (ability, bench) in enumerate(cols):
        rate = is_rate([s for k, s in agg.items() if k[3:] == (ability, bench)])
        for j, group in enumerate(groups):
            ax = axes[i][j]
            pts = sorted((k[1], k[2], s) for k, s in agg.items() if k[0] == group and k[3:] == (ability, bench))
            ax.plot([p[0] for p in pts], [p[2].mean for p in pts], color=ability_color(ability), lw=1.2, alpha=0.8)
            for pos, _, s in pts:
                draw_point(ax, pos, s, ability_color(ability), rate, 0.25)
            stage_names = dict(sorted({(k[1], k[2]) for k in agg if k[0] == group}))
            ax.set_xticks(list(stage_names), [f"{p}: {n}" for p, n in stage_names.items()], rotation=25, ha="right",
                          fontsize="small")
            ax.set_xlim(-0.5, max(stage_names) + 0.5)
            _finish_axes(ax, rate)
            if i == 0:
                ax.set_title(group_title(group, used), fontsize="medium")
            if j == 0:
                ax.set_ylabel(column_title(ability, bench, chosen).replace(": ", "\n", 1), fontsize="small")
    fig.suptitle(f"Each ability after each stage (stage 0: the base)\nprotocol: {_protocol_text(protocols_of(picked))}"
                 " · mean, seeds, 95% interval", fontsize="medium")
    return _save(fig, out_path)


# ------------------------------------------------------------------------------------------------ scaling
def scaling_plot(rows: list[dict], out_path: str | Path, metric_map: dict[str, str] | None = None) -> Path | None:
    """Ability vs data fraction; None (no file) when the study has fewer than two fractions."""
    chosen = choose_metrics(rows, metric_map)
    final = final_rows(main_rows(rows, metric_map))
    grid = fraction_grid_rows(final)
    multi = len(protocols_of(final)) > 1
    fields = ("protocol",) * multi + ("strategy", "setup", "adapter")
    if grid:  # single vs mixed sources
        series_rows = grid
        series_of = (lambda r: (f"{r['protocol']}: " if multi else "") + r["_source"])
    else:  # strategies at several fractions
        series_rows = [r for r in final if not is_base(r)]
        series_of = (lambda r: " ".join(run_key(r, fields)).strip())
    fractions = {r["fraction"] for r in series_rows if r.get("fraction") is not None}
    if len(fractions) < 2:
        return None
    agg = aggregate([r for r in series_rows if r.get("fraction") is not None],
                    lambda r: (series_of(r), r["fraction"], r.get("ability") or "other", r["benchmark"]))
    base = aggregate([r for r in final if is_base(r)], lambda r: (r.get("ability") or "other", r["benchmark"]))
    series = list(dict.fromkeys(k[0] for k in agg))
    cols = ability_columns(series_rows)
    ncols = min(len(cols), 4)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * math.ceil(len(cols) / ncols)), dpi=DPI, layout="constrained")
    axes = fig.subplots(math.ceil(len(cols) / ncols), ncols, squeeze=False).ravel().tolist()
    for ax in axes[len(cols):]:
        ax.set_visible(False)
    ticks = sorted(fractions)
    for ax, (ability, bench) in zip(axes, cols):
        rate = is_rate([s for k, s in agg.items() if k[2:] == (ability, bench)])
        for n, name in enumerate(series):
            pts = sorted((k[1], s) for k, s in agg.items() if k[0] == name and k[2:] == (ability, bench))
            color = COLORS[n % len(COLORS)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1].mean for p in pts], color=color, lw=1.2, label=name)
                for f, s in pts:
                    draw_point(ax, f, s, color, rate)
        if (ability, bench) in base:
            ax.axhline(base[(ability, bench)].mean, color="gray", ls="--", lw=1, label="base")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [fmt_fraction(f) for f in ticks])
        ax.set_title(column_title(ability, bench, chosen), fontsize="medium")
        ax.set_xlabel("data fraction")
        ax.set_ylabel("score")
        _finish_axes(ax, rate)
        ax.legend(fontsize="small")
    fig.suptitle(f"Scaling with the data fraction\nprotocol: {_protocol_text(protocols_of(series_rows))} · mean, "
                 "seeds, 95% interval", fontsize="medium")
    return _save(fig, out_path)


def make_plots(rows: list[dict], out_dir: str | Path, metric_map: dict[str, str] | None = None) -> list[Path]:
    """Write headline.png, scaling.png and stages.png into out_dir (those that have data); return the paths."""
    out_dir = Path(out_dir)
    made = [headline_plot(rows, out_dir / "headline.png", metric_map),
            scaling_plot(rows, out_dir / "scaling.png", metric_map),
            stages_plot(rows, out_dir / "stages.png", metric_map)]
    return [p for p in made if p is not None]

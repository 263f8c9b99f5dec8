"""Training-loss curves of a study's runs: read from each run's stage folders (`stages/<i>-<name>/metrics.jsonl`,
the rows with a `loss`; a stage reused from the study's stage cache carries the copy of the run that trained it),
stages end to end on one optimizer-step axis, and drawn as one panel per strategy (a line per seed, a shared
y-axis, dotted lines at stage boundaries)."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

from mixtune.jsonl import iter_jsonl
from mixtune.study.plots import COLORS, DPI, _protocol_text, _save

Curve = dict[str, list]
"""{"steps": [...], "loss": [...], "boundaries": [(step, stage name), ...]} of one run."""


def _stage_folders(run_dir: Path) -> list[Path]:
    folders = [p for p in (run_dir / "stages").glob("*-*") if p.is_dir() and p.name.split("-", 1)[0].isdigit()]
    return sorted(folders, key=lambda p: int(p.name.split("-", 1)[0]))


def read_loss_curve(run_dir: Path) -> Curve | None:
    """The run's training loss over its stages (None when no stage logged a loss)."""
    steps, losses, boundaries, offset = [], [], [], 0
    for folder in _stage_folders(run_dir):
        metrics = folder / "metrics.jsonl"
        rows = [row for _, row in iter_jsonl(metrics)] if metrics.is_file() else []
        boundaries.append((offset, folder.name.split("-", 1)[1]))
        for row in rows:
            if isinstance(row.get("loss"), (int, float)):
                steps.append(offset + int(row["step"]))
                losses.append(float(row["loss"]))
        done = folder / "stage.json"
        last = json.loads(done.read_text()).get("steps") if done.is_file() else None
        offset += int(last if last is not None else max((int(r.get("step", 0)) for r in rows), default=0))
    return {"steps": steps, "loss": losses, "boundaries": boundaries} if steps else None


def read_loss_curves(study_dir: str | Path, run_ids: list[str]) -> dict[str, Curve]:
    """run_id -> loss curve, for the runs that logged one."""
    curves = {run: read_loss_curve(Path(study_dir) / run) for run in run_ids}
    return {run: c for run, c in curves.items() if c}


def loss_plot(curves: dict[str, Curve], runs: list[dict], out_path: str | Path) -> Path | None:
    """One panel per strategy (strategy, setup, adapter, fraction, protocol of `runs`), a line per seed; None when
    no run logged a loss."""
    info = {r["run_id"]: r for r in runs}
    protocols = sorted({str(r.get("protocol")) for r in runs if r.get("protocol") and r["run_id"] in curves})
    groups: dict[str, list[str]] = {}
    order = {r["run_id"]: i for i, r in enumerate(sorted(runs, key=lambda r: (r.get("fraction") is None,
                                                                            -(r.get("fraction") or 0))))}
    for run in sorted(curves, key=lambda r: order.get(r, len(order))):  # the full-data runs first
        r = info.get(run, {})
        label = " · ".join(str(v).replace("_", " ") for v in (r.get("strategy") or run, r.get("adapter"),
                                                               r.get("protocol") if len(protocols) > 1 else None)
                           if v and v != "none")
        if r.get("fraction") not in (None, 1.0):
            label += f" · fraction {r['fraction']:g}"
        groups.setdefault(label, []).append(run)
    if not groups:
        return None
    ncols = min(len(groups), 4)
    nrows = -(-len(groups) // ncols)
    fig = Figure(figsize=(3.9 * ncols, 2.9 * nrows + 0.5), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel().tolist()
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    for ax, (label, members) in zip(axes, groups.items()):
        for n, run in enumerate(sorted(members, key=lambda m: info.get(m, {}).get("seed") or 0)):
            c = curves[run]
            seed = info.get(run, {}).get("seed")
            ax.plot(c["steps"], c["loss"], color=COLORS[n % len(COLORS)], lw=1, label=f"seed {seed}")
        for step, stage in curves[members[0]]["boundaries"]:
            ax.axvline(step, color="gray", ls=":", lw=0.8)
            ax.annotate(stage, (step, 1), xycoords=("data", "axes fraction"), fontsize="x-small", color="gray",
                        rotation=90, va="top", ha="right")
        ax.set_title(label, fontsize="medium")
        ax.set_xlabel("optimizer step (stages end to end)")
        ax.set_ylabel("train loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle(f"Training loss per run (target-token cross-entropy)\nprotocol: {_protocol_text(protocols)}",
                 fontsize="medium")
    return _save(fig, out_path)

"""The scaling analysis's plot and page: loss against tokens per size with the fitted law, the held-out run's
prediction (with its bootstrap interval) against what it measured, and the fit and compute-optimal tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mixtune.analysis.report import fmt, markdown_table, write_page
from mixtune.analysis.scaling_fit import LawFit
from mixtune.config import Recipe
from mixtune.runs import atomic_write_text

FIT_HEADER = ("parameter", "value", "95% bootstrap interval")
POINT_HEADER = ("run", "N (non-embedding)", "steps", "D (tokens)", "eval loss", "law", "wall s")
OPT_HEADER = ("C = 6ND (FLOPs)", "N_opt", "N_opt interval", "D_opt", "D_opt interval", "D/N")


def scaling_plot(summary: dict, fit: LawFit, path: Path) -> Path:
    """Left: L vs D (log-log) per size, points and the fitted law; the held-out size's prediction (interval) and
    its measured loss. Right: measured vs fitted loss for every run."""
    fig = Figure(figsize=(11, 4.2), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2)
    points, hold, pred = summary["points"], summary["holdout"], summary["prediction"]
    d_all = [p["tokens"] for p in points] + [hold["tokens"]]
    grid = np.geomspace(min(d_all) * 0.8, max(d_all) * 1.25, 50)
    for size in dict.fromkeys(p["size"] for p in points):
        pts = sorted((p["tokens"], p["eval_loss"], p["params_non_embedding"]) for p in points if p["size"] == size)
        line = left.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=f"{size} (N={pts[0][2]:,})")[0]
        left.plot(grid, fit.predict(pts[0][2], grid), "-", color=line.get_color(), alpha=0.6)
    left.plot(grid, fit.predict(hold["params_non_embedding"], grid), "--", color="black", alpha=0.6)
    lo, hi = pred.get("predicted_loss_lo", pred["predicted_loss"]), pred.get("predicted_loss_hi", pred["predicted_loss"])
    left.errorbar([hold["tokens"]], [pred["predicted_loss"]], yerr=[[pred["predicted_loss"] - lo],
                                                                   [hi - pred["predicted_loss"]]],
                  fmt="s", color="black", mfc="white", capsize=4, label="held-out: predicted")
    left.plot([hold["tokens"]], [hold["eval_loss"]], "*", color="black", markersize=12,
              label=f"held-out: measured (N={hold['params_non_embedding']:,})")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("tokens D")
    left.set_ylabel("held-out loss (nats/token)")
    left.set_title(f"L = {fit.E:.2f} + {fit.A:.3g}/N^{fit.alpha:.2f} + {fit.B:.3g}/D^{fit.beta:.2f}",
                   fontsize="medium")
    left.legend(fontsize="x-small")
    measured = [p["eval_loss"] for p in points] + [hold["eval_loss"]]
    fitted = [float(fit.predict(p["params_non_embedding"], p["tokens"])) for p in points] + [pred["predicted_loss"]]
    right.plot(fitted[:-1], measured[:-1], "o", label="grid runs (fitted)")
    right.plot(fitted[-1:], measured[-1:], "*", color="black", markersize=12, label="held-out (predicted)")
    span = [min(measured + fitted) * 0.98, max(measured + fitted) * 1.02]
    right.plot(span, span, "-", color="gray", linewidth=1)
    right.set_xlabel("law")
    right.set_ylabel("measured")
    right.legend(fontsize="small")
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _interval(row: dict, key: str) -> str:
    return f"[{fmt(row[key + '_lo'])}, {fmt(row[key + '_hi'])}]" if key + "_lo" in row else "–"


def write_scaling_report(out: Path, summary: dict, fit: LawFit, recipe: Recipe) -> Path:
    fit_row, hold, pred = summary["fit"], summary["holdout"], summary["prediction"]
    fit_rows = [[k, fit_row[k], _interval(fit_row, k)] for k in ("E", "A", "B", "alpha", "beta")]
    point_rows = [[f"{p['size']}-T{p['steps']}", p["params_non_embedding"], p["steps"], p["tokens"], p["eval_loss"],
                   float(fit.predict(p["params_non_embedding"], p["tokens"])), round(p["wall_s"])]
                  for p in summary["points"]]
    point_rows.append([f"held-out-T{hold['steps']}", hold["params_non_embedding"], hold["steps"], hold["tokens"],
                       hold["eval_loss"], pred["predicted_loss"], round(hold["wall_s"])])
    opt_rows = [[r["compute"], r["n_opt"], _interval(r, "n_opt"), r["d_opt"], _interval(r, "d_opt"),
                 r["d_opt"] / r["n_opt"]] for r in summary["compute_optimal"]]
    plot = scaling_plot(summary, fit, out / "report" / "scaling.png")
    atomic_write_text(out / "report" / "scaling.md", "\n\n".join(
        markdown_table(h, r) for h, r in ((FIT_HEADER, fit_rows), (POINT_HEADER, point_rows),
                                          (OPT_HEADER, opt_rows))) + "\n")
    interval = _interval(pred, "predicted_loss")
    return write_page(out / "report" / "index.html", "mixtune analysis: scaling law", [
        ("L(N, D) = E + A/N^alpha + B/D^beta fitted with Chinchilla's approach 3 (Huber loss on log L, delta = "
        f"{recipe.analysis.scaling.huber_delta:g}, L-BFGS from a grid of initialisations) to "
        f"{fit_row['n_points']} runs; N counts non-embedding parameters; intervals: {fit_row['n_bootstrap']} "
        "bootstrap resamples of the runs."),
        (f"Held-out run (N = {hold['params_non_embedding']:,}, D = {hold['tokens']:,}): predicted "
        f"{pred['predicted_loss']:.4f} {interval} at {pred['written_at']}, before it trained; measured "
        f"{hold['eval_loss']:.4f}; error {hold['prediction_error']:+.4f} ({100 * hold['relative_error']:+.1f}%).")],
        [("fit", FIT_HEADER, fit_rows), ("runs", POINT_HEADER, point_rows),
         ("compute-optimal split", OPT_HEADER, opt_rows)],
        [(plot, "held-out loss against tokens per size, with the fitted law; right: measured vs law")],
        {"recipe": recipe.name, "sizes": {k: v.model_dump() for k, v in recipe.analysis.scaling.sizes.items()},
         "budgets": recipe.analysis.scaling.budgets})

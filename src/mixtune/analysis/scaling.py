"""`mixtune analyze scaling -c recipes/analysis/scaling.yaml`: a Chinchilla-form scaling law fitted to mini-lab
pre-training runs, and a held-out larger run predicted before it is trained (METHODS §9).

The grid: for each size, one WSD run (train/pretrain.py) to the largest budget T_max (stable until (1 − f)·T_max,
then the 1-sqrt decay), saving a checkpoint at every branch point; each smaller budget T is a branch
(`pretrain(branch_from=<main>/checkpoints/step-(1 − f)·T)`) that decays for f·T steps from the stable phase, so one
run gives every budget (Hägele et al. 2024). Each point is (N = non-embedding parameters, D = T × batch × seq_len
tokens, L = held-out loss of the world's corpus at the end of the decay). The fit (scaling_fit.py) is Chinchilla's
approach 3 with bootstrap intervals over the points. Then the held-out size's loss is predicted and the prediction
written to `holdout/prediction.json` with a timestamp, BEFORE that run trains; a rerun never re-predicts once the
held-out run has started. Finally the compute-optimal split for C = 6·N·D (at the held-out run's C, ×10, ×100).

Writes into the run folder: `runs/<size>/{main,budget-T}/` (pretrain run folders), `points.json`, `fit.json`,
`holdout/`, `results.sqlite`, `summary.json`, `report/scaling.png`, `report/index.html`. Results rows: run
`scaling/<size>-T<steps>` (strategy "grid" or "holdout"), `metrics` at its last step: params_non_embedding,
params_total, steps, tokens, eval_loss, wall_s (and predicted_loss, prediction_error for the held-out run); run
`scaling/fit` with E, A, B, alpha, beta, huber_loss and `<param>_lo` / `<param>_hi` (95% bootstrap interval),
n_points, n_bootstrap; run `scaling/compute-optimal` with n_opt_<i>, d_opt_<i>, compute_<i> (and _lo/_hi).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from mixtune.analysis import scaling_fit
from mixtune.analysis.report import AnalysisError, analysis_main, record_run, run_parallel, worker_threads
from mixtune.config import ModelSize, Recipe
from mixtune.results import DB_NAME, ResultsDB
from mixtune.runs import atomic_write_json, prepare_run_dir

PARAMS = ("E", "A", "B", "alpha", "beta")


def sub_recipe(recipe: Recipe, size: ModelSize, out_dir: Path, **train: object) -> Recipe:
    """The pretrain recipe of one run: this size, the analysis's tokenizer, its own folder and schedule."""
    model = recipe.model.model_copy(update={**size.model_dump(), "path": None,
                                            "tokenizer": recipe.model.tokenizer or recipe.tokenizer.out_dir})
    return recipe.model_copy(update={"name": out_dir.name, "out_dir": str(out_dir), "model": model,
                                     "train": recipe.train.model_copy(update=train)})


def branch_points(budgets: list[int], fraction: float) -> dict[int, int]:
    """budget T -> the step its decay branches at, round((1 − f)·T)."""
    return {t: round((1 - fraction) * t) for t in budgets}


def parameter_counts(recipe: Recipe, size: ModelSize) -> tuple[int, int]:
    """(non-embedding, total) parameters of `size` with the recipe's tokenizer (a model is built, not trained)."""
    from mixtune.model.load import build_llama, count_parameters, load_tokenizer

    tokenizer = load_tokenizer(recipe.model.tokenizer or recipe.tokenizer.out_dir)
    model = build_llama(recipe.model.model_copy(update=size.model_dump()), tokenizer)
    _, total = count_parameters(model)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    return total - emb.numel() - (0 if head.data_ptr() == emb.data_ptr() else head.numel()), total


def _point(recipe: Recipe, size_name: str, size: ModelSize, steps: int, summary: dict, wall_s: float,
           kind: str) -> dict:
    n, total = parameter_counts(recipe, size)
    return {"size": size_name, "kind": kind, "steps": steps, "params_non_embedding": n, "params_total": total,
            "tokens": steps * recipe.train.batch_size * recipe.train.seq_len, "eval_loss": summary["eval_loss"],
            "wall_s": wall_s}


def _pretrain_once(recipe: Recipe, branch_from: Path | None = None) -> tuple[dict, float]:
    """pretrain, or the summary of a run that already finished (its `point.json`); (summary, wall seconds)."""
    from mixtune.train.pretrain import pretrain

    done = Path(recipe.run_dir) / "point.json"
    if done.exists():
        blob = json.loads(done.read_text())
        return blob["summary"], blob["wall_s"]
    t0 = time.perf_counter()
    summary = pretrain(recipe, resume=True, branch_from=branch_from)
    wall = time.perf_counter() - t0
    atomic_write_json(done, {"summary": summary, "wall_s": wall})
    return summary, wall


def train_size(recipe: Recipe, size_name: str, out: str) -> list[dict]:
    """Worker: one size's main WSD run, then each smaller budget as a decay branched from its stable phase."""
    sc, size, folder = recipe.analysis.scaling, recipe.analysis.scaling.sizes[size_name], Path(out)
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={
        "threads": worker_threads(min(sc.workers, len(sc.sizes)))})})  # the cores shared by the parallel sizes
    t_max = sc.budgets[-1]
    points = branch_points(sc.budgets[:-1], sc.decay_fraction)
    save_every = math.gcd(*points.values()) if points else 0
    main = sub_recipe(recipe, size, folder / "main", schedule="wsd", max_steps=t_max, decay_ratio=sc.decay_fraction,
                      save_every=save_every, keep_checkpoints=0)
    summary, wall = _pretrain_once(main)
    results = [_point(recipe, size_name, size, t_max, summary, wall, "grid")]
    for budget, at in points.items():
        branch = sub_recipe(recipe, size, folder / f"budget-{budget}", schedule="wsd", max_steps=budget - at,
                            warmup_ratio=0.0, decay_ratio=1.0, save_every=0)
        ckpt = folder / "main" / "checkpoints" / f"step-{at:07d}"
        summary, branch_wall = _pretrain_once(branch, branch_from=ckpt)
        results.append(_point(recipe, size_name, size, budget, summary, branch_wall, "grid"))
    return sorted(results, key=lambda p: p["steps"])


def fit_points(points: list[dict], sc) -> tuple[scaling_fit.LawFit, list[scaling_fit.LawFit]]:
    """The fit on all grid points, and the bootstrap refits."""
    n = [p["params_non_embedding"] for p in points]
    d = [p["tokens"] for p in points]
    loss = [p["eval_loss"] for p in points]
    fit, optima = scaling_fit.fit_law(n, d, loss, sc.huber_delta)
    boots = scaling_fit.bootstrap(n, d, loss, optima, sc.bootstrap, seed=0, delta=sc.huber_delta)
    return fit, boots


def _with_interval(name: str, value: float, samples: list[float]) -> dict[str, float]:
    out = {name: value}
    if samples:
        out[f"{name}_lo"], out[f"{name}_hi"] = scaling_fit.interval(samples)
    return out


def predict_holdout(recipe: Recipe, fit: scaling_fit.LawFit, boots: list[scaling_fit.LawFit], folder: Path) -> dict:
    """Write the held-out run's predicted loss (with its interval and a timestamp) before it trains; an existing
    prediction of a run that already started is kept, never replaced."""
    path = folder / "prediction.json"
    if path.exists() and (folder / "run").exists():
        return json.loads(path.read_text())
    sc = recipe.analysis.scaling
    steps = sc.holdout_steps or sc.budgets[-1]
    n, total = parameter_counts(recipe, sc.holdout)
    d = steps * recipe.train.batch_size * recipe.train.seq_len
    prediction = {"written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "written_at_unix": time.time(),
                  "size": sc.holdout.model_dump(), "params_non_embedding": n, "params_total": total, "steps": steps,
                  "tokens": d, **_with_interval("predicted_loss", float(fit.predict(n, d)),
                                                [float(b.predict(n, d)) for b in boots])}
    atomic_write_json(path, prediction)
    return prediction


def compute_optimal(fit: scaling_fit.LawFit, boots: list[scaling_fit.LawFit], budgets: list[float]) -> list[dict]:
    """(C, N_opt, D_opt) with bootstrap intervals for each compute budget C (FLOPs, C = 6·N·D)."""
    rows = []
    for c in budgets:
        n_opt, d_opt = fit.compute_optimal(c)
        row = {"compute": c}
        row |= _with_interval("n_opt", n_opt, [b.compute_optimal(c)[0] for b in boots])
        row |= _with_interval("d_opt", d_opt, [b.compute_optimal(c)[1] for b in boots])
        rows.append(row)
    return rows


def run_scaling(recipe: Recipe, log=print) -> dict:
    """Grid → fit → prediction → held-out run → compute-optimal split → results rows, plot and page."""
    from mixtune.analysis.scaling_report import write_scaling_report
    from mixtune.study.base import prepare_corpus

    sc = recipe.analysis.scaling
    if not sc.sizes or not sc.budgets or sc.holdout is None:
        raise AnalysisError("analysis.scaling needs sizes, budgets and a holdout size (see recipes/analysis/)")
    t0 = time.perf_counter()
    out = prepare_run_dir(recipe, verb="analyze scaling")
    prepare_corpus(recipe, log)
    jobs = [(name, train_size, (recipe, name, str(out / "runs" / name)), out / "runs" / name / "train.log")
            for name in sc.sizes]
    log(f"[scaling] {len(sc.sizes)} sizes x {len(sc.budgets)} budgets {sc.budgets} (decay fraction "
        f"{sc.decay_fraction:g}), {sc.workers} worker(s)")
    results = run_parallel(jobs, sc.workers, log)
    points = [p for name in sc.sizes for p in results[name]]  # recipe order, whatever order the workers finished in
    atomic_write_json(out / "points.json", points)
    fit, boots = fit_points(points, sc)
    fit_row = {"huber_loss": fit.loss, "n_points": len(points), "n_bootstrap": len(boots)}
    for name in PARAMS:
        fit_row |= _with_interval(name, getattr(fit, name), [getattr(b, name) for b in boots])
    atomic_write_json(out / "fit.json", fit_row)
    log(f"[scaling] fit: L = {fit.E:.3f} + {fit.A:.3g}/N^{fit.alpha:.3f} + {fit.B:.3g}/D^{fit.beta:.3f}")
    prediction = predict_holdout(recipe, fit, boots, out / "holdout")
    trained = (out / "holdout" / "run" / "point.json").exists()
    log(f"[scaling] predicted held-out loss {prediction['predicted_loss']:.4f} (written "
        f"{prediction['written_at']}); " + ("the held-out run is trained already" if trained else "training it now"))
    steps = prediction["steps"]
    held = sub_recipe(recipe, sc.holdout, out / "holdout" / "run", schedule="wsd", max_steps=steps,
                      decay_ratio=sc.decay_fraction, save_every=0)
    summary, wall = _pretrain_once(held)
    holdout = {**_point(recipe, "holdout", sc.holdout, steps, summary, wall, "holdout"),
               "predicted_loss": prediction["predicted_loss"],
               "prediction_error": summary["eval_loss"] - prediction["predicted_loss"]}
    holdout["relative_error"] = holdout["prediction_error"] / summary["eval_loss"]
    atomic_write_json(out / "holdout" / "result.json", holdout)
    c_hold = 6.0 * holdout["params_non_embedding"] * holdout["tokens"]
    optimal = compute_optimal(fit, boots, [c_hold, 10 * c_hold, 100 * c_hold])
    _record(out, points, holdout, fit_row, optimal, recipe)
    summary_all = {"points": points, "fit": fit_row, "prediction": prediction, "holdout": holdout,
                   "compute_optimal": optimal, "wall_s_this_invocation": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out / "summary.json", summary_all)
    write_scaling_report(out, summary_all, fit, recipe)
    log(f"[scaling] held-out run: loss {summary['eval_loss']:.4f}, predicted {prediction['predicted_loss']:.4f} "
        f"(error {holdout['prediction_error']:+.4f}); report: {out / 'report' / 'index.html'}")
    return summary_all


def _record(out: Path, points: list[dict], holdout: dict, fit_row: dict, optimal: list[dict], recipe: Recipe) -> None:
    keys = ("params_non_embedding", "params_total", "steps", "tokens", "eval_loss", "wall_s")
    with ResultsDB(out / DB_NAME) as db:
        for p in points:
            record_run(db, "scaling", f"{p['size']}-T{p['steps']}", "grid", {k: p[k] for k in keys}, p["steps"],
                       config=recipe.analysis.scaling.sizes[p["size"]].model_dump())
        record_run(db, "scaling", f"holdout-T{holdout['steps']}", "holdout",
                   {k: holdout[k] for k in (*keys, "predicted_loss", "prediction_error")}, holdout["steps"],
                   config=recipe.analysis.scaling.holdout.model_dump())
        record_run(db, "scaling", "fit", "fit", fit_row, 0)
        flat = {f"{k}_{i}": v for i, row in enumerate(optimal) for k, v in row.items()}
        record_run(db, "scaling", "compute-optimal", "compute-optimal", flat, 0)


def main(argv: list[str]) -> int:
    """`mixtune analyze scaling -c recipe.yaml [key.sub=value ...]`."""
    return analysis_main("scaling", "scaling law L(N, D) from WSD runs with branched decays", run_scaling, argv)

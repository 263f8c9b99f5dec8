"""Scaling-law fit (analysis/scaling_fit.py: Huber on log L, L-BFGS from a grid, bootstrap, compute-optimal split)
on hand-worked numbers and on synthetic points from a known law, and the tiny scaling analysis end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mixtune.analysis import scaling_fit
from mixtune.analysis.scaling import branch_points

TRUE = scaling_fit.LawFit(E=1.2, A=40.0, B=300.0, alpha=0.35, beta=0.3)


def test_huber_hand_worked():
    value, grad = scaling_fit.huber(np.array([5e-4, 2e-3, -3e-3]), 1e-3)
    # inside: r²/2; outside: δ(|r| − δ/2)
    assert value == pytest.approx([1.25e-7, 1e-3 * 1.5e-3, 1e-3 * 2.5e-3])
    assert grad == pytest.approx([5e-4, 1e-3, -1e-3])


def test_objective_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    log_n, log_d = np.log(rng.uniform(1e4, 1e6, 9)), np.log(rng.uniform(1e5, 1e7, 9))
    log_l = np.log(TRUE.predict(np.exp(log_n), np.exp(log_d))) + rng.normal(0, 0.01, 9)
    theta = np.array([3.0, 5.0, 0.1, 0.4, 0.25])
    _, grad = scaling_fit.objective(theta, log_n, log_d, log_l, 1e-2)
    eps = 1e-6
    numeric = [(scaling_fit.objective(theta + eps * e, log_n, log_d, log_l, 1e-2)[0]
                - scaling_fit.objective(theta - eps * e, log_n, log_d, log_l, 1e-2)[0]) / (2 * eps) for e in np.eye(5)]
    assert grad == pytest.approx(numeric, rel=1e-4, abs=1e-9)
    # and at the true parameters with exact data the objective is 0
    exact = np.log(TRUE.predict(np.exp(log_n), np.exp(log_d)))
    truth = np.array([math.log(40.0), math.log(300.0), math.log(1.2), 0.35, 0.3])
    assert scaling_fit.objective(truth, log_n, log_d, exact, 1e-3)[0] == pytest.approx(0.0, abs=1e-20)


def test_fit_recovers_a_known_law_from_noisy_points():
    rng = np.random.default_rng(0)
    n = np.repeat([1e4, 4e4, 1.6e5, 6.4e5], 3)
    d = np.tile([1e5, 1e6, 1e7], 4)
    loss = TRUE.predict(n, d) * np.exp(rng.normal(0, 0.002, n.size))
    fit, optima = scaling_fit.fit_law(n, d, loss)
    assert fit.alpha == pytest.approx(0.35, abs=0.02) and fit.beta == pytest.approx(0.3, abs=0.02)
    assert fit.E == pytest.approx(1.2, rel=0.05) and fit.A == pytest.approx(40, rel=0.3)
    assert fit.B == pytest.approx(300, rel=0.3)
    held_out = (2.5e6, 1e7)  # a larger model than any fitted
    assert fit.predict(*held_out) == pytest.approx(TRUE.predict(*held_out), rel=0.005)
    boots = scaling_fit.bootstrap(n, d, loss, optima, samples=30, seed=0)
    assert len(boots) == 30
    lo, hi = scaling_fit.interval([b.alpha for b in boots])
    assert lo <= 0.35 <= hi and hi - lo < 0.2


def test_compute_optimal_split_minimises_the_law_along_6ND():
    c = 1e16
    n_opt, d_opt = TRUE.compute_optimal(c)
    assert 6 * n_opt * d_opt == pytest.approx(c)
    best = TRUE.predict(n_opt, d_opt)
    for f in (0.8, 0.9, 1.1, 1.25):
        assert TRUE.predict(n_opt * f, d_opt / f) > best
    # closed form: N_opt = G (C/6)^(β/(α+β)), G = (αA/(βB))^(1/(α+β))
    g = (0.35 * 40 / (0.3 * 300)) ** (1 / 0.65)
    assert n_opt == pytest.approx(g * (c / 6) ** (0.3 / 0.65))


def test_branch_points_start_each_decay_in_the_stable_phase():
    assert branch_points([250, 500], 0.2) == {250: 200, 500: 400}
    assert branch_points([10, 20], 0.2) == {10: 8, 20: 16}


@pytest.mark.slow
def test_tiny_scaling_analysis_end_to_end(tmp_path):
    from mixtune.analysis.scaling import run_scaling
    from mixtune.config import load_recipe
    from mixtune.results import ResultsDB

    out = tmp_path / "scaling"
    recipe = load_recipe("recipes/analysis/scaling-tiny.yaml", [
        f"out_dir={out}", f"world.out_dir={tmp_path / 'world'}", f"tokenizer.out_dir={tmp_path / 'tok'}"])
    summary = run_scaling(recipe, log=lambda _: None)
    points = summary["points"]
    assert sorted((p["size"], p["steps"]) for p in points) == [(s, t) for s in "abc" for t in (10, 20, 40)]
    assert all(p["tokens"] == p["steps"] * 4 * 32 for p in points)
    # budgets 10 and 20 are decays branched from the 40-step run's checkpoints at steps 8 and 16
    for size in "abc":
        for budget, start in ((10, 8), (20, 16)):
            branch = json.loads((out / "runs" / size / f"budget-{budget}" / "point.json").read_text())["summary"]
            assert (branch["start_step"], branch["step"]) == (start, budget)
        rows = [json.loads(x) for x in (out / "runs" / size / "budget-20" / "metrics.jsonl").read_text().splitlines()]
        assert [r["lr"] for r in rows if "lr" in r] == pytest.approx([1e-2 * (0.1 + 0.9 * (1 - 0.75 ** 0.5))])
    prediction = json.loads((out / "holdout" / "prediction.json").read_text())
    started = json.loads((out / "holdout" / "run" / "meta.json").read_text())["started_at"]
    assert prediction["written_at"] <= started  # the prediction was on disk before the held-out run started
    assert summary["holdout"]["prediction_error"] == pytest.approx(
        summary["holdout"]["eval_loss"] - prediction["predicted_loss"])
    assert {"n_opt", "d_opt"} <= set(summary["compute_optimal"][0])
    with ResultsDB(out / "results.sqlite") as db:
        ids = {r["run_id"] for r in db.runs("scaling")}
        assert {"scaling/a-T10", "scaling/c-T40", "scaling/holdout-T40", "scaling/fit"} <= ids
        fit = {m["name"]: m["value"] for m in db.metrics("scaling/fit")}
        assert fit["alpha_lo"] <= fit["alpha"] <= fit["alpha_hi"] or fit["n_bootstrap"] < 20
    assert "data:image/png;base64," in (out / "report" / "index.html").read_text()

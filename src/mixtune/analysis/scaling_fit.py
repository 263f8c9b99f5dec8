"""Fitting L(N, D) = E + A/N^α + B/D^β the way Chinchilla's approach 3 does (Hoffmann et al. 2022, §3.3, eq. 2):
minimise Σ_i Huber_δ(LSE(a − α log N_i, b − β log D_i, e) − log L_i) over (a, b, e, α, β) with A = e^a, B = e^b,
E = e^e, δ = 1e-3, by L-BFGS from a grid of initialisations (the best local optimum wins). Two changes for speed
and conditioning, same optimum: the objective is divided by δ (gradients of order 1, so L-BFGS's tolerances are
not met at the start), and Chinchilla's 4,500-point grid is first evaluated in one vectorised pass and L-BFGS starts
from its `LBFGS_STARTS` best points rather than from all of them. Bootstrap intervals resample the runs (points)
with replacement and refit each sample from the best distinct full-data optima. The compute-
optimal split of C ≈ 6ND minimises L along the constraint: N_opt = G (C/6)^{β/(α+β)}, D_opt = (C/6)/N_opt with
G = (αA / (βB))^{1/(α+β)} (Chinchilla eq. 4).

numpy + scipy.optimize (L-BFGS-B with the analytic gradient): pure functions, no torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize

# Chinchilla's grid of initialisations: α, β ∈ {0, .5, …, 2}, e ∈ {−1, −.5, …, 1}, a, b ∈ {0, 5, …, 25}.
INIT_ALPHA = INIT_BETA = (0.0, 0.5, 1.0, 1.5, 2.0)
INIT_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
INIT_A = INIT_B = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
LBFGS_STARTS = 32
"""L-BFGS runs from this many of the best grid points."""
BOOTSTRAP_STARTS = 4
"""Bootstrap refits start from this many of the best distinct full-data optima."""


@dataclass(frozen=True)
class LawFit:
    """A fitted law; `loss` is the Huber objective at the optimum (on log L)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    loss: float = 0.0

    def predict(self, n: float | np.ndarray, d: float | np.ndarray) -> float | np.ndarray:
        """L(N, D)."""
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    def compute_optimal(self, compute: float) -> tuple[float, float]:
        """(N_opt, D_opt) minimising L(N, D) subject to 6·N·D = compute."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))
        n_opt = g * (compute / 6.0) ** (self.beta / (self.alpha + self.beta))
        return n_opt, compute / 6.0 / n_opt

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative, elementwise: r²/2 inside |r| ≤ δ, δ(|r| − δ/2) outside."""
    inside = np.abs(r) <= delta
    value = np.where(inside, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    grad = np.where(inside, r, delta * np.sign(r))
    return value, grad


def grid_objective(thetas: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
                   ) -> np.ndarray:
    """The objective (without gradient) of many θ at once: thetas (K, 5) -> (K,)."""
    a, b, e, alpha, beta = (thetas[:, i:i + 1] for i in range(5))  # (K, 1) each
    lse = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)  # (K, P)
    return huber(lse - log_l, delta)[0].sum(axis=1)


def objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float
              ) -> tuple[float, np.ndarray]:
    """Σ Huber(LSE(a − α log N, b − β log D, e) − log L) and its gradient in θ = (a, b, e, α, β)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, P)
    top = terms.max(axis=0)
    weights = np.exp(terms - top)
    lse = top + np.log(weights.sum(axis=0))
    weights /= weights.sum(axis=0)  # softmax: ∂LSE/∂term
    value, dh = huber(lse - log_l, delta)
    grad = np.array([np.sum(dh * weights[0]), np.sum(dh * weights[1]), np.sum(dh * weights[2]),
                     np.sum(-dh * weights[0] * log_n), np.sum(-dh * weights[1] * log_d)])
    return float(value.sum()), grad


def _to_fit(theta: np.ndarray, loss: float) -> LawFit:
    a, b, e, alpha, beta = (float(x) for x in theta)
    return LawFit(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, loss=loss)


def _optimise(starts: Sequence[Sequence[float]], log_n, log_d, log_l, delta: float) -> list[tuple[float, np.ndarray]]:
    """L-BFGS from every start; (objective, θ) of each, best first (non-finite results dropped)."""
    def scaled(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = objective(theta, log_n, log_d, log_l, delta)
        return value / delta, grad / delta

    found = []
    for x0 in starts:
        res = minimize(scaled, np.asarray(x0, dtype=float), jac=True, method="L-BFGS-B", options={"maxiter": 1000})
        if np.all(np.isfinite(res.x)) and math.isfinite(res.fun):
            found.append((float(res.fun) * delta, res.x))
    return sorted(found, key=lambda t: t[0])


def init_grid() -> list[tuple[float, ...]]:
    """Chinchilla's initialisations as (a, b, e, α, β) tuples."""
    return list(itertools.product(INIT_A, INIT_B, INIT_E, INIT_ALPHA, INIT_BETA))


def fit_law(n: Sequence[float], d: Sequence[float], loss: Sequence[float], delta: float = 1e-3,
            starts: Sequence[Sequence[float]] | None = None) -> tuple[LawFit, list[np.ndarray]]:
    """The best fit over the initialisations (default: the `LBFGS_STARTS` best points of Chinchilla's grid) and the
    distinct optima found, best first (for warm starts)."""
    log_n, log_d, log_l = (np.log(np.asarray(x, dtype=float)) for x in (n, d, loss))
    if starts is None:
        grid = np.asarray(init_grid())
        starts = grid[np.argsort(grid_objective(grid, log_n, log_d, log_l, delta))[:LBFGS_STARTS]]
    found = _optimise(starts, log_n, log_d, log_l, delta)
    if not found:
        raise ValueError("no initialisation of the scaling-law fit converged to finite parameters")
    distinct: list[np.ndarray] = []
    for _, theta in found:
        if all(np.max(np.abs(theta - t)) > 1e-3 for t in distinct):
            distinct.append(theta)
    return _to_fit(found[0][1], found[0][0]), distinct


def bootstrap(n: Sequence[float], d: Sequence[float], loss: Sequence[float], optima: Sequence[np.ndarray],
              samples: int, seed: int = 0, delta: float = 1e-3) -> list[LawFit]:
    """Refits on `samples` resamples of the points (with replacement), each from the best full-data optima."""
    n, d, loss = (np.asarray(x, dtype=float) for x in (n, d, loss))
    rng = np.random.default_rng(seed)
    starts = [tuple(t) for t in optima[:BOOTSTRAP_STARTS]]
    fits = []
    for _ in range(samples):
        idx = rng.integers(0, len(n), size=len(n))
        try:
            fits.append(fit_law(n[idx], d[idx], loss[idx], delta, starts)[0])
        except ValueError:
            continue  # a resample no start converges on is left out (counted by the caller: len(fits))
    return fits


def interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval."""
    lo, hi = np.percentile(np.asarray(values, dtype=float), [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)

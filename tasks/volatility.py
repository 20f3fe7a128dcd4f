"""Conditional variances of daily log returns: EWMA (RiskMetrics) and GARCH(1,1).

Indexing follows the close series (N,) and its window ends. The daily return
into row s is r_s = ln(close[s] / close[s-1]), s = 1..N-1, stored as
``r = diff(log(close))`` (N-1,), so ``r[s-1]`` is r_s. A window ending at row
t knows r_1..r_t. The filters return ``s2`` (N,) with

    s2[t] = σ²_{t+1|t}, the variance of r_{t+1} given r_1..r_t,

so ``s2[ends]`` are the one-step variances of the windows ending at
``ends``, and s2[t] never reads r_{t+1} or later (the filters are causal).

Start value. Both recursions start from arch's backcast (arch 8,
``VolatilityProcess.backcast``): s2[0] = Σ_i w_i e_i² over the first
τ = min(75, T) residuals of the fitting sample, w_i ∝ 0.94^i. It is computed
from training returns only, so it is a fitted parameter like ω, α, β.

h-day variance. The h-day target is r_{t+1} + ... + r_{t+h}; its shocks are
uncorrelated (a martingale difference), so its variance given t is the sum
of the 1..h step-ahead variances E_t[σ²_{t+j}], j = 1..h, which is what arch's
``forecast(horizon=h).variance`` lists.

These numpy recursions are the readable reference; tests pin them to arch's
own forecasts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

LAMBDA = 0.94  # RiskMetrics' daily decay (J.P. Morgan/Reuters, RiskMetrics Technical Document, 1996, §5.3)
SCALE = 100.0  # returns in percent for arch's optimiser, as arch's DataScaleWarning recommends


def log_returns(close: np.ndarray) -> np.ndarray:
    """r (N-1,) with r[s-1] = ln(close[s] / close[s-1]), from close (N,) > 0."""
    close = np.asarray(close, dtype=np.float64)
    if close.ndim != 1 or close.size < 2 or not (np.isfinite(close).all() and (close > 0).all()):
        raise ValueError(f"close must be a 1-d series of at least 2 finite prices > 0; got shape {close.shape}")
    return np.diff(np.log(close))


def backcast(e: np.ndarray) -> float:
    """arch's start value: Σ_i w_i e_i² over the first min(75, T) of e, w_i ∝ 0.94^i."""
    tau = min(75, e.shape[0])
    w = 0.94 ** np.arange(tau)                                  # (τ,)
    return float(np.sum(e[:tau] ** 2 * (w / w.sum())))


def ewma_variance(r: np.ndarray, s2_0: float, lam: float = LAMBDA) -> np.ndarray:
    """RiskMetrics one-step variances s2 (N,) of zero-mean returns r (N-1,).

    s2[0] = s2_0;  s2[t] = λ s2[t-1] + (1 - λ) r_t²   (r_t = r[t-1]).

    This is arch's ``EWMAVariance(lam)`` with a zero mean. Its j-step-ahead
    variance is s2[t] for every j (λ + (1 - λ) = 1: an integrated GARCH with
    ω = 0), so the h-day variance is h · s2[t].
    """
    s2 = np.empty(r.shape[0] + 1)                               # (N,)
    s2[0] = s2_0
    for t in range(1, s2.shape[0]):
        s2[t] = lam * s2[t - 1] + (1 - lam) * r[t - 1] ** 2
    return s2


@dataclass(frozen=True)
class GarchParams:
    """GARCH(1,1) with a constant mean, in log-return units (not percent).

    r_t = μ + e_t,  e_t = σ_t z_t,  z_t ~ N(0, 1),
    σ²_t = ω + α e²_{t-1} + β σ²_{t-1}          (Bollerslev 1986, J. Econometrics 31(3)).
    """

    mu: float
    omega: float
    alpha: float
    beta: float
    s2_0: float  # backcast of the training residuals: the recursion's start


def fit_garch(r: np.ndarray, last_obs: int) -> GarchParams:
    """Normal-likelihood GARCH(1,1) fitted by arch on r[:last_obs] only.

    r (T,) daily log returns; arch sees them ×100 (its optimiser is tuned for
    percent returns) and the estimates are scaled back: μ / 100, ω / 100².
    Raises RuntimeError when the optimiser does not converge.
    """
    if not 0 < last_obs <= r.shape[0]:
        raise ValueError(f"last_obs {last_obs} must be in 1..{r.shape[0]} (the returns there are)")
    # Imported here: arch pulls in statsmodels (seconds), and everything else
    # in this module, and every importer of tasks.evaluate, needs numpy only.
    from arch import arch_model
    from arch.utility.exceptions import ConvergenceWarning

    am = arch_model(SCALE * r, mean="Constant", vol="GARCH", p=1, q=1, dist="normal")
    with warnings.catch_warnings():
        # Non-convergence is reported by the flag below, as an error.
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = am.fit(last_obs=last_obs, disp="off")
    if res.convergence_flag != 0:
        raise RuntimeError(f"GARCH(1,1) fit on {last_obs} training returns did not converge "
                           f"(optimizer flag {res.convergence_flag}: {res.optimization_result.message})")
    mu, omega, alpha, beta = (float(v) for v in res.params[["mu", "omega", "alpha[1]", "beta[1]"]])
    return GarchParams(mu=mu / SCALE, omega=omega / SCALE**2, alpha=alpha, beta=beta,
                       s2_0=backcast(r[:last_obs] - mu / SCALE))


def garch_variance(r: np.ndarray, p: GarchParams) -> np.ndarray:
    """One-step variances s2 (N,) of returns r (N-1,) with fixed parameters.

    s2[0] = p.s2_0;  s2[t] = ω + α (r_t - μ)² + β s2[t-1]   (r_t = r[t-1]).
    """
    e = r - p.mu                                                # (N-1,)
    s2 = np.empty(r.shape[0] + 1)                               # (N,)
    s2[0] = p.s2_0
    for t in range(1, s2.shape[0]):
        s2[t] = p.omega + p.alpha * e[t - 1] ** 2 + p.beta * s2[t - 1]
    return s2


def garch_h_day_variance(s2_next: np.ndarray, p: GarchParams, horizons: Sequence[int]) -> np.ndarray:
    """Variance (n, h) of the h-day sum of returns, from one-step variances s2_next (n,).

    v_1 = s2_next;  v_j = ω + (α + β) v_{j-1}, j >= 2 (E_t e²_{t+j-1} = v_{j-1});
    Var_t(r_{t+1} + ... + r_{t+h}) = v_1 + ... + v_h.
    """
    hs = np.asarray(horizons)
    v = np.empty((s2_next.shape[0], int(hs.max())))             # (n, H)
    v[:, 0] = s2_next
    for j in range(1, v.shape[1]):
        v[:, j] = p.omega + (p.alpha + p.beta) * v[:, j - 1]
    return np.cumsum(v, axis=1)[:, hs - 1]                      # (n, h)

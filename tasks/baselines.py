"""Baseline forecasts a model has to beat, fitted on the training split only.

Inputs are one symbol's close series ``close`` (N,) (the feature frame's
``close`` column, the rows ``Split.ends`` index) and the window ends of each
split; targets are y_h(t) = ln(close[t+h] / close[t]) (DESIGN.md, Targets).
``fit_baselines`` reads only the training rows (and, for the ridge penalty,
the validation windows); ``forecast_baselines`` applies the fitted
parameters unchanged to any split. Shapes: n windows, h horizons, k
quantile levels, f features, l window length.

Points (n, h):
- **zero** (random walk): ŷ = 0.
- **drift**: the mean training target per horizon.
- **linear**: ridge regression of each horizon's target on the window's last
  step of scaled features x[:, -1, :], with an unpenalised intercept
  (Hastie, Tibshirani & Friedman, ESL 2nd ed., §3.4.1: centre x and y on
  their training means, then shrink). Penalty λ = α m (m training rows, so
  α is per row and the grid does not depend on the split's length), α from
  ``RIDGE_ALPHAS``, chosen per horizon by the **validation MAE** (MAE is what
  the evaluation scores); ties go to the larger α.

Quantiles (n, h, k):
- **empirical**: the training targets' quantiles per horizon (numpy's
  default "linear" rule, Hyndman & Fan 1996 type 7), the same at every t.
- **ewma**: N(0, h σ²_{t+1|t}) quantiles, σ² the RiskMetrics EWMA (λ = 0.94)
  of daily returns up to t. Mean zero, as RiskMetrics assumes for daily
  returns: the EWMA has no mean to estimate.
- **garch**: N(h μ, Σ_{j=1..h} E_t σ²_{t+j}) quantiles of a GARCH(1,1) with
  a constant mean μ, fitted by arch on the training period's returns and
  filtered through later rows with those parameters. Mean h μ: μ is fitted
  jointly with the variance, so these are the fitted model's own predictive
  quantiles (arch's mean forecast of each step is μ).
Both volatility baselines are explained in ``tasks.volatility``.

The training period is rows 0 .. t_a + H (t_a the last training window end,
H the largest horizon): the rows of the training windows' inputs and
targets. The embargo of ``tasks.windows`` puts every validation and test
input after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import special

from tasks.metrics import check_levels
from tasks.volatility import (GarchParams, backcast, ewma_variance, fit_garch, garch_h_day_variance,
                              garch_variance, log_returns)
from tasks.windows import Windows

RIDGE_ALPHAS = 10.0 ** np.arange(4.0, -4.5, -0.5)  # (17,) 1e4 .. 1e-4, largest first for the tie rule
POINT_BASELINES = ("zero", "drift", "linear")
QUANTILE_BASELINES = ("empirical", "ewma", "garch")


@dataclass(frozen=True)
class RidgeFit:
    intercept: np.ndarray  # (h,)
    coef: np.ndarray  # (f, h)
    alpha: np.ndarray  # (h,) chosen α per horizon; penalty λ = α · m

    def predict(self, x_last: np.ndarray) -> np.ndarray:
        """(n, f) last-step features -> (n, h) forecasts."""
        return np.asarray(x_last, dtype=np.float64) @ self.coef + self.intercept


def fit_ridge(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
              alphas: np.ndarray = RIDGE_ALPHAS) -> RidgeFit:
    """Ridge of y (m, h) on x (m, f) for every α, keeping per horizon the α of least validation MAE.

    With centred Xc = U S Vᵀ (thin SVD), the penalised least-squares
    coefficients are W(λ) = V diag(s / (s² + λ)) Uᵀ yc (ESL eq. 3.47), one
    SVD for the whole grid; the intercept is ȳ - x̄ W.
    """
    x_train, y_train, x_val, y_val = (np.asarray(a, dtype=np.float64) for a in (x_train, y_train, x_val, y_val))
    m = x_train.shape[0]
    x_mean, y_mean = x_train.mean(axis=0), y_train.mean(axis=0)  # (f,), (h,)
    u, s, vt = np.linalg.svd(x_train - x_mean, full_matrices=False)  # (m, r), (r,), (r, f)
    shrink = s / (s**2 + m * np.asarray(alphas)[:, None])       # (g, r)
    coefs = np.einsum("rf,gr,rh->gfh", vt, shrink, u.T @ (y_train - y_mean))  # (g, f, h)
    intercepts = y_mean - np.einsum("f,gfh->gh", x_mean, coefs)  # (g, h)
    val_pred = np.einsum("vf,gfh->gvh", x_val, coefs) + intercepts[:, None, :]  # (g, v, h)
    mae = np.abs(val_pred - y_val).mean(axis=1)                 # (g, h)
    best = np.argmin(mae, axis=0)                               # (h,) first minimum: the largest α of a tie
    cols = np.arange(y_train.shape[1])
    return RidgeFit(intercept=intercepts[best, cols], coef=coefs[best, :, cols].T,
                    alpha=np.asarray(alphas)[best])


def targets(close: np.ndarray, ends: np.ndarray, horizons: Sequence[int]) -> np.ndarray:
    """y (n, h) = ln(close[t+h] / close[t]) for each end t, in float64."""
    e, hs = np.asarray(ends), np.asarray(horizons)
    return np.log(close[e[:, None] + hs] / close[e[:, None]])   # (n, h)


def normal_quantiles(mean: np.ndarray, var: np.ndarray, quantiles) -> np.ndarray:
    """mean + sqrt(var) z_τ (..., k) for mean, var (...) and levels τ (k,), z_τ the N(0, 1) quantile."""
    z = special.ndtri(check_levels(quantiles))                   # (k,) ndtri: N(0, 1) quantile
    return mean[..., None] + np.sqrt(var)[..., None] * z        # (..., k)


@dataclass(frozen=True)
class BaselineParams:
    """Everything fitted; nothing here depends on validation or test rows except ridge.alpha (validation)."""

    horizons: tuple[int, ...]
    quantiles: np.ndarray  # (k,)
    drift: np.ndarray  # (h,)
    ridge: RidgeFit
    empirical: np.ndarray  # (h, k)
    ewma_s2_0: float  # EWMA start: backcast of the training returns
    garch: GarchParams


@dataclass(frozen=True)
class BaselineForecasts:
    zero: np.ndarray  # (n, h)
    drift: np.ndarray  # (n, h)
    linear: np.ndarray  # (n, h)
    empirical: np.ndarray  # (n, h, k)
    ewma: np.ndarray  # (n, h, k)
    garch: np.ndarray  # (n, h, k)


def _check_ends(close: np.ndarray, horizon: int, **ends: np.ndarray) -> None:
    """Each split's ends (n,) increasing, after the previous split's, with rows t + horizon in close."""
    last = -1
    for name, e in ends.items():
        if e.ndim != 1 or e.size == 0 or np.any(np.diff(e) <= 0) or e[0] <= last or e[-1] + horizon >= close.size:
            raise ValueError(f"{name} ends must be increasing row indices after the previous split's, with "
                             f"every target row t + {horizon} < {close.size} (the close series' length); "
                             f"pass Split.ends of one make_windows call and that frame's close")
        last = e[-1]


def _last_step(x: np.ndarray, n: int, name: str) -> np.ndarray:
    if x.ndim != 3 or x.shape[0] != n:
        raise ValueError(f"{name} x {x.shape} must be windows (n, l, f) with n = {n} ends")
    return x[:, -1, :]                                          # (n, f)


def fit_baselines(close: np.ndarray, train_ends: np.ndarray, val_ends: np.ndarray, x_train: np.ndarray,
                  x_val: np.ndarray, horizons: Sequence[int], quantiles) -> BaselineParams:
    """Fit every baseline: close (N,), ends (m,) and (v,) row indices, x windows (m, l, f) and (v, l, f)."""
    close = np.asarray(close, dtype=np.float64)
    r = log_returns(close)                                      # (N-1,)
    hs = tuple(int(h) for h in horizons)
    q = check_levels(quantiles)
    train_ends, val_ends = np.asarray(train_ends), np.asarray(val_ends)
    _check_ends(close, max(hs), train=train_ends, val=val_ends)
    y_train = targets(close, train_ends, hs)                    # (m, h)
    ridge = fit_ridge(_last_step(x_train, train_ends.size, "train"), y_train,
                      _last_step(x_val, val_ends.size, "val"), targets(close, val_ends, hs))
    n_train_returns = int(train_ends[-1]) + max(hs)             # r_1 .. r_{t_a + H}
    return BaselineParams(
        horizons=hs, quantiles=q, drift=y_train.mean(axis=0), ridge=ridge,
        empirical=np.quantile(y_train, q, axis=0).T,            # (h, k)
        ewma_s2_0=backcast(r[:n_train_returns]),
        garch=fit_garch(r, n_train_returns),
    )


def forecast_baselines(params: BaselineParams, close: np.ndarray, ends: np.ndarray,
                       x: np.ndarray) -> BaselineForecasts:
    """Every baseline's forecasts for the windows ending at ends (n,), with inputs x (n, l, f).

    The EWMA and GARCH filters run over the whole close series (N,), but the
    forecast at t reads returns up to t only.
    """
    close = np.asarray(close, dtype=np.float64)
    ends = np.asarray(ends)
    hs = np.asarray(params.horizons)                            # (h,)
    _check_ends(close, 0, forecast=ends)                        # no target needed: t < N suffices
    r = log_returns(close)                                      # (N-1,)
    n, h = ends.size, hs.size
    g = params.garch
    ewma_var = ewma_variance(r, params.ewma_s2_0)[ends][:, None] * hs  # (n, h)
    garch_var = garch_h_day_variance(garch_variance(r, g)[ends], g, params.horizons)  # (n, h)
    return BaselineForecasts(
        zero=np.zeros((n, h)),
        drift=np.broadcast_to(params.drift, (n, h)).copy(),
        linear=params.ridge.predict(_last_step(np.asarray(x), n, "forecast")),
        empirical=np.broadcast_to(params.empirical, (n, h, params.quantiles.size)).copy(),
        ewma=normal_quantiles(np.zeros((n, h)), ewma_var, params.quantiles),
        garch=normal_quantiles(np.broadcast_to(g.mu * hs, (n, h)), garch_var, params.quantiles),
    )


def baselines_on_test(windows: Windows, close: np.ndarray, quantiles) -> tuple[BaselineParams, BaselineForecasts]:
    """Fit on ``windows``' train (and val) split, forecast its test split; close (N,) is the frame's ``close``."""
    params = fit_baselines(close, windows.train.ends, windows.val.ends, windows.train.x, windows.val.x,
                           windows.horizons, quantiles)
    return params, forecast_baselines(params, close, windows.test.ends, windows.test.x)

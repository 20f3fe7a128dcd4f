"""Scores of quantile and point forecasts, and the Diebold–Mariano test.

Shapes: n forecast rows (windows), k quantile levels ``quantiles`` (strictly
increasing in (0, 1)); a quantile forecast ``q_pred`` (n, k) holds one column
per level, in the levels' order. The central interval is the one between the
lowest and the highest level (0.05 and 0.95: a 90% interval).

Overlap. Consecutive windows' h-day targets share h - 1 daily returns, so n
forecast errors carry about n / h independent pieces of information
(``effective_n``) and are autocorrelated up to lag h - 1, which is why the DM
test below uses a long-run (HAC) variance with h - 1 lags.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special


def check_levels(quantiles) -> np.ndarray:
    """Quantile levels as a (k,) float64 array; raises unless strictly increasing in (0, 1)."""
    q = np.asarray(quantiles, dtype=np.float64)                 # (k,)
    if q.ndim != 1 or q.size == 0 or not np.all((q > 0) & (q < 1)) or np.any(np.diff(q) <= 0):
        raise ValueError(f"quantile levels {np.atleast_1d(q).tolist()} must be a non-empty, strictly "
                         f"increasing list in (0, 1), e.g. [0.05, 0.5, 0.95]")
    return q


def _check_pair(y: np.ndarray, q_pred: np.ndarray, q: np.ndarray) -> None:
    if q_pred.shape != (*y.shape, q.size):
        raise ValueError(f"q_pred {q_pred.shape} must be y's shape {y.shape} plus one column per "
                         f"quantile level ({q.size})")


def pinball_loss(y: np.ndarray, q_pred: np.ndarray, quantiles) -> float:
    """Mean pinball (quantile) loss over rows and levels.

    y (n,), q_pred (n, k), quantiles (k,). For one level τ and error u = y - q,
    the loss is max(τ u, (τ - 1) u) (Koenker & Bassett 1978): under-forecasts
    cost τ per unit, over-forecasts 1 - τ. At τ = 0.5 it is half the absolute
    error, so the pinball loss of a median-only forecast is MAE / 2.
    """
    q = check_levels(quantiles)
    y = np.asarray(y, dtype=np.float64)
    q_pred = np.asarray(q_pred, dtype=np.float64)
    _check_pair(y, q_pred, q)
    u = y[..., None] - q_pred                                   # (n, k)
    return float(np.mean(np.maximum(q * u, (q - 1) * u)))


def coverage(y: np.ndarray, q_pred: np.ndarray, quantiles) -> float:
    """Share of y (n,) inside [q_pred[:, 0], q_pred[:, -1]] (ends included), q_pred (n, k).

    With levels (0.05, ..., 0.95) a calibrated forecast covers 0.90.
    """
    q = check_levels(quantiles)
    y = np.asarray(y, dtype=np.float64)
    q_pred = np.asarray(q_pred, dtype=np.float64)
    _check_pair(y, q_pred, q)
    if q.size < 2:
        raise ValueError(f"coverage needs at least two quantile levels, got {q.tolist()}")
    return float(np.mean((y >= q_pred[..., 0]) & (y <= q_pred[..., -1])))


def interval_width(q_pred: np.ndarray, quantiles) -> float:
    """Mean width of the central interval, q_pred[:, -1] - q_pred[:, 0], q_pred (n, k)."""
    q = check_levels(quantiles)
    q_pred = np.asarray(q_pred, dtype=np.float64)
    if q_pred.ndim < 1 or q_pred.shape[-1] != q.size or q.size < 2:
        raise ValueError(f"q_pred {q_pred.shape} must have one last-axis column per level "
                         f"{q.tolist()} (at least two)")
    return float(np.mean(q_pred[..., -1] - q_pred[..., 0]))


def sort_quantiles(q_pred: np.ndarray) -> np.ndarray:
    """Sort each row's quantiles (..., k) along the last axis.

    Rearrangement (Chernozhukov, Fernández-Val & Galichon 2010, Econometrica
    78(3)) removes crossings and never raises the pinball loss; the model
    side applies it before forecasts are stored or scored.
    """
    return np.sort(np.asarray(q_pred), axis=-1)


def check_non_crossing(q_pred: np.ndarray, name: str = "q_pred") -> None:
    """Raise unless every row's quantiles (..., k) are non-decreasing in the level."""
    q_pred = np.asarray(q_pred)
    bad = np.diff(q_pred, axis=-1) < 0                         # (..., k-1)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} quantiles cross at index {at[:-1]}: level {at[-1]} is "
                         f"{q_pred[at]:.6g}, level {at[-1] + 1} is {q_pred[at[:-1] + (at[-1] + 1,)]:.6g}; "
                         f"apply tasks.metrics.sort_quantiles to the forecasts first")


def overlap(h: int, stride: int = 1) -> int:
    """How many consecutive windows share a daily return of an h-day target: ceil(h / stride)."""
    if h < 1 or stride < 1:
        raise ValueError(f"horizon {h} and stride {stride} must be >= 1")
    return -(-h // stride)


def effective_n(n: int, h: int, stride: int = 1) -> float:
    """About how many independent h-day errors n overlapping windows hold: n / ceil(h / stride).

    With stride 1 (every window end kept) this is n / h.
    """
    return n / overlap(h, stride)


def newey_west_variance(d: np.ndarray, lags: int) -> float:
    """Long-run variance of d (n,) with Bartlett weights (Newey & West 1987, Econometrica 55(3)).

    γ_j = (1/n) Σ_{t>j} (d_t - d̄)(d_{t-j} - d̄);  V = γ_0 + 2 Σ_{j=1..L} (1 - j/(L+1)) γ_j.
    The Bartlett weights keep V >= 0, which the plain truncated sum of
    Diebold & Mariano (1995) does not.
    """
    d = np.asarray(d, dtype=np.float64)
    c = d - d.mean()                                            # (n,)
    n = c.size
    v = float(c @ c) / n
    for j in range(1, min(lags, n - 1) + 1):
        v += 2 * (1 - j / (lags + 1)) * float(c[j:] @ c[:-j]) / n
    return v


def diebold_mariano(loss_a: np.ndarray, loss_b: np.ndarray, h: int) -> tuple[float, float]:
    """Diebold–Mariano test of equal mean loss, with the HLN small-sample correction.

    loss_a, loss_b (n,): per-row losses of two forecasts of the same targets
    (absolute errors in ``tasks.evaluate``); h: the forecast horizon in rows,
    so errors overlap up to lag h - 1 (pass ``overlap(h, stride)`` for strided
    windows).

    d_t = loss_a - loss_b;  DM = d̄ / sqrt(V / n), V the Newey–West variance
    with h - 1 lags (Diebold & Mariano 1995, JBES 13(3), with Bartlett
    weights in place of their truncated sum). Harvey, Leybourne & Newbold
    (1997, IJF 13(2)) scale it by sqrt((n + 1 - 2h + h(h - 1)/n) / n)
    = sqrt((n - h)(n - h + 1)) / n and compare with Student's t, n - 1 degrees
    of freedom; their factor was derived for the truncated sum, so with
    Bartlett weights it is an approximation.

    Returns (stat, two-sided p-value); stat < 0 means a has the smaller mean
    loss. Both are NaN when the test says nothing: n <= h (one overlapping
    block), or V = 0 (a constant loss difference, e.g. two identical
    forecasts).
    """
    a = np.asarray(loss_a, dtype=np.float64)
    b = np.asarray(loss_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"loss_a {a.shape} and loss_b {b.shape} must be (n,) arrays of one length")
    if h < 1:
        raise ValueError(f"horizon h must be >= 1, got {h}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("losses must be finite")
    d = a - b                                                   # (n,)
    n = d.size
    v = newey_west_variance(d, h - 1) if n > h else 0.0
    if v <= 0:
        return float("nan"), float("nan")
    dm = d.mean() / math.sqrt(v / n)
    stat = dm * math.sqrt((n - h) * (n - h + 1)) / n
    return float(stat), float(2 * special.stdtr(n - 1, -abs(stat)))  # stdtr: Student's t CDF

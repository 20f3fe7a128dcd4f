"""Test-split metrics per horizon, for the model and two naive forecasts.

All inputs are forward log returns ``y_h(t) = ln(close[t+h] / close[t])``
(see DESIGN.md, Targets), laid out as (n, h): n windows, one column per
horizon.

The two baselines a forecaster has to beat:

- **zero** (random walk): ``ŷ = 0``, tomorrow's price is today's price;
- **drift**: ``ŷ_j = mean(train_y[:, j])``, the mean training return of each
  horizon, a constant that captures the average trend of the training period.

Skill is ``1 - MAE_model / MAE_naive``: 0 means no better than the baseline,
1 a perfect forecast, negative worse than the baseline.

Directional accuracy compares directions, where a return's direction is
"up" when ``r >= 0`` and "down" when ``r < 0``; the same rule is applied to
forecasts and to true returns. So a zero forecast always says "up", and
``zero_dir_acc`` is exactly the share of test returns that are >= 0: the
accuracy of "always up", the majority class of a rising market. This is the
harder (more honest) choice for a bar to beat than 0.5 or "always down".

``evaluate_quantile_forecasts`` is the superset for quantile forecasts
(n, h, k): the model's median (the 0.5 level) is its point forecast, scored
as above against three point baselines (zero, drift, linear); its quantiles
are scored by pinball loss, coverage and width of the central interval
(``tasks.metrics``) beside three quantile baselines (empirical, ewma,
garch; ``tasks.baselines``). Pinball skill is ``1 - pinball / pinball_base``.
``dm_p_zero`` is the two-sided Diebold–Mariano p-value (HLN-corrected) of the
median's absolute errors against the random walk's; the sign of the
difference is the sign of ``skill_zero``. ``n_eff`` is n / h for
overlapping windows (stride 1).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tasks.baselines import POINT_BASELINES, QUANTILE_BASELINES, BaselineForecasts
from tasks.metrics import (check_levels, check_non_crossing, coverage, diebold_mariano, effective_n,
                           interval_width, overlap, pinball_loss)

EVALUATION_KEYS = (
    "horizon", "n",
    "mae", "rmse", "dir_acc",
    "zero_mae", "zero_rmse", "zero_dir_acc",
    "drift_mae", "drift_rmse", "drift_dir_acc",
    "skill_zero", "skill_drift",
)
_POINT = ("mae", "rmse", "dir_acc")
_INTERVAL = ("pinball", "coverage", "width")
QUANTILE_EVALUATION_KEYS = (
    "horizon", "n", "n_eff",
    *_POINT,
    *(f"{b}_{m}" for b in POINT_BASELINES for m in _POINT),
    *(f"skill_{b}" for b in POINT_BASELINES),
    *_INTERVAL,
    *(f"{b}_{m}" for b in QUANTILE_BASELINES for m in _INTERVAL),
    *(f"pinball_skill_{b}" for b in QUANTILE_BASELINES),
    "dm_p_zero",
)


def _errors(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, float]:
    """MAE, RMSE and directional accuracy of one horizon's column (n,)."""
    err = y_pred - y_true                                   # (n,)
    mae = float(np.mean(np.abs(err)))
    rmse = float(np.sqrt(np.mean(err**2)))
    # "up" is r >= 0, for forecasts and truths alike (module docstring).
    dir_acc = float(np.mean((y_pred >= 0) == (y_true >= 0)))
    return mae, rmse, dir_acc


def _check_finite(**arrays: np.ndarray) -> None:
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0].tolist()
            raise ValueError(f"{name} has a non-finite value at {bad}: {a[tuple(bad)]}")


def _skill(score: float, base: float) -> float:
    # A baseline score (MAE or pinball) of 0 means the baseline is perfect
    # (e.g. a flat price series): skill is undefined, reported as NaN.
    return 1.0 - score / base if base > 0 else float("nan")


def evaluate_forecasts(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    horizons: Sequence[int],
    train_y: np.ndarray,
) -> list[dict]:
    """Metrics of ``y_pred`` against ``y_true``, one dict per horizon.

    y_true, y_pred: (n, h) forward log returns of the test split.
    horizons: the h horizons, in column order.
    train_y: (m, h) training-split targets, for the drift baseline.

    Returns one dict per horizon with keys ``EVALUATION_KEYS`` (plain Python
    ints and floats). Raises ValueError on mismatched shapes, empty splits or
    non-finite values.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    train_y = np.asarray(train_y, dtype=np.float64)
    horizons = [int(h) for h in horizons]
    if y_true.ndim != 2 or y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true {y_true.shape} and y_pred {y_pred.shape} must have the same (n, h) shape"
        )
    n, h = y_true.shape
    if h != len(horizons) or train_y.ndim != 2 or train_y.shape[1] != h:
        raise ValueError(
            f"y_true {y_true.shape}, train_y {train_y.shape} and horizons {horizons} "
            f"disagree: need (n, {len(horizons)}) and (m, {len(horizons)})"
        )
    if n == 0 or train_y.shape[0] == 0:
        raise ValueError(
            f"empty split: y_true {y_true.shape}, train_y {train_y.shape}; "
            "need at least one test and one training window"
        )
    _check_finite(y_true=y_true, y_pred=y_pred, train_y=train_y)

    drift = train_y.mean(axis=0)                            # (h,)
    rows = []
    for j, horizon in enumerate(horizons):
        t = y_true[:, j]                                    # (n,)
        mae, rmse, dir_acc = _errors(t, y_pred[:, j])
        z_mae, z_rmse, z_dir = _errors(t, np.zeros(n))
        d_mae, d_rmse, d_dir = _errors(t, np.full(n, drift[j]))
        rows.append({
            "horizon": horizon, "n": n,
            "mae": mae, "rmse": rmse, "dir_acc": dir_acc,
            "zero_mae": z_mae, "zero_rmse": z_rmse, "zero_dir_acc": z_dir,
            "drift_mae": d_mae, "drift_rmse": d_rmse, "drift_dir_acc": d_dir,
            "skill_zero": _skill(mae, z_mae), "skill_drift": _skill(mae, d_mae),
        })
    return rows


def _interval(y: np.ndarray, q_pred: np.ndarray, q: np.ndarray) -> tuple[float, float, float]:
    """Pinball, coverage and width of one horizon: y (n,), q_pred (n, k)."""
    return pinball_loss(y, q_pred, q), coverage(y, q_pred, q), interval_width(q_pred, q)


def evaluate_quantile_forecasts(
    y_true: np.ndarray,
    q_pred: np.ndarray,
    quantiles: Sequence[float],
    horizons: Sequence[int],
    baselines: BaselineForecasts,
    stride: int = 1,
) -> list[dict]:
    """Point and quantile metrics of the model and the baselines, one dict per horizon.

    y_true: (n, h) test targets. q_pred: (n, h, k) the model's quantiles at
    levels ``quantiles`` (k,), increasing, 0.5 among them, not crossing.
    baselines: ``tasks.baselines.forecast_baselines`` on the same windows.
    stride: windows' spacing in rows, for ``n_eff`` and the DM lags.

    Returns dicts with keys ``QUANTILE_EVALUATION_KEYS`` (plain ints and floats).
    """
    q = check_levels(quantiles)
    y_true = np.asarray(y_true, dtype=np.float64)
    q_pred = np.asarray(q_pred, dtype=np.float64)
    horizons = [int(h) for h in horizons]
    if y_true.ndim != 2 or y_true.shape[0] == 0 or y_true.shape[1] != len(horizons):
        raise ValueError(f"y_true {y_true.shape} must be (n, {len(horizons)}) with n >= 1 "
                         f"(one column per horizon {horizons})")
    if q.size < 2 or not np.any(q == 0.5):
        raise ValueError(f"quantile levels {q.tolist()} must include 0.5 (the median is the point "
                         f"forecast) and at least one other level")
    n, h = y_true.shape
    arrays = {"q_pred": q_pred, **{b: getattr(baselines, b) for b in (*POINT_BASELINES, *QUANTILE_BASELINES)}}
    for name, a in arrays.items():
        want = (n, h) if name in POINT_BASELINES else (n, h, q.size)
        if a.shape != want:
            raise ValueError(f"{name} {a.shape} must be {want} to match y_true {y_true.shape} and "
                             f"{q.size} quantile levels")
    _check_finite(y_true=y_true, **arrays)
    check_non_crossing(q_pred)
    mid = int(np.flatnonzero(q == 0.5)[0])

    rows = []
    for j, horizon in enumerate(horizons):
        t = y_true[:, j]                                    # (n,)
        median = q_pred[:, j, mid]                          # (n,)
        row = {"horizon": horizon, "n": n, "n_eff": effective_n(n, horizon, stride),
               **dict(zip(_POINT, _errors(t, median))),
               **dict(zip(_INTERVAL, _interval(t, q_pred[:, j], q)))}
        for b in POINT_BASELINES:
            row.update(zip((f"{b}_{m}" for m in _POINT), _errors(t, getattr(baselines, b)[:, j])))
            row[f"skill_{b}"] = _skill(row["mae"], row[f"{b}_mae"])
        for b in QUANTILE_BASELINES:
            row.update(zip((f"{b}_{m}" for m in _INTERVAL), _interval(t, getattr(baselines, b)[:, j], q)))
            row[f"pinball_skill_{b}"] = _skill(row["pinball"], row[f"{b}_pinball"])
        row["dm_p_zero"] = diebold_mariano(np.abs(t - median), np.abs(t), overlap(horizon, stride))[1]
        rows.append({k: row[k] for k in QUANTILE_EVALUATION_KEYS})
    return rows

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
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

EVALUATION_KEYS = (
    "horizon", "n",
    "mae", "rmse", "dir_acc",
    "zero_mae", "zero_rmse", "zero_dir_acc",
    "drift_mae", "drift_rmse", "drift_dir_acc",
    "skill_zero", "skill_drift",
)


def _errors(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, float]:
    """MAE, RMSE and directional accuracy of one horizon's column (n,)."""
    err = y_pred - y_true                                   # (n,)
    mae = float(np.mean(np.abs(err)))
    rmse = float(np.sqrt(np.mean(err**2)))
    # "up" is r >= 0, for forecasts and truths alike (module docstring).
    dir_acc = float(np.mean((y_pred >= 0) == (y_true >= 0)))
    return mae, rmse, dir_acc


def _skill(mae: float, naive_mae: float) -> float:
    # A naive MAE of 0 means every true return equals the naive forecast
    # (e.g. a flat price series): skill is undefined, reported as NaN.
    return 1.0 - mae / naive_mae if naive_mae > 0 else float("nan")


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
    for name, a in (("y_true", y_true), ("y_pred", y_pred), ("train_y", train_y)):
        if not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0].tolist()
            raise ValueError(f"{name} has a non-finite value at {bad}: {a[tuple(bad)]}")

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

"""A walk-forward backtest's numbers: each fold's rows, and the summary across folds.

Each fold's evaluation (``steps.evaluate_model``: one dict per horizon, keys
the evaluations table's) becomes rows of the ``backtests`` table with the
fold's dates. Per symbol and horizon, the summary gives, for every skill key
present (``skill_*``, ``pinball_skill_*``), its mean, standard deviation
(ddof 1: the spread between folds, NaN for one fold) and minimum across
folds, and the share of folds where it is > 0 (a NaN skill counts as not);
and a pooled Diebold-Mariano test of the model against the random walk.

Pooled DM. The K test blocks are consecutive, so their windows form one run
of consecutive as-of dates: the per-window loss differentials
d_t = |y_t - ŷ_t| - |y_t| (model minus random walk) of all folds, joined in
fold order, are one series, tested with ``tasks.metrics.diebold_mariano``
and h - 1 lags (``overlap(h, stride)``). One DM per fold would have a fifth
of the windows each, and K p-values do not add up to one answer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np

from tasks.metrics import diebold_mariano, overlap
from tasks.windows import Split, Windows

SKILL_PREFIXES = ("skill_", "pinball_skill_")


def _day(d: np.datetime64) -> dt.date:
    return d.astype("datetime64[D]").astype(dt.date)


def fold_rows(windows: Windows, evaluation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the ``backtests`` table for one fold: each horizon's evaluation
    with the as-of dates of the first and last training and test windows."""
    def span(part: Split, name: str) -> dict[str, dt.date]:
        return {f"{name}_start": _day(part.end_dates[0]), f"{name}_end": _day(part.end_dates[-1])}

    dates = span(windows.train, "train") | span(windows.test, "test")
    return [dates | row for row in evaluation]


def point_forecast(pred: np.ndarray, quantiles: Sequence[float] | None = None) -> np.ndarray:
    """The model's point forecast (n, h): ``pred`` itself, or for quantile
    forecasts (n, h, k) at levels ``quantiles`` the median, as
    ``tasks.evaluate`` scores it."""
    pred = np.asarray(pred, dtype=np.float64)
    if pred.ndim == 2:
        return pred
    levels = np.asarray(quantiles if quantiles is not None else [], dtype=np.float64)
    if pred.ndim != 3 or levels.shape != (pred.shape[2],) or not np.any(levels == 0.5):
        raise ValueError(f"forecasts {pred.shape} must be points (n, h), or quantiles (n, h, k) with their k "
                         f"levels including 0.5; got levels {levels.tolist()}")
    return pred[:, :, int(np.flatnonzero(levels == 0.5)[0])]  # (n, h)


def loss_differentials(y: np.ndarray, pred: np.ndarray, quantiles: Sequence[float] | None = None) -> np.ndarray:
    """|y - ŷ| - |y| per window and horizon (n, h): the model's absolute error
    minus the random walk's (its forecast is 0). Negative: the model was closer."""
    y = np.asarray(y, dtype=np.float64)
    return np.abs(y - point_forecast(pred, quantiles)) - np.abs(y)  # (n, h)


def skill_keys(row: dict[str, Any]) -> list[str]:
    """The skill keys of an evaluation or backtests row, in its order."""
    return [k for k in row if k.startswith(SKILL_PREFIXES)]


def summarize(rows: list[dict[str, Any]], diffs: dict[str, list[np.ndarray]], horizons: Sequence[int],
              stride: int = 1) -> list[dict[str, Any]]:
    """One dict per (symbol, horizon) of the symbols in ``diffs``.

    rows: ``backtests`` rows (``ResultsStore.backtests``); diffs: per symbol,
    each fold's ``loss_differentials`` (n_k, h), in fold order. Keys: symbol,
    horizon, folds, windows, ``{skill}_mean|_std|_min|_pos`` for every skill
    key, dm_stat and dm_p (pooled, module docstring).
    """
    out = []
    for symbol, per_fold in diffs.items():
        mine = sorted((r for r in rows if r["symbol"] == symbol), key=lambda r: (r["horizon"], r["fold"]))
        for j, h in enumerate(horizons):
            folds = [r for r in mine if r["horizon"] == h]
            if len(folds) != len(per_fold):
                raise ValueError(f"{symbol}: {len(folds)} stored folds at horizon {h} but {len(per_fold)} folds "
                                 f"of loss differentials; summarize one backtest's complete symbols")
            d = np.concatenate([fold[:, j] for fold in per_fold])  # (sum n_k,)
            stat, p = diebold_mariano(d, np.zeros_like(d), overlap(h, stride))
            row = {"symbol": symbol, "horizon": h, "folds": len(folds), "windows": int(d.size)}
            for key in skill_keys(folds[0]):
                v = np.array([np.nan if f[key] is None else f[key] for f in folds], dtype=np.float64)
                row |= {f"{key}_mean": float(v.mean()),
                        f"{key}_std": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
                        f"{key}_min": float(v.min()), f"{key}_pos": float(np.mean(v > 0))}
            out.append(row | {"dm_stat": stat, "dm_p": p})
    return out

"""Sliding windows over a feature frame, split in time with an embargo.

A window ending at row t (its last input bar) has inputs x = features[t-l+1 .. t]
(never a row after t) and targets y_h = ln(close[t+h] / close[t]) for each
horizon h (DESIGN.md, Targets). Shapes: x (n, l, f), y (n, h).

Splits. The window ends that have every target, t in [l-1, N-1-H] (H the
largest horizon), are cut into train | gap | val | gap | test, in time order.
A gap skips H + l - 1 ends, so the first validation window ends H + l rows
after the last training window t_a: its first input row, t_a + H + 1, comes
after the last training target row, t_a + H. No training target overlaps a
validation window's inputs or targets; the same holds between validation and
test. ``val_frac`` and ``test_frac`` are shares of the windows left after the
two gaps (each split gets at least one); ``stride`` keeps every stride-th end
of each split, counted back from its last one, so the most recent window of
each split is always kept. A walk-forward fold (``tasks.folds``) is the same
layout over the ends up to its test block, with the test size fixed; both
build their windows with ``windows_at``.

The scaler (per-feature mean and std, ddof 0) is fitted on the rows that the
training windows' inputs cover, and nothing else; validation, test and the
forecasting window (``latest_window``) reuse it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from configs.schema import WindowConfig
from tasks.plan import embargo_rows, max_horizon, required_rows, split_sizes


@dataclass(frozen=True)
class Scaler:
    """z = (x - mean) / std per feature; saved in the model's metadata.json."""

    mean: np.ndarray  # (f,) float64
    std: np.ndarray  # (f,) float64, > 0

    @classmethod
    def fit(cls, rows: np.ndarray) -> "Scaler":
        """Fit on rows (r, f); a constant feature gets std 1, so it scales to 0."""
        mean = rows.mean(axis=0)
        std = rows.std(axis=0)
        return cls(mean=mean, std=np.where(std > 0, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(..., f) -> (..., f) float32."""
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"scaler has {self.mean.shape[0]} features, input has {x.shape[-1]}")
        return ((x - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> "Scaler":
        mean = np.asarray(d["mean"], dtype=np.float64)
        std = np.asarray(d["std"], dtype=np.float64)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"scaler mean and std must be lists of one length; got {mean.shape} and {std.shape}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError("scaler mean must be finite and std finite and > 0; the saved metadata is damaged")
        return cls(mean=mean, std=std)


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # (n, l, f) float32, scaled inputs
    y: np.ndarray  # (n, h) float32, ln(close[t+h] / close[t])
    end_dates: np.ndarray  # (n,) datetime64[D], the date t of each window's last bar
    close: np.ndarray  # (n,) float64, close at t: forecast price = close * exp(y)
    ends: np.ndarray  # (n,) int64, row t of each window's last bar in the feature frame (for tasks.baselines)

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True)
class Windows:
    train: Split
    val: Split
    test: Split
    scaler: Scaler
    feature_names: list[str]
    horizons: tuple[int, ...]
    seq_len: int


def end_rows(n_rows: int, w: WindowConfig) -> tuple[int, int]:
    """First and last row that can end a window with every target: (l - 1, N - 1 - H)."""
    return w.seq_len - 1, n_rows - 1 - max_horizon(w)


def split_bounds(first: int, last: int, w: WindowConfig, n_test: int | None = None) -> list[tuple[int, int]]:
    """(first, last) window-end rows of train, val and test, laid out over the
    ends first..last as train | gap | val | gap | test, test ending at ``last``.

    Sizes are ``tasks.plan.split_sizes`` of the ends left after the two gaps;
    ``n_test`` fixes the test size (a walk-forward fold, ``tasks.folds``).
    """
    gap = embargo_rows(w)
    out = []
    for size in split_sizes(last - first + 1 - 2 * gap, w, n_test):
        out.append((first, first + size - 1))
        first += size + gap
    return out


def strided_ends(bounds: tuple[int, int], stride: int) -> np.ndarray:
    """Every stride-th end row of (first, last), counted back from last, ascending."""
    first, last = bounds
    return np.arange(last, first - 1, -stride)[::-1]


def _split_ends(n_rows: int, w: WindowConfig) -> list[np.ndarray]:
    """Window end rows of train, val and test."""
    return [strided_ends(b, w.stride) for b in split_bounds(*end_rows(n_rows, w), w)]


def _feature_matrix(frame: pl.DataFrame, names: Sequence[str]) -> np.ndarray:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ValueError(f"feature frame lacks {missing}; it has {frame.columns}. "
                         f"Build it with the same feature config as the saved model")
    feats = frame.select(names).to_numpy().astype(np.float64)  # (N, f)
    if not np.all(np.isfinite(feats)):
        col = names[int(np.argmax(~np.all(np.isfinite(feats), axis=0)))]
        raise ValueError(f"feature {col} has null or non-finite values; build the frame with build_features")
    return feats


def make_windows(frame: pl.DataFrame, cfg: WindowConfig | None = None, *, symbol: str | None = None,
                 **fields: object) -> Windows:
    """Train/val/test windows of ``frame`` (``date``, ``close``, features).

    The window settings are ``cfg``, or ``WindowConfig(**fields)`` (e.g.
    ``seq_len=20, horizons=[1, 5]``; the rest take the config's defaults).
    ``symbol`` only names the frame in error messages.
    """
    if cfg is not None and fields:
        raise TypeError(f"make_windows: pass cfg or the fields {sorted(fields)}, not both")
    w = cfg if cfg is not None else WindowConfig(**fields)
    seq_len, hs = w.seq_len, tuple(w.horizons)
    who = f"{symbol}: " if symbol else ""
    need = required_rows(w)
    if frame.height < need:
        raise ValueError(
            f"{who}{frame.height} feature rows, need >= {need} for windows.seq_len {seq_len}, horizons up to "
            f"{hs[-1]}, val_frac {w.val_frac}, test_frac {w.test_frac} (one window per split, with an "
            f"embargo of {embargo_rows(w)} window ends between splits); use a longer history or a smaller "
            f"seq_len or largest horizon"
        )
    return windows_at(frame, w, _split_ends(frame.height, w), symbol=symbol)


def windows_at(frame: pl.DataFrame, w: WindowConfig, ends: Sequence[np.ndarray], *,
               symbol: str | None = None) -> Windows:
    """The windows of ``frame`` whose last bars are the rows ``ends`` (train, val, test).

    A normal run's ends come from ``_split_ends``, a walk-forward fold's from
    ``tasks.folds``: both build their windows here, the scaler fitted on the
    rows the training windows' inputs cover and nothing else.
    """
    seq_len, hs = w.seq_len, tuple(w.horizons)
    who = f"{symbol}: " if symbol else ""
    lo, hi = end_rows(frame.height, w)
    for part, e in zip(("train", "val", "test"), ends):
        if len(e) == 0 or e[0] < lo or e[-1] > hi:  # ascending: first and last bound them
            raise ValueError(f"{who}{part} window ends {e[:1].tolist()}..{e[-1:].tolist()} must be non-empty "
                             f"and within rows {lo}..{hi} (ends with every target) of {frame.height} feature rows")
    for col in ("date", "close"):
        if col not in frame.columns:
            raise ValueError(f"{who}feature frame lacks {col!r}; build it with build_features")
    names = [c for c in frame.columns if c not in ("date", "close")]
    odd = [c for c in names if not frame[c].dtype.is_numeric()]
    if odd or not names:
        raise ValueError(f"{who}feature columns must be numeric and at least one; got {odd or 'none'} "
                         f"(one symbol's build_features output per call)")
    feats = _feature_matrix(frame, names)
    close = frame["close"].to_numpy().astype(np.float64)  # (N,)
    if not (np.all(np.isfinite(close)) and np.all(close > 0)):
        raise ValueError(f"{who}close must be finite and > 0 to form log-return targets")
    dates = frame["date"].to_numpy()  # (N,) datetime64[D]
    if frame["date"].dtype != pl.Date or np.any(dates[1:] <= dates[:-1]):
        raise ValueError(f"{who}feature frame dates must be pl.Date and strictly increasing")

    covered = np.zeros(frame.height, dtype=bool)
    for t in ends[0]:
        covered[t - seq_len + 1: t + 1] = True
    scaler = Scaler.fit(feats[covered])
    scaled = scaler.transform(feats)  # (N, f)
    windows = np.lib.stride_tricks.sliding_window_view(scaled, seq_len, axis=0)  # (N-l+1, f, l)
    h = np.asarray(hs)

    def split(e: np.ndarray) -> Split:
        x = np.ascontiguousarray(windows[e - seq_len + 1].transpose(0, 2, 1))  # (n, l, f)
        y = np.log(close[e[:, None] + h] / close[e[:, None]]).astype(np.float32)  # (n, h)
        return Split(x=x, y=y, end_dates=dates[e], close=close[e], ends=e.astype(np.int64))

    train, val, test = (split(e) for e in ends)
    return Windows(train=train, val=val, test=test, scaler=scaler, feature_names=names,
                   horizons=hs, seq_len=seq_len)


def latest_window(frame: pl.DataFrame, feature_names: Sequence[str], scaler: Scaler,
                  seq_len: int) -> tuple[np.ndarray, dt.date, float]:
    """The last ``seq_len`` rows of a feature frame, scaled: (x (1, l, f), as-of date, close)."""
    if len(feature_names) != scaler.mean.shape[0]:
        raise ValueError(f"{len(feature_names)} feature names but the scaler has {scaler.mean.shape[0]}")
    if frame.height < seq_len:
        raise ValueError(f"{frame.height} feature rows, the model reads windows of {seq_len}; "
                         f"use a longer history")
    tail = frame.tail(seq_len)
    x = scaler.transform(_feature_matrix(tail, feature_names))[None]  # (1, l, f)
    return x, tail["date"][-1], float(tail["close"][-1])


def windows_ending_at(frame: pl.DataFrame, feature_names: Sequence[str], scaler: Scaler, seq_len: int,
                      ends: np.ndarray) -> np.ndarray:
    """Windows (n, l, f) of ``frame``'s ``feature_names`` ending at rows ``ends``,
    scaled with ``scaler``: another model's inputs on the same days (the
    registry scores a champion on a new model's test windows this way)."""
    ends = np.asarray(ends, dtype=np.int64)
    if len(ends) and (ends.min() < seq_len - 1 or ends.max() >= frame.height):
        raise ValueError(f"window ends {ends.min()}..{ends.max()} need rows {seq_len - 1}..{frame.height - 1}")
    scaled = scaler.transform(_feature_matrix(frame, feature_names))  # (N, f)
    idx = ends[:, None] - np.arange(seq_len - 1, -1, -1)[None, :]  # (n, l)
    return scaled[idx].astype(np.float32)

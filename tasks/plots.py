"""PNG plots of a training run and of a backtest, stored with the model (or the backtest) and shown as Prefect artifacts.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas
directly, not pyplot: no display, no pyplot state. They are still drawn one
at a time (``_DRAWING``): matplotlib's text layout shares a mathtext parser
(pyparsing) between threads, and two symbols drawing their log-scale tick
labels at once failed with ``ParseException`` or ``IndexError: pop from
empty list`` (the first two symbols of a ``--parallel 2`` run, now and then).
Each plot has a ``*_figure`` function that returns the Figure (what tests
inspect) and a ``*_png`` function that renders it to PNG bytes: the same bytes
go into the results store (``tasks.store.model_files``) and into the artifact.
"""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tasks.atomic import atomic_write

_DRAWING = threading.Lock()  # one figure drawn at a time in a process (see the module's docstring)

DPI = 100


def _values(epochs: list[dict], key: str) -> np.ndarray:
    # a missing or None value (e.g. no val loss logged that epoch) is a gap
    return np.array([np.nan if e.get(key) is None else float(e[key]) for e in epochs])


def learning_curve_figure(epochs: list[dict]) -> Figure:
    """Train/val loss per epoch (top) and learning rate (bottom).

    epochs: rows with ``epoch`` and any of ``train_loss``, ``val_loss``,
    ``lr``, as ``ResultsStore.epoch_metrics`` returns them.
    """
    if not epochs:
        raise ValueError("no epochs to plot: the epoch list is empty")
    x = np.array([int(e["epoch"]) for e in epochs])
    train, val, lr = (_values(epochs, k) for k in ("train_loss", "val_loss", "lr"))
    fig = Figure(figsize=(8, 6), dpi=DPI)
    FigureCanvasAgg(fig)
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    loss_ax.plot(x, train, marker=".", label="train loss")
    loss_ax.plot(x, val, marker=".", label="val loss")
    if np.isfinite(val).any():
        best = int(np.nanargmin(val))
        loss_ax.axvline(x[best], color="grey", linestyle=":", label=f"best val {val[best]:.4g} @ {x[best]}")
    loss_ax.set_ylabel("loss")
    loss_ax.legend(loc="upper right")
    loss_ax.grid(alpha=0.3)
    if np.isfinite(lr).any():
        lr_ax.plot(x, lr, color="C2", drawstyle="steps-post", label="lr")
        if np.nanmin(lr) > 0:
            lr_ax.set_yscale("log")  # ReduceLROnPlateau steps are factors
    else:
        lr_ax.text(0.5, 0.5, "no learning rate recorded", ha="center", va="center",
                   transform=lr_ax.transAxes)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("epoch")
    lr_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lr_ax.grid(alpha=0.3)
    fig.suptitle("Learning curve")
    fig.tight_layout()
    return fig


def forecast_vs_actual_figure(
    dates: Sequence,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    horizons: Sequence[int],
    close: np.ndarray | None = None,
    band: tuple[np.ndarray, np.ndarray] | None = None,
) -> Figure:
    """One panel per horizon: actual vs predicted over the test split.

    dates: the n as-of dates t of the windows; y_true, y_pred: (n, h) forward
    log returns; ``band`` (lower, upper), each (n, h), the forecast's central
    interval, drawn shaded. With ``close`` (n,), the close at t, the panels
    show prices at t+h instead: ``close * exp(y)`` (DESIGN.md, Targets), still
    plotted at the as-of date t.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    dates = np.asarray(dates)
    n_h = len(horizons)
    if y_true.ndim != 2 or y_true.shape != y_pred.shape or y_true.shape != (len(dates), n_h):
        raise ValueError(
            f"y_true {y_true.shape} and y_pred {y_pred.shape} must both be "
            f"(len(dates)={len(dates)}, len(horizons)={n_h})"
        )
    if close is not None:
        close = np.asarray(close, dtype=np.float64)
        if close.shape != (len(dates),):
            raise ValueError(f"close {close.shape} must be (len(dates),) = ({len(dates)},)")
        y_true = close[:, None] * np.exp(y_true)                 # (n, h) prices at t+h
        y_pred = close[:, None] * np.exp(y_pred)                 # (n, h)
        if band is not None:
            band = tuple(close[:, None] * np.exp(np.asarray(b, dtype=np.float64)) for b in band)  # (n, h) each
    fig = Figure(figsize=(10, 2.5 * n_h + 0.5), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_h, 1, sharex=True, squeeze=False)[:, 0]
    for j, (ax, h) in enumerate(zip(axes, horizons)):
        mae = np.mean(np.abs(y_pred[:, j] - y_true[:, j]))
        if band is not None:
            ax.fill_between(dates, band[0][:, j], band[1][:, j], color="C1", alpha=0.2, linewidth=0,
                            label="forecast interval")
        ax.plot(dates, y_true[:, j], color="black", linewidth=1.0, label="actual")
        ax.plot(dates, y_pred[:, j], color="C1", linewidth=1.0, label="predicted")
        if close is None:
            ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(f"horizon {h}: MAE {mae:.4g}", fontsize=10)
        ax.set_ylabel(f"price at t+{h}" if close is not None else f"log return t→t+{h}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("as-of date t (test split)")
    fig.suptitle("Forecast vs actual")
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return buf.getvalue()


def learning_curve_png(epochs: list[dict]) -> bytes:
    with _DRAWING:
        return png_bytes(learning_curve_figure(epochs))


def forecast_vs_actual_png(
    dates: Sequence,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    horizons: Sequence[int],
    close: np.ndarray | None = None,
    band: tuple[np.ndarray, np.ndarray] | None = None,
) -> bytes:
    with _DRAWING:
        return png_bytes(forecast_vs_actual_figure(dates, y_true, y_pred, horizons, close, band))


def png_to_markdown(png: bytes, title: str) -> str:
    """Markdown with a heading and the PNG inlined as a base64 data URI.

    Prefect stores markdown artifacts with inline images as they are, so
    the plot shows in the UI without serving the file.
    """
    data = base64.b64encode(png).decode("ascii")
    alt = " ".join(title.replace("[", "(").replace("]", ")").split())
    return f"## {' '.join(title.split())}\n\n![{alt}](data:image/png;base64,{data})\n"


def backtest_skill_figure(rows: list[dict], horizons: Sequence[int], key: str = "skill_zero") -> Figure:
    """One panel per horizon: ``key`` of each walk-forward fold, one line per symbol.

    rows: ``backtests`` rows (symbol, fold, horizon, test_start, the key), as
    ``ResultsStore.backtests`` returns them. A fold's tick shows its test
    block's first date when every symbol's block starts that day.
    """
    if not rows:
        raise ValueError("no backtest rows to plot")
    symbols = list(dict.fromkeys(r["symbol"] for r in rows))
    folds = sorted({int(r["fold"]) for r in rows})
    starts = {f: {r["test_start"] for r in rows if r["fold"] == f} for f in folds}
    labels = [f"{f}\n{next(iter(starts[f]))}" if len(starts[f]) == 1 else str(f) for f in folds]
    fig = Figure(figsize=(8, 2.2 * len(horizons) + 0.8), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(horizons), 1, sharex=True, squeeze=False)[:, 0]
    for ax, h in zip(axes, horizons):
        for symbol in symbols:
            by_fold = {int(r["fold"]): r[key] for r in rows if r["symbol"] == symbol and r["horizon"] == h}
            y = [np.nan if by_fold.get(f) is None else by_fold[f] for f in folds]
            ax.plot(folds, y, marker="o", label=symbol)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_title(f"horizon {h}", fontsize=10)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    axes[-1].set_xticks(folds, labels)
    axes[-1].set_xlabel("fold (test block; its first as-of date)")
    fig.suptitle(f"Walk-forward {key} per fold (> 0: better than its baseline)")
    fig.tight_layout()
    return fig


def backtest_skill_png(rows: list[dict], horizons: Sequence[int], path: str | Path, key: str = "skill_zero") -> Path:
    """The skill-per-fold plot written to ``path`` (write, then rename)."""
    with _DRAWING:
        png = png_bytes(backtest_skill_figure(rows, horizons, key))
    return atomic_write(path, lambda tmp: tmp.write_bytes(png))

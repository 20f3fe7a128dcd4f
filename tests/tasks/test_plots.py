"""Plots: valid PNGs of the right size, the plotted data, markdown."""

import base64
import datetime as dt
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tasks.plots import (
    forecast_vs_actual_figure, forecast_vs_actual_png, learning_curve_figure,
    learning_curve_png, png_to_markdown,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCHS = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1) + (0.3 if e == 4 else 0),
           "lr": 1e-3 if e < 3 else 5e-4} for e in range(5)]
DATES = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(30)]
RNG = np.random.default_rng(0)
Y_TRUE = RNG.normal(0, 0.02, size=(30, 4))
Y_PRED = 0.5 * Y_TRUE + RNG.normal(0, 0.01, size=(30, 4))


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def test_learning_curve_png_is_a_png_of_the_figure_size():
    assert _png_size(learning_curve_png(EPOCHS)) == (800, 600)   # 8 x 6 in at 100 dpi


def test_learning_curve_plots_the_epochs():
    fig = learning_curve_figure(EPOCHS)
    loss_ax, lr_ax = fig.axes
    train, val = loss_ax.get_lines()[:2]
    np.testing.assert_array_equal(train.get_xdata(), range(5))
    np.testing.assert_allclose(train.get_ydata(), [1.0 / (e + 1) for e in range(5)])
    np.testing.assert_allclose(val.get_ydata(), [r["val_loss"] for r in EPOCHS])
    best = loss_ax.get_lines()[2]                           # best val loss: epoch 3, not the last
    assert best.get_xdata()[0] == 3 and "@ 3" in best.get_label()
    (lr,) = lr_ax.get_lines()
    np.testing.assert_allclose(lr.get_ydata(), [1e-3] * 3 + [5e-4] * 2)
    assert lr_ax.get_yscale() == "log"


def test_learning_curve_tolerates_missing_values_but_not_no_epochs():
    fig = learning_curve_figure([{"epoch": 0, "train_loss": 1.0}, {"epoch": 1, "train_loss": 0.5}])
    val = fig.axes[0].get_lines()[1]
    assert np.isnan(val.get_ydata()).all()
    assert fig.axes[1].texts[0].get_text() == "no learning rate recorded"
    with pytest.raises(ValueError, match="empty"):
        learning_curve_figure([])


def test_forecast_figure_plots_returns_per_horizon():
    fig = forecast_vs_actual_figure(DATES, Y_TRUE, Y_PRED, [1, 5, 10, 30])
    assert len(fig.axes) == 4
    for j, (ax, h) in enumerate(zip(fig.axes, [1, 5, 10, 30])):
        actual, predicted = ax.get_lines()[:2]
        np.testing.assert_array_equal(actual.get_ydata(), Y_TRUE[:, j])
        np.testing.assert_array_equal(predicted.get_ydata(), Y_PRED[:, j])
        mae = np.abs(Y_TRUE[:, j] - Y_PRED[:, j]).mean()
        assert ax.get_title() == f"horizon {h}: MAE {mae:.4g}"


def test_forecast_figure_with_close_plots_prices():
    close = np.linspace(100, 130, 30)
    fig = forecast_vs_actual_figure(np.array(DATES, dtype="datetime64[D]"), Y_TRUE[:, :1],
                                    Y_PRED[:, :1], [5], close=close)
    actual, predicted = fig.axes[0].get_lines()[:2]
    np.testing.assert_allclose(actual.get_ydata(), close * np.exp(Y_TRUE[:, 0]))
    np.testing.assert_allclose(predicted.get_ydata(), close * np.exp(Y_PRED[:, 0]))
    assert fig.axes[0].get_ylabel() == "price at t+5"


def test_forecast_png_size_and_determinism():
    a = forecast_vs_actual_png(DATES, Y_TRUE, Y_PRED, [1, 5, 10, 30])
    b = forecast_vs_actual_png(DATES, Y_TRUE, Y_PRED, [1, 5, 10, 30])
    c = forecast_vs_actual_png(DATES, Y_TRUE, -Y_PRED, [1, 5, 10, 30])
    assert _png_size(a) == (1000, 1050)                     # 10 x (2.5*4 + 0.5) in at 100 dpi
    assert a == b                                           # same data, same bytes
    assert a != c                                           # the data reaches the pixels


@pytest.mark.parametrize(
    "dates, y_pred, horizons, close, match",
    [
        (DATES[:-1], Y_PRED, [1, 5, 10, 30], None, r"len\(dates\)=29"),
        (DATES, Y_PRED[:, :3], [1, 5, 10, 30], None, r"y_pred \(30, 3\)"),
        (DATES, Y_PRED, [1, 5, 10], None, r"len\(horizons\)=3"),
        (DATES, Y_PRED, [1, 5, 10, 30], np.ones(29), r"close \(29,\)"),
    ],
)
def test_forecast_figure_refuses_mismatched_inputs(dates, y_pred, horizons, close, match):
    with pytest.raises(ValueError, match=match):
        forecast_vs_actual_figure(dates, Y_TRUE, y_pred, horizons, close)


def test_markdown_embeds_exactly_the_png():
    png = learning_curve_png(EPOCHS)
    md = png_to_markdown(png, "AAPL [run 1]\nlearning curve")
    m = re.fullmatch(r"## (.+)\n\n!\[([^\[\]\n]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)\n", md)
    assert m, md[:200]
    assert m.group(1) == "AAPL [run 1] learning curve"
    assert m.group(2) == "AAPL (run 1) learning curve"
    assert base64.b64decode(m.group(3), validate=True) == png


def test_plots_drawn_by_many_threads_at_once_are_the_plots_drawn_alone():
    """Symbols train in threads: four drawing at once (in a fresh interpreter,
    where matplotlib's text parser is first used) failed with ParseException
    before the plots were drawn one at a time. Each must be the PNG drawn alone."""
    script = textwrap.dedent("""
        import hashlib, threading
        from tasks.plots import learning_curve_png
        epochs = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "lr": 1e-3 / 2 ** e}
                  for e in range(4)]
        out = []
        def draw():  # a thread that raises prints its traceback to stderr and adds nothing to out
            out.append(hashlib.sha256(learning_curve_png(epochs)).hexdigest())
        threads = [threading.Thread(target=draw) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        alone = hashlib.sha256(learning_curve_png(epochs)).hexdigest()
        print(sorted(set(out)) == [alone], len(out))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.split() == ["True", "4"] and "Traceback" not in done.stderr, done.stdout + done.stderr

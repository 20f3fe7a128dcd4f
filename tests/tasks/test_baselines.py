"""Baselines: ridge against the normal equations, quantile rules by hand, no test-split reads."""

import datetime as dt

import numpy as np
import polars as pl
import pytest

from tasks.baselines import (RIDGE_ALPHAS, BaselineParams, baselines_on_test, fit_baselines, fit_ridge, forecast_baselines,
                             normal_quantiles, targets)
from tasks.evaluate import evaluate_quantile_forecasts
from tasks.windows import Windows, make_windows
from tests.tasks.test_volatility import garch_returns

HORIZONS = (1, 5, 10)
LEVELS = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
SEQ_LEN = 20


def frame_from(close: np.ndarray) -> pl.DataFrame:
    """date, close and three causal features of close: 1-day and 5-day log return, |1-day|."""
    logc = np.log(close)
    r1 = np.r_[0.0, np.diff(logc)]
    r5 = np.r_[np.zeros(5), logc[5:] - logc[:-5]]
    dates = [dt.date(2001, 1, 1) + dt.timedelta(days=i) for i in range(close.size)]
    return pl.DataFrame({"date": dates, "close": close, "r1": r1, "r5": r5, "abs_r1": np.abs(r1)})


CLOSE = 50 * np.exp(np.r_[0.0, np.cumsum(garch_returns(1199, seed=3))])  # (1200,)


def windows_of(close: np.ndarray) -> Windows:
    return make_windows(frame_from(close), seq_len=SEQ_LEN, horizons=HORIZONS, val_frac=0.2, test_frac=0.2)


def fit(w: Windows, close: np.ndarray) -> BaselineParams:
    return fit_baselines(close, w.train.ends, w.val.ends, w.train.x, w.val.x, w.horizons, LEVELS)


def test_split_ends_index_the_frame():
    w = windows_of(CLOSE)
    dates = frame_from(CLOSE)["date"].to_numpy()
    for s in (w.train, w.val, w.test):
        assert s.ends.dtype == np.int64
        np.testing.assert_array_equal(dates[s.ends], s.end_dates)
        np.testing.assert_array_equal(CLOSE[s.ends], s.close)
        np.testing.assert_allclose(targets(CLOSE, s.ends, HORIZONS), s.y, rtol=1e-6)


def test_targets_by_hand():
    close = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    np.testing.assert_allclose(targets(close, np.array([0, 2]), (1, 2)),
                               np.log([[2.0, 4.0], [2.0, 4.0]]), rtol=1e-12)


def ridge_by_normal_equations(x, y, alpha):
    """argmin |yc - Xc w|² + α m |w|² with centred Xc, yc: (Xcᵀ Xc + α m I)⁻¹ Xcᵀ yc, and the intercept."""
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + alpha * x.shape[0] * np.eye(x.shape[1]), xc.T @ (y - ym))
    return ym - xm @ w, w


def test_ridge_matches_the_normal_equations_and_picks_the_least_validation_mae():
    rng = np.random.default_rng(0)
    x, xv = rng.normal(size=(300, 4)), rng.normal(size=(100, 4))
    w_true = np.array([[0.5, 0.0], [0.0, 0.2], [0.1, 0.0], [0.0, 0.0]])   # (f, h)
    y = x @ w_true + rng.normal(0, 1.0, (300, 2))
    yv = xv @ w_true + rng.normal(0, 1.0, (100, 2))
    fitted = fit_ridge(x, y, xv, yv)
    for j in range(2):
        maes = []
        for a in RIDGE_ALPHAS:
            b0, wj = ridge_by_normal_equations(x, y[:, j:j + 1], a)
            maes.append(np.abs(xv @ wj[:, 0] + b0[0] - yv[:, j]).mean())
        best = RIDGE_ALPHAS[int(np.argmin(maes))]
        assert fitted.alpha[j] == best
        b0, wj = ridge_by_normal_equations(x, y[:, j:j + 1], best)
        np.testing.assert_allclose(fitted.coef[:, j], wj[:, 0], rtol=1e-9, atol=1e-12)
        assert fitted.intercept[j] == pytest.approx(b0[0], rel=1e-9)
    np.testing.assert_allclose(fitted.predict(xv), xv @ fitted.coef + fitted.intercept)


def test_ridge_recovers_a_clean_linear_law_with_a_small_penalty():
    rng = np.random.default_rng(1)
    x, xv = rng.normal(size=(200, 3)), rng.normal(size=(50, 3))
    w, b = np.array([[1.0], [-2.0], [0.5]]), 0.3
    fitted = fit_ridge(x, x @ w + b, xv, xv @ w + b)
    assert fitted.alpha[0] == RIDGE_ALPHAS[-1]                           # the smallest on the grid
    np.testing.assert_allclose(fitted.coef, w, rtol=1e-3)
    assert fitted.intercept[0] == pytest.approx(b, rel=1e-3)


def test_normal_quantiles_by_hand():
    q = normal_quantiles(np.array([0.01]), np.array([0.0004]), [0.025, 0.5, 0.975])
    z = 1.959963984540054                                                # Φ⁻¹(0.975)
    np.testing.assert_allclose(q, [[0.01 - 0.02 * z, 0.01, 0.01 + 0.02 * z]], rtol=1e-12)


def test_fitted_values_and_forecast_rules():
    w = windows_of(CLOSE)
    p = fit(w, CLOSE)
    y_train = targets(CLOSE, w.train.ends, HORIZONS)
    np.testing.assert_allclose(p.drift, w.train.y.mean(axis=0), rtol=1e-5)   # as evaluate_forecasts
    np.testing.assert_array_equal(p.drift, y_train.mean(axis=0))
    np.testing.assert_array_equal(p.empirical, np.quantile(y_train, LEVELS, axis=0).T)
    p_test, f = baselines_on_test(w, CLOSE, LEVELS)
    assert p_test.garch == p.garch and np.array_equal(p_test.ridge.coef, p.ridge.coef)  # the same fit
    n, hs, mid = len(w.test), np.array(HORIZONS), 2
    np.testing.assert_array_equal(f.zero, np.zeros((n, 3)))
    np.testing.assert_array_equal(f.drift[5], p.drift)
    np.testing.assert_array_equal(f.empirical[7], p.empirical)
    np.testing.assert_allclose(f.linear, w.test.x[:, -1, :].astype(np.float64) @ p.ridge.coef + p.ridge.intercept)
    # GARCH median h μ; EWMA median 0 and 90% interval ±1.645 sqrt(h s2), s2 the same for every h
    np.testing.assert_allclose(f.garch[:, :, mid], np.broadcast_to(p.garch.mu * hs, (n, 3)), rtol=1e-12)
    np.testing.assert_allclose(f.ewma[:, :, mid], 0, atol=1e-15)
    half = (f.ewma[:, :, -1] - f.ewma[:, :, 0]) / 2                        # (n, h)
    np.testing.assert_allclose(half / np.sqrt(hs), np.broadcast_to(half[:, :1], (n, 3)), rtol=1e-12)
    assert np.all(np.diff(f.garch, axis=-1) > 0) and np.all(np.diff(f.ewma, axis=-1) > 0)


def perturb_after(close: np.ndarray, row: int, seed: int = 0) -> np.ndarray:
    """close with every price from ``row`` on moved by a random walk of its own."""
    out = close.copy()
    out[row:] *= np.exp(np.cumsum(np.random.default_rng(seed).normal(0, 0.03, close.size - row)))
    return out


def test_no_baseline_reads_the_test_split_when_fitting():
    w = windows_of(CLOSE)
    first_test_row = int(w.test.ends[0]) - SEQ_LEN + 1                    # the first test input bar
    close2 = perturb_after(CLOSE, first_test_row)
    w2 = windows_of(close2)
    np.testing.assert_array_equal(w2.val.x, w.val.x)                      # the frames agree before it
    assert not np.array_equal(w2.test.y, w.test.y)
    p, p2 = fit(w, CLOSE), fit(w2, close2)
    for a, b in [(p.drift, p2.drift), (p.empirical, p2.empirical), (p.ridge.coef, p2.ridge.coef),
                 (p.ridge.intercept, p2.ridge.intercept), (p.ridge.alpha, p2.ridge.alpha)]:
        np.testing.assert_array_equal(a, b)                               # bit-identical
    assert p.garch == p2.garch and p.ewma_s2_0 == p2.ewma_s2_0
    f, f2 = (forecast_baselines(q, c, v.test.ends, v.test.x) for q, c, v in ((p, CLOSE, w), (p2, close2, w2)))
    for name in ("drift", "empirical"):                                   # constants
        np.testing.assert_array_equal(getattr(f, name), getattr(f2, name))
    assert np.all(f.linear != f2.linear)                                   # reads the moved inputs
    for name in ("ewma", "garch"):                                        # and the moved returns
        assert np.all(getattr(f, name)[..., [0, -1]] != getattr(f2, name)[..., [0, -1]]), name
    v, v2 = (forecast_baselines(q, c, w.val.ends, w.val.x) for q, c in ((p, CLOSE), (p2, close2)))
    for name in ("linear", "ewma", "garch"):
        np.testing.assert_array_equal(getattr(v, name), getattr(v2, name))


def test_volatility_forecasts_read_only_returns_up_to_the_window_end():
    w = windows_of(CLOSE)
    p = fit(w, CLOSE)
    ends, k = w.test.ends, 40
    close2 = perturb_after(CLOSE, int(ends[k]) + 1)                       # r_{t+1} and later move
    f, f2 = (forecast_baselines(p, c, ends, w.test.x) for c in (CLOSE, close2))
    for name in ("ewma", "garch"):
        a, b = getattr(f, name), getattr(f2, name)
        np.testing.assert_array_equal(a[: k + 1], b[: k + 1])
        assert np.all(a[k + 1:, :, [0, -1]] != b[k + 1:, :, [0, -1]]), name  # EWMA's median is always 0


@pytest.mark.parametrize("ends, match", [
    (np.array([5, 3]), "train ends must be increasing"),
    (np.array([1190]), r"t \+ 10 < 1200"),
])
def test_bad_ends_are_refused(ends, match):
    w = windows_of(CLOSE)
    with pytest.raises(ValueError, match=match):
        fit_baselines(CLOSE, ends, w.val.ends, w.train.x[: ends.size], w.val.x, HORIZONS, LEVELS)


def test_garch_intervals_are_calibrated_on_garch_data():
    # CLOSE follows a GARCH(1,1): its one-day 90% intervals should cover about 90% of
    # the 223 test targets (binomial sd 0.02); the model scored as itself has skill 0.
    w = windows_of(CLOSE)
    _, f = baselines_on_test(w, CLOSE, LEVELS)
    row = evaluate_quantile_forecasts(w.test.y, f.garch, LEVELS, w.horizons, f)[0]
    assert 0.84 < row["garch_coverage"] < 0.96
    assert row["pinball_skill_garch"] == 0.0 and row["coverage"] == row["garch_coverage"]
    assert row["ewma_pinball"] > 0 and row["empirical_pinball"] > 0

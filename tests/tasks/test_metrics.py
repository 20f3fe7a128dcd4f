"""Pinball loss, coverage, width and the DM test against hand computations."""

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from tasks.metrics import (check_levels, check_non_crossing, coverage, diebold_mariano, effective_n,
                           interval_width, newey_west_variance, overlap, pinball_loss, sort_quantiles)

LEVELS = [0.1, 0.5, 0.9]
Y = np.array([0.0, 0.1, 0.3])
Q = np.array([[-0.1, 0.0, 0.1],
              [-0.1, 0.0, 0.2],
              [0.0, 0.1, 0.2]])


def test_pinball_by_hand():
    # u = y - q per row; loss max(τu, (τ-1)u):
    # row 0: u (.1, 0, -.1)  -> .01, 0, .01   = .02
    # row 1: u (.2, .1, -.1) -> .02, .05, .01 = .08
    # row 2: u (.3, .2, .1)  -> .03, .10, .09 = .22
    assert pinball_loss(Y, Q, LEVELS) == pytest.approx(0.32 / 9, rel=1e-12)
    # one row, one level: an under-forecast costs τ per unit, an over-forecast 1 - τ
    assert pinball_loss(np.array([1.0]), np.array([[0.0]]), [0.9]) == pytest.approx(0.9)
    assert pinball_loss(np.array([0.0]), np.array([[1.0]]), [0.9]) == pytest.approx(0.1)


def test_pinball_at_the_median_is_half_the_mae():
    rng = np.random.default_rng(0)
    y, m = rng.normal(size=50), rng.normal(size=50)
    assert pinball_loss(y, m[:, None], [0.5]) == pytest.approx(np.abs(y - m).mean() / 2, rel=1e-12)


def test_coverage_and_width_by_hand():
    # rows 0 and 1 inside [q_0.1, q_0.9]; row 2 (0.3 > 0.2) outside
    assert coverage(Y, Q, LEVELS) == pytest.approx(2 / 3)
    assert interval_width(Q, LEVELS) == pytest.approx((0.2 + 0.3 + 0.2) / 3)
    # the interval's ends count as inside
    assert coverage(np.array([0.2, -0.1]), np.array([[-0.1, 0.2], [-0.1, 0.2]]), [0.05, 0.95]) == 1.0


@pytest.mark.parametrize("levels", [[], [0.5, 0.5], [0.9, 0.1], [0.0, 0.5], [0.5, 1.0]])
def test_bad_levels_are_refused(levels):
    with pytest.raises(ValueError, match="strictly increasing"):
        check_levels(levels)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match=r"q_pred \(3, 2\)"):
        pinball_loss(Y, Q[:, :2], LEVELS)
    with pytest.raises(ValueError, match="at least two"):
        coverage(Y, Q[:, :1], [0.5])


def test_crossing_is_found_and_sorting_removes_it_without_raising_the_loss():
    crossed = np.array([[0.0, 0.1, 0.2], [0.3, -0.1, 0.2]])
    with pytest.raises(ValueError, match=r"cross at index \(1,\): level 0 is 0.3.*sort_quantiles"):
        check_non_crossing(crossed)
    fixed = sort_quantiles(crossed)
    check_non_crossing(fixed)
    np.testing.assert_array_equal(fixed[1], [-0.1, 0.2, 0.3])
    y = np.array([0.05, 0.1])
    assert pinball_loss(y, fixed, LEVELS) <= pinball_loss(y, crossed, LEVELS)


def test_effective_n_and_overlap():
    assert effective_n(100, 5) == 20.0
    assert effective_n(100, 1) == 100.0
    assert effective_n(100, 5, stride=2) == pytest.approx(100 / 3)  # ceil(5/2) = 3 windows share a return
    assert effective_n(100, 5, stride=5) == 100.0
    assert overlap(30, 7) == 5
    with pytest.raises(ValueError):
        overlap(0)


# d = loss_a - loss_b = (1, -1, 2, 0, 3): mean 1, centred (0, -2, 1, -1, 2);
# γ0 = (0 + 4 + 1 + 1 + 4)/5 = 2, γ1 = (0 - 2 - 1 - 2)/5 = -1.
LOSS_A = np.array([2.0, 1.0, 4.0, 1.0, 5.0])
LOSS_B = np.array([1.0, 2.0, 2.0, 1.0, 2.0])


def test_newey_west_by_hand_and_against_statsmodels():
    d = LOSS_A - LOSS_B
    assert newey_west_variance(d, 0) == pytest.approx(2.0)
    assert newey_west_variance(d, 1) == pytest.approx(2 - 1)         # γ0 + 2 (1 - 1/2) γ1
    rng = np.random.default_rng(1)
    d = np.convolve(rng.normal(size=300), np.ones(5), "valid")       # MA(4): autocorrelated
    for lags in (0, 4, 9):
        # HAC standard error of a mean (regression on a constant), no small-sample
        # correction: se² = V / n.
        fit = sm.OLS(d, np.ones_like(d)).fit(cov_type="HAC", cov_kwds={"maxlags": lags, "use_correction": False})
        assert newey_west_variance(d, lags) / d.size == pytest.approx(fit.bse[0] ** 2, rel=1e-10)


def test_diebold_mariano_by_hand():
    # h = 2: V = 1, DM = d̄ / sqrt(V/n) = sqrt(5); HLN factor sqrt((n-h)(n-h+1))/n = sqrt(12)/5,
    # so stat = sqrt(60)/5 = sqrt(2.4). Student's t with 4 df has the closed-form CDF
    # F(t) = 1/2 + (3/8) x (1 - t²/(12 s)), s = 1 + t²/4, x = t / sqrt(s):
    # s = 1.6, x = sqrt(1.5), F = 0.5 + 0.375 sqrt(1.5) 0.875.
    stat, p = diebold_mariano(LOSS_A, LOSS_B, 2)
    assert stat == pytest.approx(math.sqrt(2.4), rel=1e-12)
    assert p == pytest.approx(2 * (0.5 - 0.375 * math.sqrt(1.5) * 0.875), rel=1e-12)
    assert p == pytest.approx(2 * stats.t.sf(math.sqrt(2.4), 4), rel=1e-12)
    # h = 1: V = γ0 = 2, DM = sqrt(2.5), factor sqrt(20)/5: stat = sqrt(2)
    assert diebold_mariano(LOSS_A, LOSS_B, 1)[0] == pytest.approx(math.sqrt(2), rel=1e-12)
    # swapping the forecasts flips the sign, not the p-value
    assert diebold_mariano(LOSS_B, LOSS_A, 2) == pytest.approx((-stat, p), rel=1e-12)


def test_diebold_mariano_finds_a_clearly_better_forecast():
    rng = np.random.default_rng(2)
    y = rng.normal(size=400)
    good, bad = np.abs(y - (y + rng.normal(0, 0.3, 400))), np.abs(y)
    stat, p = diebold_mariano(good, bad, 5)
    assert stat < 0 and p < 1e-6


def test_diebold_mariano_is_nan_when_it_says_nothing():
    a = np.array([1.0, 2.0, 3.0])
    assert all(math.isnan(v) for v in diebold_mariano(a, a, 1))          # identical forecasts
    assert all(math.isnan(v) for v in diebold_mariano(a, a[::-1], 3))    # n <= h
    with pytest.raises(ValueError, match=r"\(3,\) and loss_b \(2,\)"):
        diebold_mariano(a, a[:2], 1)

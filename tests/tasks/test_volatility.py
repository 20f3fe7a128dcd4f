"""EWMA and GARCH(1,1) recursions: by hand, against arch's own forecasts, and causal."""

import numpy as np
import pytest
from arch import arch_model
from arch.univariate import EWMAVariance, ZeroMean

from tasks.volatility import (GarchParams, backcast, ewma_variance, fit_garch, garch_h_day_variance,
                              garch_variance, log_returns)

# arch's forecasts are the same recursions in another order of operations, in
# percent units: they agree to rounding (about 1e-15 relative, measured).
RTOL = 1e-12


def garch_returns(n: int = 1500, seed: int = 1) -> np.ndarray:
    """Daily log returns (n,) from a GARCH(1,1): ω 2e-6, α 0.08, β 0.9, μ 3e-4."""
    rng = np.random.default_rng(seed)
    omega, alpha, beta, mu = 2e-6, 0.08, 0.9, 3e-4
    r, s2 = np.empty(n), omega / (1 - alpha - beta)
    for t in range(n):
        e = np.sqrt(s2) * rng.standard_normal()
        r[t], s2 = mu + e, omega + alpha * e * e + beta * s2
    return r


R = garch_returns()
LAST = 1000  # returns used for fitting


def test_recursions_by_hand():
    # backcast of (1, 2): weights (1, .94) / 1.94
    assert backcast(np.array([1.0, 2.0])) == pytest.approx((1 + 4 * 0.94) / 1.94)
    assert backcast(np.full(200, 0.5)) == pytest.approx(0.25)              # only the first 75 count
    # EWMA: s2 = (.01, .94*.01 + .06*.01, .94*.01 + .06*.04)
    np.testing.assert_allclose(ewma_variance(np.array([0.1, -0.2]), 0.01), [0.01, 0.01, 0.0118], rtol=1e-12)
    # GARCH with ω .1, α .2, β .5, μ 1, s2_0 2: e = (2, -1) ->
    # s2_1 = .1 + .2*4 + .5*2 = 1.9; s2_2 = .1 + .2*1 + .5*1.9 = 1.25
    p = GarchParams(mu=1.0, omega=0.1, alpha=0.2, beta=0.5, s2_0=2.0)
    s2 = garch_variance(np.array([3.0, 0.0]), p)
    np.testing.assert_allclose(s2, [2.0, 1.9, 1.25], rtol=1e-12)
    # h-day: v1 = 1.25, v2 = .1 + .7*1.25 = .975, v3 = .1 + .7*.975 = .7825
    np.testing.assert_allclose(garch_h_day_variance(s2[2:], p, [1, 3]), [[1.25, 1.25 + 0.975 + 0.7825]], rtol=1e-12)
    np.testing.assert_allclose(log_returns(np.array([1.0, np.e, 1.0])), [1.0, -1.0], rtol=1e-12)


def test_garch_fit_and_forecasts_match_arch():
    res = arch_model(100 * R, mean="Constant", vol="GARCH", p=1, q=1).fit(last_obs=LAST, disp="off")
    p = fit_garch(R, LAST)
    mu, omega, alpha, beta = res.params[["mu", "omega", "alpha[1]", "beta[1]"]]
    np.testing.assert_allclose([p.mu, p.omega, p.alpha, p.beta],
                               [mu / 100, omega / 1e4, alpha, beta], rtol=RTOL)
    assert 0.8 < p.alpha + p.beta < 1   # the simulated persistence (0.98) is recovered, roughly

    start, horizon = LAST - 50, 30       # from inside the fitting sample to the series' end
    fc = res.forecast(horizon=horizon, start=start, reindex=False)
    step_var = fc.variance.to_numpy() / 1e4                                  # (n, 30) percent² -> units
    # arch's row i forecasts from return index i, i.e. the window ending at close row i + 1
    ends = np.arange(start, R.size) + 1
    s2 = garch_variance(R, p)                                                # (N,)
    hs = np.arange(1, horizon + 1)
    np.testing.assert_allclose(garch_h_day_variance(s2[ends], p, hs), np.cumsum(step_var, axis=1), rtol=RTOL)
    np.testing.assert_allclose(fc.mean.to_numpy() / 100, p.mu, rtol=RTOL)   # mean h μ: μ per step


def test_ewma_matches_arch():
    res = ZeroMean(100 * R, volatility=EWMAVariance(0.94)).fix([], last_obs=LAST)
    start = 80
    step_var = res.forecast(horizon=10, start=start, reindex=False).variance.to_numpy() / 1e4  # (n, 10)
    s2 = ewma_variance(R, backcast(R[:LAST]))                                # (N,)
    ends = np.arange(start, R.size) + 1
    # a flat term structure: every step's variance is s2[t], so h days is h s2[t]
    np.testing.assert_allclose(np.broadcast_to(s2[ends, None], step_var.shape), step_var, rtol=RTOL)


@pytest.mark.parametrize("t", [0, 1, 700, 1400])
def test_filters_are_causal(t):
    p = fit_garch(R, LAST)
    bumped = R.copy()
    bumped[t:] += np.random.default_rng(t).normal(0, 0.05, R.size - t)      # returns r_{t+1} and later
    for filt in (lambda r: garch_variance(r, p), lambda r: ewma_variance(r, 1e-4)):
        before, after = filt(R), filt(bumped)
        np.testing.assert_array_equal(before[: t + 1], after[: t + 1])      # s2[t] reads up to r_t
        assert np.all(before[t + 1:] != after[t + 1:])


def test_fit_reads_only_the_first_last_obs_returns():
    bumped = R.copy()
    bumped[LAST:] *= 3.0
    assert fit_garch(bumped, LAST) == fit_garch(R, LAST)                     # bit-identical parameters
    with pytest.raises(ValueError, match="last_obs 0"):
        fit_garch(R, 0)

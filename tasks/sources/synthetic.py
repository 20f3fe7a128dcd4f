"""``synthetic``: a deterministic market simulator for any symbol name, seeded
by ``data.seed``, on a fixed calendar."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from functools import cache

import numpy as np
import polars as pl

from tasks.bars import BARS_SCHEMA, validate_symbol
from tasks.sources._base import Request

SOURCE = "synthetic"
# The simulator's calendar is fixed so a (symbol, seed) gives the same bars on
# any day; weekdays only, no exchange holidays.
SYNTHETIC_START = date(2005, 1, 3)
SYNTHETIC_END = date(2024, 12, 31)


def load(request: Request) -> pl.DataFrame:
    return synthetic_bars(request.symbol, request.seed)


@cache
def _synthetic_calendar() -> np.ndarray:
    days = np.arange(SYNTHETIC_START, SYNTHETIC_END + timedelta(days=1), dtype="datetime64[D]")
    days = days[np.is_busday(days)]
    days.flags.writeable = False
    return days


def _garch_variance_ref(a: np.ndarray, omega: float, var0: float) -> np.ndarray:
    """Slow reference: var[0] = var0, var[t] = omega + a[t-1] * var[t-1]."""
    var = np.empty_like(a)
    var[0] = var0
    for t in range(1, len(a)):
        var[t] = omega + a[t - 1] * var[t - 1]
    return var


def _garch_variance(a: np.ndarray, omega: float, var0: float, chunk: int = 256) -> np.ndarray:
    """Vectorised ``_garch_variance_ref`` (the GARCH(1,1) recursion, a = alpha z^2 + beta).

    Within a chunk starting at s with var[s] = v and L_k = sum(log a[s..s+k-1]):
    var[s+k] = exp(L_k) v + omega * sum_{j=1..k} exp(L_k - L_j). Chunks keep
    exp(+-L) far from overflow whatever the persistence.
    """
    var = np.empty_like(a)
    v = var0
    for s in range(0, len(a), chunk):
        la = np.log(a[s : s + chunk])
        L = np.concatenate(([0.0], np.cumsum(la[:-1])))  # L[k], k = 0..m-1
        inner = np.cumsum(np.exp(-L)) - 1.0  # sum_{j=1..k} exp(-L_j); exp(-L_0) = 1
        var[s : s + chunk] = np.exp(L) * (v + omega * inner)
        v = omega + a[s + len(la) - 1] * var[s + len(la) - 1]
    return var


def _rng(symbol: str, seed: int) -> np.random.Generator:
    # sha256, not hash(): Python's str hash changes between processes.
    key = hashlib.sha256(f"{symbol}|{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(key[:16], "little"))


def synthetic_bars(symbol: str, seed: int = 0) -> pl.DataFrame:
    """Deterministic simulated Bars for (symbol, seed) on the fixed calendar.

    Daily log return r = mu - var/2 + sqrt(var) z + jump, with var from a
    GARCH(1,1) (volatility clustering), z a unit-variance Student-t (fat
    tails) and rare normal jumps (about one a year) that land in the overnight
    gap. open = previous close x exp(gap); high and low extend max/min(open,
    close) by exponential draws scaled with the day's volatility, so low <=
    min(open, close) and max(open, close) <= high hold exactly. Volume rises
    with |r| / long-run volatility. Parameters are drawn per symbol, so each
    name has its own character.
    """
    symbol = validate_symbol(symbol)
    rng = _rng(symbol, seed)
    dates = _synthetic_calendar()
    n = len(dates)
    vol = rng.uniform(0.010, 0.025)  # long-run daily volatility
    alpha = rng.uniform(0.04, 0.10)
    beta = rng.uniform(0.95, 0.985) - alpha  # persistence alpha + beta in [0.95, 0.985)
    omega = vol**2 * (1.0 - alpha - beta)
    nu = rng.uniform(3.5, 6.0)  # Student-t degrees of freedom
    mu = rng.uniform(-0.02, 0.15) / 252
    price0 = rng.uniform(10.0, 200.0)
    volume0 = rng.uniform(1e5, 5e7)

    z = np.clip(rng.standard_t(nu, n) * np.sqrt((nu - 2.0) / nu), -10.0, 10.0)
    var = _garch_variance(alpha * z**2 + beta, omega, vol**2)
    sigma = np.minimum(np.sqrt(var), 0.08)
    jump = (rng.random(n) < 1.0 / 250) * rng.normal(-0.01, 0.06, n)
    r = mu - 0.5 * sigma**2 + sigma * z + jump
    gap = 0.3 * sigma * rng.standard_normal(n) + jump

    close = price0 * np.exp(np.cumsum(r))
    prev_close = np.concatenate(([price0], close[:-1]))
    open_ = prev_close * np.exp(gap)
    high = np.maximum(open_, close) * np.exp(0.5 * sigma * rng.exponential(1.0, n))
    low = np.minimum(open_, close) * np.exp(-0.5 * sigma * rng.exponential(1.0, n))
    volume = np.round(volume0 * (1.0 + np.abs(r) / vol) * np.exp(0.4 * rng.standard_normal(n)))
    return pl.DataFrame(
        {"date": dates, "open": open_, "high": high, "low": low, "close": close, "volume": volume},
        schema=BARS_SCHEMA,
    )

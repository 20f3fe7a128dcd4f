"""Shared fixtures for tests/tasks: deterministic Bars frames and the sample data."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import polars as pl
import pytest

from tasks.bars import BARS_SCHEMA
from tasks.sources import load_bars


def business_days(n: int, start: dt.date = dt.date(2001, 1, 1)) -> list[dt.date]:
    days = pl.date_range(start, start + dt.timedelta(days=2 * n + 7), "1d", eager=True)
    return days.filter(days.dt.weekday() <= 5)[:n].to_list()


def random_walk_bars(n: int, seed: int = 0, *, price: float = 50.0, vol: float = 0.015,
                     jumps: bool = True, stale: tuple[int, int] | None = None) -> pl.DataFrame:
    """Bars from a seeded random walk: clustered volatility, Student-t shocks,
    occasional jumps, consistent OHLC (low <= open, close <= high), volume
    rising with |return|. ``stale=(i, j)`` freezes every bar of rows i..j-1 at
    the close of row i-1 (a stale feed) with a constant volume."""
    rng = np.random.default_rng(seed)
    scale = np.exp(np.convolve(rng.normal(0, 0.3, n + 20), np.ones(20) / 20, "valid")[:n])
    rets = vol * scale * rng.standard_t(5, n) / np.sqrt(5 / 3)
    if jumps:
        rets += np.where(rng.random(n) < 0.01, rng.normal(0, 0.08, n), 0.0)
    close = price * np.exp(np.cumsum(rets))
    open_ = close * np.exp(rng.normal(0, vol / 3, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, vol / 2, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, vol / 2, n)))
    volume = np.round(1e6 * np.exp(rng.normal(0, 0.3, n)) * (1 + 30 * np.abs(rets)))
    if stale is not None:
        i, j = stale
        for arr in (open_, high, low, close):
            arr[i:j] = close[i - 1]
        volume[i:j] = 1000.0
    return pl.DataFrame({"date": business_days(n), "open": open_, "high": high, "low": low,
                         "close": close, "volume": volume}, schema=BARS_SCHEMA)


@pytest.fixture
def make_bars() -> Callable[..., pl.DataFrame]:
    """``make_bars(n, seed=0, **kw)``: see ``random_walk_bars``."""
    return random_walk_bars


def load_sample(symbol: str) -> pl.DataFrame:
    """Real adjusted daily bars, as the ``sample`` source ships them."""
    return load_bars(symbol, "sample")


@pytest.fixture(scope="session")
def sample_bars() -> Callable[[str], pl.DataFrame]:
    return load_sample

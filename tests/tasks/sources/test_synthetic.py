"""tasks.sources.synthetic: the deterministic market simulator."""

from __future__ import annotations

from datetime import date

import numpy as np
import polars as pl

import tasks.sources.synthetic as synthetic
from tasks.bars import BARS_SCHEMA, bars_fingerprint
from tasks.sources import load_bars, synthetic_bars
from tasks.sources.synthetic import SYNTHETIC_END
from tasks.validate import validate_bars


def test_synthetic_is_deterministic_per_symbol_and_seed() -> None:
    a, b = load_bars("ZZZ", "synthetic"), load_bars("zzz", "synthetic")
    assert a.equals(b)
    assert bars_fingerprint(a) == bars_fingerprint(b)
    assert not a["close"].equals(load_bars("ZZY", "synthetic")["close"])
    assert not a["close"].equals(load_bars("ZZZ", "synthetic", seed=1)["close"])


def test_synthetic_calendar_is_fixed_business_days() -> None:
    bars = load_bars("CAL", "synthetic")  # end=None: the calendar's end, whatever today is
    assert list(bars.schema.items()) == list(BARS_SCHEMA.items())
    assert bars["date"][0] == date(2005, 1, 3) and bars["date"][-1] == date(2024, 12, 31)
    assert bars.height == np.busday_count("2005-01-03", "2025-01-01")
    days = np.arange("2005-01-03", "2025-01-01", dtype="datetime64[D]")
    assert bars["date"].to_list() == days[np.is_busday(days)].astype(date).tolist()  # every weekday, in order
    tail = load_bars("CAL", "synthetic", end=date(2020, 6, 30), days=250)
    assert tail.height == 250 and tail["date"][-1] == date(2020, 6, 30)
    assert tail.equals(bars.filter(pl.col("date") <= date(2020, 6, 30)).tail(250))


def test_synthetic_ohlc_consistent_and_valid() -> None:
    for i in range(20):
        bars = synthetic_bars(f"S{i}", seed=i)
        o, h, lo, c = (bars[x].to_numpy() for x in ("open", "high", "low", "close"))
        assert (h >= np.maximum(o, c)).all() and (lo <= np.minimum(o, c)).all()
        assert (h > lo).all()  # bars have a range
        assert (bars["low"] > 0).all() and (bars["volume"] > 0).all()
        validate_bars(bars, f"S{i}", min_rows=1000)


def test_synthetic_has_fat_tails_clustering_and_volume_link() -> None:
    kurt, acf, vol_corr = [], [], []
    for i in range(10):
        bars = synthetic_bars(f"T{i}")
        r = np.diff(np.log(bars["close"].to_numpy()))
        z = (r - r.mean()) / r.std()
        kurt.append(np.mean(z**4))
        a = np.abs(r) - np.abs(r).mean()
        acf.append(np.mean([np.dot(a[:-k], a[k:]) / np.dot(a, a) for k in range(1, 11)]))
        vol_corr.append(np.corrcoef(np.abs(r), bars["volume"].to_numpy()[1:])[0, 1])
    assert np.median(kurt) > 5.0  # a normal has 3
    assert np.median(acf) > 0.05  # |r| autocorrelated: volatility clusters (iid gives ~0)
    assert np.median(vol_corr) > 0.3


def test_garch_variance_fast_matches_reference() -> None:
    rng = np.random.default_rng(0)
    a = 0.08 * rng.standard_t(4, 3000) ** 2 + 0.9
    fast = synthetic._garch_variance(a, 1e-6, 4e-4, chunk=256)
    np.testing.assert_allclose(fast, synthetic._garch_variance_ref(a, 1e-6, 4e-4), rtol=1e-10)


def test_synthetic_50_symbols_each_have_their_own_bars() -> None:
    bars = [load_bars(f"SCALE{i}", "synthetic", days=2500) for i in range(50)]
    assert all(b.height == 2500 and b["date"][-1] == SYNTHETIC_END for b in bars)
    assert len({bars_fingerprint(b) for b in bars}) == 50

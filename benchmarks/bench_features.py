"""``tasks.features.indicators`` against TA-Lib on the same 25 columns.

50 synthetic symbols x 2500 business days (seeded random walks with
volatility clustering, generated here so the benchmark needs nothing but
numpy). Polars computes the whole universe in one query over the stacked
symbols; only what carries state from row to row (the recursions, OBV's
running sum, the first close, the seeds) is grouped per symbol, by ``.over``
on a block id of the ``symbol`` column. TA-Lib loops over the symbols, 24 C
calls each plus the numpy arithmetic for the columns it has no function for
(norm_price, log_ret_1, bb_pos_20, range_pos_20, vol_z_20). The two are timed
alternately in each repeat, so load from other processes hits both; the
medians and their ratio are printed. A per-symbol loop of ``indicators`` is
timed too.

    python benchmarks/bench_features.py [--symbols 50] [--days 2500] [--repeats 15]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time

import numpy as np
import polars as pl
import talib

from tasks.features import INDICATOR_COLUMNS, indicators


def random_walk(days: int, seed: int) -> dict[str, np.ndarray]:
    """OHLCV with GARCH(1,1)-like volatility and Student-t shocks."""
    rng = np.random.default_rng(seed)
    shocks = rng.standard_t(4, days) / np.sqrt(2.0)
    var, rets = 1e-4, np.empty(days)
    for t in range(days):
        rets[t] = np.sqrt(var) * shocks[t]
        var = 2e-6 + 0.08 * rets[t] ** 2 + 0.9 * var
    close = 20.0 * np.exp(rng.uniform(0, 3)) * np.exp(np.cumsum(rets))
    open_ = close * np.exp(rng.normal(0, 0.004, days))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, days)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, days)))
    volume = np.round(1e6 * np.exp(rng.normal(0, 0.4, days) + 20 * np.abs(rets)))
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


def talib_indicators(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    h, lo, c, v = b["high"], b["low"], b["close"], b["volume"]
    ret = talib.ROCP(c, 1)
    upper, _, lower = talib.BBANDS(c, 20, 2, 2)
    mn = talib.MIN(lo, 20)
    macd, signal, hist = talib.MACD(c, 12, 26, 9)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "norm_price": c / c[0], "ret_1": ret, "log_ret_1": np.log(talib.ROCR(c, 1)),
            **{f"sma_{n}": talib.SMA(c, n) for n in (5, 10, 20, 60)},
            **{f"ema_{n}": talib.EMA(c, n) for n in (5, 10, 20, 60)},
            **{f"vol_{n}": talib.STDDEV(ret, n, 1) for n in (5, 20)},
            **{f"mom_{n}": talib.MOM(c, n) for n in (5, 20)},
            "roc_10": talib.ROC(c, 10), "rsi_14": talib.RSI(c, 14),
            "bb_pos_20": (c - lower) / (upper - lower),
            "range_pos_20": (c - mn) / (talib.MAX(h, 20) - mn),
            "macd": macd, "macd_signal": signal, "macd_hist": hist,
            "obv": talib.OBV(c, v),
            "vol_z_20": (v - talib.SMA(v, 20)) / talib.STDDEV(v, 20, 1),
            "atr_14": talib.ATR(h, lo, c, 14),
        }
    assert tuple(out) == INDICATOR_COLUMNS
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--days", type=int, default=2500)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()

    dates = pl.date_range(dt.date(2000, 1, 3), dt.date(2040, 1, 1), "1d", eager=True)
    dates = dates.filter(dates.dt.weekday() <= 5)[: args.days]
    walks = [random_walk(args.days, seed) for seed in range(args.symbols)]
    frames = [pl.DataFrame({"date": dates, **w}) for w in walks]
    stacked = pl.concat([f.with_columns(symbol=pl.lit(f"S{i:03d}")) for i, f in enumerate(frames)])

    # Same numbers from both, before timing anything.
    ours = indicators(stacked).filter(pl.col("symbol") == "S007")
    ref = talib_indicators(walks[7])
    for col in INDICATOR_COLUMNS:
        a, b = ours[col].to_numpy(), ref[col]
        ok = np.isfinite(b)
        assert np.all(np.abs(a[ok] - b[ok]) <= 1e-8 * np.abs(b[ok]) + 1e-10), col

    t_talib, t_polars, t_loop = [], [], []
    indicators(stacked)  # warm-up
    for r in range(args.repeats):
        t0 = time.perf_counter()
        for w in walks:
            talib_indicators(w)
        t1 = time.perf_counter()
        indicators(stacked)
        t2 = time.perf_counter()
        t_talib.append(t1 - t0)
        t_polars.append(t2 - t1)
        if r < 3:
            t3 = time.perf_counter()
            for f in frames:
                indicators(f)
            t_loop.append(time.perf_counter() - t3)

    ta, po, lo = (statistics.median(t) * 1e3 for t in (t_talib, t_polars, t_loop))
    print(f"{args.symbols} symbols x {args.days} days, {len(INDICATOR_COLUMNS)} columns; "
          f"median of {args.repeats} (loop: of 3); polars {pl.__version__}, TA-Lib {talib.__ta_version__.decode()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"POLARS_MAX_THREADS={os.environ.get('POLARS_MAX_THREADS', 'default')}")
    print(f"TA-Lib (loop over symbols)          {ta:8.1f} ms")
    print(f"indicators, one stacked query      {po:8.1f} ms   ratio {po / ta:.2f}x TA-Lib (goal <= 3x)")
    print(f"indicators, one query per symbol   {lo:8.1f} ms   ratio {lo / ta:.2f}x TA-Lib")


if __name__ == "__main__":
    main()

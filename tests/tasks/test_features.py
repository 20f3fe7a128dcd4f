"""Indicators against TA-Lib (the oracle), and the invariants of build_features."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import talib

from configs.schema import FeatureConfig
from tasks.features import (
    FEATURE_COLUMNS, INDICATOR_COLUMNS, WARMUP_ROWS, build_features, feature_names, indicators,
)

RTOL, ATOL = 1e-8, 1e-10


def talib_reference(bars: pl.DataFrame) -> dict[str, np.ndarray]:
    """The 25 columns from TA-Lib (numpy only where TA-Lib has no function)."""
    h, lo, c, v = (bars[k].to_numpy() for k in ("high", "low", "close", "volume"))
    ret = talib.ROCP(c, 1)
    upper, _, lower = talib.BBANDS(c, 20, 2, 2)
    mn, mx = talib.MIN(lo, 20), talib.MAX(h, 20)
    macd, signal, hist = talib.MACD(c, 12, 26, 9)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "norm_price": c / c[0],
            "ret_1": ret,
            "log_ret_1": np.log(talib.ROCR(c, 1)),
            **{f"sma_{n}": talib.SMA(c, n) for n in (5, 10, 20, 60)},
            **{f"ema_{n}": talib.EMA(c, n) for n in (5, 10, 20, 60)},
            **{f"vol_{n}": talib.STDDEV(ret, n, 1) for n in (5, 20)},
            **{f"mom_{n}": talib.MOM(c, n) for n in (5, 20)},
            "roc_10": talib.ROC(c, 10),
            "rsi_14": talib.RSI(c, 14),
            "bb_pos_20": (c - lower) / (upper - lower),
            "range_pos_20": (c - mn) / (mx - mn),
            "macd": macd, "macd_signal": signal, "macd_hist": hist,
            "obv": talib.OBV(c, v),
            "vol_z_20": (v - talib.SMA(v, 20)) / talib.STDDEV(v, 20, 1),
            "atr_14": talib.ATR(h, lo, c, 14),
        }


def assert_matches_talib(ours: pl.DataFrame, bars: pl.DataFrame) -> None:
    ref = talib_reference(bars)
    assert ours.columns == ["date", *INDICATOR_COLUMNS]
    assert ours["date"].equals(bars["date"])
    for col in INDICATOR_COLUMNS:
        a, b = ours[col].to_numpy(), ref[col]  # nulls -> nan
        has = np.isfinite(b)
        bad = np.flatnonzero(has & ~(np.abs(a - b) <= RTOL * np.abs(b) + ATOL))
        first = bad[:1]
        assert bad.size == 0, f"{col}: {bad.size} rows differ, first {first}: ours {a[first]} TA-Lib {b[first]}"
        # Null exactly where TA-Lib has no (finite) value: warm-up and zero width.
        null = ours[col].is_null().to_numpy()
        odd = np.flatnonzero(null != ~has)[:5]
        assert odd.size == 0, f"{col}: rows {odd} are null in one and NaN in the other"
        assert not np.isnan(a[~null]).any() and np.isfinite(a[~null]).all(), col


def assert_same_as_one_symbol(mine: pl.DataFrame, one: pl.DataFrame, sym: str, columns: tuple[str, ...]) -> None:
    """A symbol's rows of a stacked computation against the same computation on its bars alone."""
    assert mine.height == one.height, sym
    for col in columns:
        a, b = mine[col].to_numpy(), one[col].to_numpy()  # nulls -> nan
        assert np.array_equal(np.isnan(a), np.isnan(b)), (sym, col)
        ok = ~np.isnan(b)
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-12, atol=1e-13, err_msg=f"{sym} {col}")


@pytest.mark.parametrize("symbol", ["AAPL", "MSFT", "IBM", "GOOG"])
def test_indicators_match_talib_on_sample_data(sample_bars, symbol):
    bars = sample_bars(symbol)
    assert bars.height > 2000
    assert_matches_talib(indicators(bars), bars)


@pytest.mark.parametrize("seed, price, vol", [(0, 50.0, 0.015), (1, 3.0, 0.04), (2, 900.0, 0.005), (3, 0.5, 0.02)])
def test_indicators_match_talib_on_synthetic_data(seed, price, vol, make_bars):
    bars = make_bars(1500, seed, price=price, vol=vol)
    assert_matches_talib(indicators(bars), bars)


def test_indicators_match_talib_on_project_simulator():
    from tasks.sources import load_bars

    for symbol in ("SYNTH", "ZZZ"):
        bars = load_bars(symbol, "synthetic")
        assert_matches_talib(indicators(bars), bars)


def test_stale_feed_in_the_middle_is_null_not_inf_and_matches_talib_around_it(make_bars):
    bars = make_bars(400, 5, stale=(150, 190))
    ours = indicators(bars)
    assert_matches_talib(ours, bars)
    # 20 equal closes/highs/lows/volumes end at rows 169..189: zero width there.
    for col in ("bb_pos_20", "range_pos_20", "vol_z_20"):
        assert ours[col][169:190].is_null().all(), col
        assert ours[col][190:].is_not_null().all(), col
    assert (ours["vol_5"][155:190] == 0).all()


def test_constant_prices_flat_case(make_bars):
    n = 120
    bars = make_bars(n, 0).with_columns(
        *[pl.lit(25.0).alias(c) for c in ("open", "high", "low", "close")], volume=pl.lit(5000.0))
    ours = indicators(bars)
    assert_matches_talib(ours, bars)  # incl. TA-Lib's RSI of 0 when nothing moved
    # RSI is defined (0, as TA-Lib) from its first row; the zero-width columns
    # are null, never inf or NaN; spreads and moves are exactly 0.
    assert ours["rsi_14"][14:].to_list() == [0.0] * (n - 14)
    for col in ("bb_pos_20", "range_pos_20", "vol_z_20"):
        assert ours[col].null_count() == n, col
    for col in ("vol_5", "vol_20", "atr_14", "macd", "macd_signal", "macd_hist", "mom_20", "roc_10"):
        vals = ours[col].drop_nulls()
        assert vals.len() > 0 and (vals == 0).all(), col
    assert (ours["obv"] == 5000.0).all() and (ours["norm_price"] == 1.0).all()


def test_hand_computed_values_on_a_tiny_series(make_bars):
    closes = [10.0, 11.0, 11.0, 10.0, 12.0, 12.0, 13.0]
    vols = [100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0]
    bars = make_bars(7, 0).with_columns(
        close=pl.Series(closes), open=pl.Series(closes), high=pl.Series(closes) + 1,
        low=pl.Series(closes) - 1, volume=pl.Series(vols))
    ours = indicators(bars)
    # OBV: v0, +200 (up), +0 (unchanged), -400, +500, +0, +700
    assert ours["obv"].to_list() == [100.0, 300.0, 300.0, -100.0, 400.0, 400.0, 1100.0]
    # EMA5 seeded at row 4 with the mean of the first five closes, then k = 1/3.
    seed = sum(closes[:5]) / 5
    assert ours["ema_5"][4] == pytest.approx(seed, rel=1e-15)
    assert ours["ema_5"][5] == pytest.approx(seed + (12.0 - seed) / 3, rel=1e-15)
    assert ours["ema_5"][:4].null_count() == 4
    assert ours["mom_5"][5] == 12.0 - 10.0 and ours["roc_10"].null_count() == 7
    assert ours["log_ret_1"][1] == pytest.approx(np.log(1.1), rel=1e-15)


def test_stacked_symbols_equal_one_symbol_at_a_time(make_bars):
    parts = {"AAA": make_bars(300, 1, price=2000.0), "BBB": make_bars(40, 2, price=0.8),
             "CCC": make_bars(250, 3, price=1.0, vol=0.002)}
    stacked = pl.concat([b.with_columns(symbol=pl.lit(s)) for s, b in parts.items()]).select(
        "symbol", pl.exclude("symbol"))
    out = indicators(stacked)
    assert out.columns == ["symbol", "date", *INDICATOR_COLUMNS] and out.height == stacked.height
    for sym, bars in parts.items():
        mine = out.filter(pl.col("symbol") == sym).drop("symbol")
        assert_same_as_one_symbol(mine, indicators(bars), sym, INDICATOR_COLUMNS)


def test_stacked_symbols_do_not_leak_into_each_other(make_bars):
    """Stacked symbols run as one series (windows masked by the row within the
    symbol, recursions and running sums reset per symbol): neighbours ~1e7
    apart in price and volume, and symbols shorter than every warm-up, still
    get their own numbers, equal to TA-Lib's and to one symbol at a time."""
    parts = {
        "BIG": make_bars(300, 4, price=5e5).with_columns(pl.col("volume") * 1e4),
        "TINY": make_bars(200, 5, price=0.05).with_columns(pl.col("volume") * 1e-2),
        "SHORT": make_bars(20, 6, price=3e4),
        "ONE": make_bars(1, 7),
        "LAST": make_bars(120, 8, price=0.01),
    }
    stacked = pl.concat([b.with_columns(symbol=pl.lit(s)) for s, b in parts.items()])
    out = indicators(stacked)
    for sym, bars in parts.items():
        mine = out.filter(pl.col("symbol") == sym).drop("symbol")
        assert_matches_talib(mine, bars)
        assert_same_as_one_symbol(mine, indicators(bars), sym, INDICATOR_COLUMNS)
    # a one-bar symbol has only its first close and its volume as OBV
    row = out.filter(pl.col("symbol") == "ONE").row(0, named=True)
    assert [c for c in INDICATOR_COLUMNS if row[c] is not None] == ["norm_price", "obv"]
    assert row["obv"] == parts["ONE"]["volume"][0] and row["norm_price"] == 1.0


def test_stacked_symbols_must_be_contiguous(make_bars):
    a, b = make_bars(80, 1), make_bars(80, 2)
    mixed = pl.concat([a.with_columns(symbol=pl.lit("A")), b.with_columns(symbol=pl.lit("B")),
                       a.with_columns(symbol=pl.lit("A"))])
    with pytest.raises(ValueError, match="sort them by symbol"):
        indicators(mixed)


def test_indicators_reject_missing_columns_and_nulls(make_bars):
    bars = make_bars(100, 0)
    with pytest.raises(ValueError, match="volume"):
        indicators(bars.drop("volume"))
    with pytest.raises(ValueError, match="close"):
        indicators(bars.with_columns(close=pl.when(pl.col("close") > 0).then(None).otherwise(pl.col("close"))))


# ------------------------------------------------------------ build_features

def test_build_features_drops_exactly_the_warmup(make_bars):
    bars = make_bars(500, 7)
    feats = build_features(bars)
    assert feats.columns == ["date", "close", *FEATURE_COLUMNS]
    assert feats.height == bars.height - WARMUP_ROWS
    assert feats["date"][0] == bars["date"][WARMUP_ROWS]
    assert feats["close"].equals(bars["close"][WARMUP_ROWS:])
    assert feats.null_count().sum_horizontal().item() == 0
    assert all(np.isfinite(feats[c].to_numpy()).all() for c in FEATURE_COLUMNS)
    # WARMUP_ROWS is the least that works: the row before it still has nulls.
    ind = indicators(bars)
    assert ind.row(WARMUP_ROWS - 1, named=True)["sma_60"] is None
    assert all(v is not None for v in ind.row(WARMUP_ROWS, named=True).values())


def test_features_are_scale_free(make_bars):
    """Prices x 1000 and volume x 7 (a different currency or share count) give the same features."""
    bars = make_bars(400, 8)
    scaled = bars.with_columns(*[pl.col(c) * 1000.0 for c in ("open", "high", "low", "close")],
                               pl.col("volume") * 7.0)
    a, b = build_features(bars), build_features(scaled)
    for col in FEATURE_COLUMNS:
        np.testing.assert_allclose(b[col].to_numpy(), a[col].to_numpy(), rtol=1e-9, atol=1e-12, err_msg=col)


def test_feature_values_by_hand(make_bars):
    bars = make_bars(300, 9)
    feats, ind = build_features(bars), indicators(bars)[WARMUP_ROWS:]
    c = bars["close"][WARMUP_ROWS:].to_numpy()
    np.testing.assert_allclose(feats["sma_20_rel"].to_numpy(), ind["sma_20"].to_numpy() / c - 1, rtol=1e-12)
    np.testing.assert_allclose(feats["macd_hist_rel"].to_numpy(), ind["macd_hist"].to_numpy() / c, rtol=1e-12)
    np.testing.assert_allclose(feats["atr_14_rel"].to_numpy(), ind["atr_14"].to_numpy() / c, rtol=1e-12)
    obv, v = indicators(bars)["obv"].to_numpy(), bars["volume"].to_numpy()
    t = 100
    flow = (obv[t] - obv[t - 20]) / v[t - 19: t + 1].sum()
    assert feats["obv_flow_20"][t - WARMUP_ROWS] == pytest.approx(flow, rel=1e-12)
    assert -1 <= feats["obv_flow_20"].min() and feats["obv_flow_20"].max() <= 1
    # log volatilities: ln std (ddof 0) of the last n log returns; Parkinson's range estimate
    r = np.diff(np.log(bars["close"].to_numpy()))  # r[i] = return into row i+1
    hl = np.log(bars["high"].to_numpy() / bars["low"].to_numpy())
    for n in (5, 20, 50):
        assert feats[f"log_vol_{n}"][t - WARMUP_ROWS] == pytest.approx(np.log(r[t - n: t].std()), rel=1e-9)
    pk = np.sqrt(np.mean(hl[t - 19: t + 1] ** 2) / (4 * np.log(2)))
    assert feats["log_range_vol_20"][t - WARMUP_ROWS] == pytest.approx(np.log(pk), rel=1e-9)


def test_zero_width_nulls_become_neutral_values(make_bars):
    bars = make_bars(300, 10, stale=(150, 190))
    feats = build_features(bars)
    flat = feats.filter(pl.col("date").is_between(bars["date"][169], bars["date"][189]))
    assert flat.height == 21
    assert (flat["bb_pos_20"] == 0.5).all() and (flat["range_pos_20"] == 0.5).all()
    assert (flat["vol_z_20"] == 0.0).all()
    # a flat feed has no volatility: its log is floored at ln 1e-4, not -inf
    assert (flat["log_vol_5"] == np.log(1e-4)).all() and (flat["log_range_vol_20"] == np.log(1e-4)).all()
    assert feats.null_count().sum_horizontal().item() == 0


def test_feature_subset_and_unknown_names(make_bars):
    bars = make_bars(200, 11)
    cfg = FeatureConfig(columns=["rsi_14", "ret_1"])
    feats = build_features(bars, cfg)
    assert feats.columns == ["date", "close", "rsi_14", "ret_1"]
    assert feats["rsi_14"].equals(build_features(bars)["rsi_14"])
    assert feature_names(cfg) == ["rsi_14", "ret_1"] and feature_names() == list(FEATURE_COLUMNS)
    with pytest.raises(ValueError, match=r"\['sma_20'\].*valid: ret_1, log_ret_1"):
        build_features(bars, FeatureConfig(columns=["rsi_14", "sma_20"]))
    with pytest.raises(ValueError, match="without repeats"):
        feature_names(FeatureConfig(columns=["ret_1", "ret_1"]))


def test_build_features_errors_name_the_problem(make_bars):
    with pytest.raises(ValueError, match=rf"50 bars, need more than {WARMUP_ROWS}"):
        build_features(make_bars(50, 0))
    bars = make_bars(200, 0)
    broken = bars.with_columns(close=pl.when(pl.int_range(pl.len()) == 120).then(0.0).otherwise(pl.col("close")))
    with pytest.raises(ValueError, match=f"from {bars['date'][120]}"):
        build_features(broken)


def test_build_features_on_stacked_symbols(make_bars):
    parts = {"AAA": make_bars(200, 1), "BBB": make_bars(150, 2, price=900.0)}
    stacked = pl.concat([b.with_columns(symbol=pl.lit(s)) for s, b in parts.items()])
    out = build_features(stacked)
    assert out.columns == ["symbol", "date", "close", *FEATURE_COLUMNS]
    for sym, bars in parts.items():
        mine = out.filter(pl.col("symbol") == sym).drop("symbol")
        assert mine.height == bars.height - WARMUP_ROWS
        assert mine["date"].equals(bars["date"][WARMUP_ROWS:]) and mine["close"].equals(bars["close"][WARMUP_ROWS:])
        assert_same_as_one_symbol(mine, build_features(bars), sym, FEATURE_COLUMNS)

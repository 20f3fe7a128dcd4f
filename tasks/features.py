"""Technical indicators (Polars expressions, pinned to TA-Lib) and model features.

``indicators(bars)`` computes the 25 standard indicators below, each equal to
TA-Lib's function of the same name within ``|a-b| <= 1e-8*|b| + 1e-10``
(``tests/tasks/test_features.py`` checks every column on real and synthetic
bars). ``build_features(bars, cfg)`` turns them into scale-free model inputs.

Indicators (c close, h high, l low, v volume, index t from 0):

====================  ======================================================
``norm_price``        c / c[0]
``ret_1``             (c - c[t-1]) / c[t-1]                       ROCP(c, 1)
``log_ret_1``         ln(c / c[t-1])
``sma_n``             mean of the last n closes                   SMA
``ema_n``             first value at t = n-1: SMA of the first n;  EMA
                      then e += k (c - e), k = 2/(n+1)
``vol_n``             population std of ``ret_1`` over n          STDDEV(ROCP)
``mom_n``             c - c[t-n]                                  MOM
``roc_10``            (c / c[t-10] - 1) * 100                     ROC
``rsi_14``            Wilder: mean gain G and loss L over bars     RSI
                      1..14 at t = 14, then G = (13 G + g)/14;
                      100 G / (G + L); 0 when G + L = 0 (flat)
``bb_pos_20``         (c - lower) / (upper - lower), BBANDS(20, 2, 2):
                      mid = SMA20, sd = std20 (ddof 0)
``range_pos_20``      (c - min20(l)) / (max20(h) - min20(l))
``macd*``             MACD(12, 26, 9): both EMAs seeded at t = 25 (fast
                      with mean c[14..25]), signal seeded at t = 33 with
                      the mean of macd[25..33]; all three null before 33
``obv``               v[0], then +v on an up close, -v on a down   OBV
                      close, nothing on an unchanged close
``vol_z_20``          (v - SMA20(v)) / std20(v)
``atr_14``            Wilder mean of the true range, seeded at     ATR
                      t = 14 with the mean TR over bars 1..14
====================  ======================================================

Warm-up rows are null where TA-Lib returns NaN. The zero-width cases
(``bb_pos_20`` and ``vol_z_20`` with sd = 0, ``range_pos_20`` with an empty
range) are null, never ±inf or NaN; TA-Lib gives inf/NaN there.

The Wilder and EMA recursions are ``ewm_mean(adjust=False)`` started at the
seed row: the input is null before the seed row, the seed (an SMA) at it, and
the raw series after it, so the recursion starts exactly where TA-Lib's does.

A frame with a ``symbol`` column (many symbols stacked, each sorted by date)
is computed per symbol with ``.over("symbol")``.
"""

from __future__ import annotations

import polars as pl

from configs.schema import FeatureConfig

INDICATOR_COLUMNS: tuple[str, ...] = (
    "norm_price", "ret_1", "log_ret_1",
    "sma_5", "sma_10", "sma_20", "sma_60",
    "ema_5", "ema_10", "ema_20", "ema_60",
    "vol_5", "vol_20", "mom_5", "mom_20", "roc_10", "rsi_14",
    "bb_pos_20", "range_pos_20", "macd", "macd_signal", "macd_hist",
    "obv", "vol_z_20", "atr_14",
)

_BARS_COLUMNS = ("date", "open", "high", "low", "close", "volume")


def _seeded_ewm(x: pl.Expr, seed: pl.Expr, seed_row: int, alpha: float) -> pl.Expr:
    """e[seed_row] = seed[seed_row]; e[t] = (1-alpha) e[t-1] + alpha x[t] after; null before."""
    i = pl.int_range(pl.len())
    start = pl.when(i == seed_row).then(seed).when(i > seed_row).then(x)
    return start.ewm_mean(alpha=alpha, adjust=False)


def _ema(x: pl.Expr, n: int, seed_row: int | None = None) -> pl.Expr:
    # TA-Lib seeds at n-1 with the SMA of the first n values; MACD's fast EMA
    # is seeded later (at the slow EMA's first row) with the SMA ending there.
    return _seeded_ewm(x, x.rolling_mean(n), n - 1 if seed_row is None else seed_row, 2.0 / (n + 1))


def _wilder(x: pl.Expr, n: int) -> pl.Expr:
    # x is null at row 0 (a difference), so rolling_mean(n) at row n is the
    # mean over rows 1..n: TA-Lib's seed for RSI and ATR.
    return _seeded_ewm(x, x.rolling_mean(n), n, 1.0 / n)


def _ratio_or_null(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den, null where den == 0 (a zero-width band or range)."""
    return pl.when(den != 0).then(num / den)


def _stage1() -> dict[str, pl.Expr]:
    c, h, lo, v = pl.col("close"), pl.col("high"), pl.col("low"), pl.col("volume")
    c1 = c.shift(1)
    d = c - c1
    true_range = pl.max_horizontal(h - lo, (h - c1).abs(), (lo - c1).abs())
    true_range = pl.when(c1.is_not_null()).then(true_range)  # TRANGE starts at row 1
    exprs = {
        "norm_price": c / c.first(),
        "ret_1": d / c1,
        "log_ret_1": (c / c1).log(),
        **{f"sma_{n}": c.rolling_mean(n) for n in (5, 10, 20, 60)},
        **{f"ema_{n}": _ema(c, n) for n in (5, 10, 20, 60)},
        **{f"mom_{n}": c - c.shift(n) for n in (5, 20)},
        "roc_10": (c / c.shift(10) - 1.0) * 100.0,
        "_gain": _wilder(pl.when(d > 0).then(d).when(d.is_not_null()).then(0.0), 14),
        "_loss": _wilder(pl.when(d < 0).then(-d).when(d.is_not_null()).then(0.0), 14),
        "_bb_sd": c.rolling_std(20, ddof=0),
        "_lo20": lo.rolling_min(20),
        "_hi20": h.rolling_max(20),
        "_macd": _ema(c, 12, seed_row=25) - _ema(c, 26),
        # 0 * v on an unchanged close; row 0 contributes v[0] (TA-Lib's start).
        "obv": (d.sign().fill_null(1.0) * v).cum_sum(),
        "_v_sd": v.rolling_std(20, ddof=0),
        "atr_14": _wilder(true_range, 14),
    }
    return exprs


def _stage2() -> dict[str, pl.Expr]:
    c, v = pl.col("close"), pl.col("volume")
    gain, loss, macd = pl.col("_gain"), pl.col("_loss"), pl.col("_macd")
    bb_sd = pl.col("_bb_sd")
    signal = _seeded_ewm(macd, macd.rolling_mean(9), 33, 2.0 / 10)
    macd_out = pl.when(pl.int_range(pl.len()) >= 33).then(macd)  # TA-Lib: all three from row 33
    return {
        **{f"vol_{n}": pl.col("ret_1").rolling_std(n, ddof=0) for n in (5, 20)},
        "rsi_14": pl.when(gain + loss != 0).then(100.0 * gain / (gain + loss))
        .when(gain.is_not_null()).then(0.0),  # flat: 0, as TA-Lib
        "bb_pos_20": _ratio_or_null(c - (pl.col("sma_20") - 2.0 * bb_sd), 4.0 * bb_sd),
        "range_pos_20": _ratio_or_null(c - pl.col("_lo20"), pl.col("_hi20") - pl.col("_lo20")),
        "macd": macd_out,
        "macd_signal": signal,
        "macd_hist": macd_out - signal,
        "vol_z_20": _ratio_or_null(v - v.rolling_mean(20), pl.col("_v_sd")),
    }


def _check_bars(bars: pl.DataFrame) -> None:
    missing = [c for c in _BARS_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack columns {missing}; Bars have {list(_BARS_COLUMNS)} (see DESIGN.md)")


def indicators(bars: pl.DataFrame) -> pl.DataFrame:
    """``date`` (and ``symbol`` if present) plus the 25 ``INDICATOR_COLUMNS``."""
    _check_bars(bars)
    by = "symbol" if "symbol" in bars.columns else None

    def over(exprs: dict[str, pl.Expr]) -> list[pl.Expr]:
        return [(e.over(by) if by else e).alias(name) for name, e in exprs.items()]

    keys = ["symbol", "date"] if by else ["date"]
    return (
        bars.lazy()
        .with_columns(over(_stage1()))
        .with_columns(over(_stage2()))
        .select(*keys, *INDICATOR_COLUMNS)
        .collect()
    )

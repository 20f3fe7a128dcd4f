"""Technical indicators (Polars expressions, pinned to TA-Lib) and model features.

``indicators(bars)`` computes the 25 standard indicators below, each equal to
TA-Lib's function within ``|a-b| <= 1e-8*|b| + 1e-10`` wherever TA-Lib has a
value (``tests/tasks/test_features.py`` checks every column on real and
synthetic bars). ``build_features(bars, cfg)`` turns them into scale-free model
inputs.

Indicators (c close, h high, l low, v volume; row t counts from 0):

================  ==========================================================
``norm_price``    c / c[0]
``ret_1``         (c - c[t-1]) / c[t-1]                            ROCP(1)
``log_ret_1``     ln(c / c[t-1])
``sma_n``         mean of the last n closes                        SMA
``ema_n``         SMA of the first n at t = n-1, then               EMA
                  e += k (c - e), k = 2/(n+1)
``vol_n``         population std (ddof 0) of ``ret_1`` over n       STDDEV(ROCP)
``mom_n``         c - c[t-n]                                       MOM
``roc_10``        (c / c[t-10] - 1) * 100                          ROC
``rsi_14``        Wilder: mean gain G and loss L of bars 1..14 at   RSI
                  t = 14, then G = (13 G + g) / 14 (same for L);
                  100 G / (G + L), and 0 when G + L = 0 (flat), as TA-Lib
``bb_pos_20``     (c - lower) / (upper - lower) of BBANDS(20, 2, 2):
                  (c - (mid - 2 sd)) / (4 sd), mid SMA20, sd ddof 0
``range_pos_20``  (c - min(l, 20)) / (max(h, 20) - min(l, 20))
``macd*``         MACD(12, 26, 9): both EMAs seeded at t = 25 (the fast
                  one with mean c[14..25]), signal seeded at t = 33 with
                  mean macd[25..33]; all three null before t = 33
``obv``           v[0], then + v on an up close, - v on a down      OBV
                  close, nothing on an unchanged close
``vol_z_20``      (v - SMA20(v)) / std20(v, ddof 0)
``atr_14``        Wilder mean of the true range, seeded at t = 14   ATR
                  with the mean true range of bars 1..14
================  ==========================================================

Warm-up rows are null exactly where TA-Lib returns NaN. Zero-width cases
(``bb_pos_20`` and ``vol_z_20`` with sd = 0, ``range_pos_20`` with an empty
range) are null, never ±inf or NaN (TA-Lib gives inf or NaN there).

The EMA and Wilder recursions are ``ewm_mean(adjust=False)`` fed with null
before the seed row, the seed (an SMA) at it, and the raw series after it, so
the recursion starts where TA-Lib's does. The work runs in four
``with_columns`` stages, so each recursion is computed once; a frame with a
``symbol`` column (symbols stacked, each in date order) is computed per symbol
with ``.over("symbol")``: one query for a whole universe is ~30x faster than
one query per symbol (``benchmarks/bench_features.py``).
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

BARS_COLUMNS: tuple[str, ...] = ("date", "open", "high", "low", "close", "volume")


# ---------------------------------------------------------------- indicators

def _seeded_ewm(x: pl.Expr, seed: pl.Expr, alpha: float) -> pl.Expr:
    """e = seed at seed's first non-null row, then e = (1-alpha) e + alpha x; null before."""
    start = pl.when(seed.shift(1).is_null()).then(seed).otherwise(x)
    return start.ewm_mean(alpha=alpha, adjust=False)


def _wilder(x: pl.Expr, n: int) -> pl.Expr:
    # x is null at row 0 (it is a difference), so rolling_mean(n) first has a
    # value at row n, the mean of rows 1..n: TA-Lib's seed for RSI and ATR.
    return _seeded_ewm(x, x.rolling_mean(n), 1.0 / n)


def _ratio_or_null(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den, null where den == 0 (a zero-width band or range)."""
    return pl.when(den != 0).then(num / den)


def _stage1() -> dict[str, pl.Expr]:
    """Everything that reads the bars directly."""
    c, h, lo, v = pl.col("close"), pl.col("high"), pl.col("low"), pl.col("volume")
    c1 = c.shift(1)
    d = c - c1
    sma26 = c.rolling_mean(26)
    true_range = pl.max_horizontal(h - lo, (h - c1).abs(), (lo - c1).abs())
    return {
        "norm_price": c / c.first(),
        "_d": d,
        "ret_1": d / c1,
        "log_ret_1": (c / c1).log(),
        **{f"sma_{n}": c.rolling_mean(n) for n in (5, 10, 20, 60)},
        **{f"mom_{n}": c - c.shift(n) for n in (5, 20)},
        "roc_10": (c / c.shift(10) - 1.0) * 100.0,
        "_sd20": c.rolling_std(20, ddof=0),
        "_lo20": lo.rolling_min(20),
        "_hi20": h.rolling_max(20),
        # MACD's fast EMA is seeded where the slow one is (row 25), with the
        # mean of the 12 closes ending there.
        "_seed12": pl.when(sma26.is_not_null()).then(c.rolling_mean(12)),
        "_sma26": sma26,
        # sign(0) * v adds nothing on an unchanged close; row 0 adds v[0].
        "obv": (d.sign().fill_null(1.0) * v).cum_sum(),
        "_vdev": v - v.rolling_mean(20),
        "_vsd": v.rolling_std(20, ddof=0),
        "_tr": pl.when(c1.is_not_null()).then(true_range),  # TRANGE starts at row 1
    }


def _stage2() -> dict[str, pl.Expr]:
    """The recursions seeded from stage 1."""
    c, d = pl.col("close"), pl.col("_d")
    up = pl.when(d > 0).then(d).when(d.is_not_null()).then(0.0)
    down = pl.when(d < 0).then(-d).when(d.is_not_null()).then(0.0)
    return {
        **{f"ema_{n}": _seeded_ewm(c, pl.col(f"sma_{n}"), 2.0 / (n + 1)) for n in (5, 10, 20, 60)},
        **{f"vol_{n}": pl.col("ret_1").rolling_std(n, ddof=0) for n in (5, 20)},
        "_gain": _wilder(up, 14),
        "_loss": _wilder(down, 14),
        "_line": _seeded_ewm(c, pl.col("_seed12"), 2.0 / 13) - _seeded_ewm(c, pl.col("_sma26"), 2.0 / 27),
        "atr_14": _wilder(pl.col("_tr"), 14),
    }


def _stage3() -> dict[str, pl.Expr]:
    line = pl.col("_line")  # first value at row 25, so its 9-mean seeds row 33
    return {"macd_signal": _seeded_ewm(line, line.rolling_mean(9), 2.0 / 10)}


def _stage4() -> dict[str, pl.Expr]:
    """Row-wise combinations (no grouping needed)."""
    c, gain, loss = pl.col("close"), pl.col("_gain"), pl.col("_loss")
    signal, sd = pl.col("macd_signal"), pl.col("_sd20")
    macd = pl.when(signal.is_not_null()).then(pl.col("_line"))
    return {
        "rsi_14": pl.when(gain + loss != 0).then(100.0 * gain / (gain + loss))
        .when(gain.is_not_null()).then(0.0),
        "bb_pos_20": _ratio_or_null(c - (pl.col("sma_20") - 2.0 * sd), 4.0 * sd),
        "range_pos_20": _ratio_or_null(c - pl.col("_lo20"), pl.col("_hi20") - pl.col("_lo20")),
        "macd": macd,
        "macd_hist": macd - signal,
        "vol_z_20": _ratio_or_null(pl.col("_vdev"), pl.col("_vsd")),
    }


def _check_bars(bars: pl.DataFrame) -> None:
    missing = [c for c in BARS_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack columns {missing}; Bars have {list(BARS_COLUMNS)} (see DESIGN.md)")
    nulls = {c: n for c, n in bars.select(BARS_COLUMNS[1:]).null_count().row(0, named=True).items() if n}
    if nulls:
        raise ValueError(f"bars have nulls {nulls}; run validate_bars first, it names the dates")


def indicators(bars: pl.DataFrame) -> pl.DataFrame:
    """``date`` (after ``symbol``, if the frame has one) and the 25 ``INDICATOR_COLUMNS``."""
    _check_bars(bars)
    by = "symbol" if "symbol" in bars.columns else None
    lf = bars.lazy()
    for stage in (_stage1, _stage2, _stage3):
        lf = lf.with_columns([(e.over(by) if by else e).alias(k) for k, e in stage().items()])
    lf = lf.with_columns([e.alias(k) for k, e in _stage4().items()])
    keys = [by, "date"] if by else ["date"]
    # Polars 2 defaults to the streaming engine, ~5x slower on these small frames.
    return lf.select(*keys, *INDICATOR_COLUMNS).collect(engine="in-memory")


# ------------------------------------------------------------------ features

#: Leading rows ``build_features`` drops: sma_60 and ema_60 first have a value
#: at row 59; every other indicator starts earlier.
WARMUP_ROWS = 59

# Neutral values for the zero-width cases, which are null in ``indicators``:
# with sd = 0 every close in the window equals the mean, so the close sits in
# the middle of the (empty) band; likewise for an empty high-low range; a
# volume equal to its mean has z = 0; no volume traded means no flow.
_ZERO_WIDTH_FILL = {"bb_pos_20": 0.5, "range_pos_20": 0.5, "vol_z_20": 0.0, "obv_flow_20": 0.0}


def _feature_exprs() -> dict[str, pl.Expr]:
    """Scale-free model inputs: ratios to close, returns, positions, z-scores."""
    c = pl.col("close")

    def rel(name: str) -> pl.Expr:  # a price level relative to the close
        return pl.col(name) / c - 1.0

    return {
        "ret_1": pl.col("ret_1"),
        "log_ret_1": pl.col("log_ret_1"),
        **{f"sma_{n}_rel": rel(f"sma_{n}") for n in (5, 10, 20, 60)},
        **{f"ema_{n}_rel": rel(f"ema_{n}") for n in (5, 10, 20, 60)},
        "vol_5": pl.col("vol_5"),
        "vol_20": pl.col("vol_20"),
        **{f"mom_{n}_rel": pl.col(f"mom_{n}") / c for n in (5, 20)},
        "roc_10": pl.col("roc_10"),
        "rsi_14": pl.col("rsi_14"),
        "bb_pos_20": pl.col("bb_pos_20"),
        "range_pos_20": pl.col("range_pos_20"),
        **{f"{m}_rel": pl.col(m) / c for m in ("macd", "macd_signal", "macd_hist")},
        # OBV's level depends on where the history starts; its 20-day change
        # over the volume traded in those days is in [-1, 1].
        "obv_flow_20": _ratio_or_null(pl.col("obv") - pl.col("obv").shift(20), pl.col("volume").rolling_sum(20)),
        "vol_z_20": pl.col("vol_z_20"),
        "atr_14_rel": pl.col("atr_14") / c,
        "hl_rel": (pl.col("high") - pl.col("low")) / c,
    }


FEATURE_COLUMNS: tuple[str, ...] = tuple(_feature_exprs())
_READS_HISTORY = {"obv_flow_20"}  # not row-wise: computed per symbol


def feature_names(cfg: FeatureConfig | None = None) -> list[str]:
    """The model inputs ``build_features`` keeps, in order; all of them when ``cfg.columns`` is None."""
    if cfg is None or cfg.columns is None:
        return list(FEATURE_COLUMNS)
    unknown = [c for c in cfg.columns if c not in FEATURE_COLUMNS]
    if unknown:
        raise ValueError(f"unknown feature column(s) {unknown}; valid: {', '.join(FEATURE_COLUMNS)}")
    dupes = sorted({c for c in cfg.columns if cfg.columns.count(c) > 1})
    if dupes or not cfg.columns:
        raise ValueError(f"feature columns must be a non-empty list without repeats; got {cfg.columns}")
    return list(cfg.columns)


def build_features(bars: pl.DataFrame, cfg: FeatureConfig | None = None) -> pl.DataFrame:
    """``date``, ``close`` and the model inputs, from row ``WARMUP_ROWS`` on.

    Zero-width nulls inside the history (a stale feed: 20 equal closes, or 20
    days without volume) become the neutral values of ``_ZERO_WIDTH_FILL``; a
    null or non-finite value left after that means the bars break the Bars
    contract, and raises naming the column and the first date.
    """
    names = feature_names(cfg)
    if bars.height <= WARMUP_ROWS and "symbol" not in bars.columns:
        raise ValueError(
            f"{bars.height} bars, need more than {WARMUP_ROWS} (the warm-up of the 60-day "
            f"indicators) plus the rows for windows; use a longer history"
        )
    by = "symbol" if "symbol" in bars.columns else None
    ind = indicators(bars).drop(["symbol", "date"], strict=False)
    frame = pl.concat([bars.select(*([by] if by else []), "date", "close", "high", "low", "volume"), ind],
                      how="horizontal")
    exprs = _feature_exprs()
    feats = []
    for n in names:
        e = exprs[n].over(by) if by and n in _READS_HISTORY else exprs[n]
        feats.append((e.fill_null(_ZERO_WIDTH_FILL[n]) if n in _ZERO_WIDTH_FILL else e).alias(n))
    keys = [by, "date", "close"] if by else ["date", "close"]
    row = pl.int_range(pl.len())
    out = (
        frame.lazy()
        .select(*keys, *feats)
        .filter((row.over(by) if by else row) >= WARMUP_ROWS)
        .collect(engine="in-memory")
    )
    _check_finite(out, names)
    return out


def _check_finite(frame: pl.DataFrame, names: list[str]) -> None:
    bad = frame.select([(pl.col(n).is_null() | ~pl.col(n).is_finite()).alias(n) for n in names])
    for n in names:
        if bad[n].any():
            raise ValueError(
                f"feature {n} is null or not finite from {frame['date'][bad[n].arg_max()]}: the bars "
                f"break the Bars contract (non-positive or missing prices?); run validate_bars on them"
            )

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
before the seed row, the seed (the mean TA-Lib starts from) at it, and the raw
series after it, so the recursion starts where TA-Lib's does. The work runs in
four stages, so each recursion is computed once. A frame with a ``symbol``
column (symbols stacked, each symbol's rows together and in date order) is
computed per symbol in one query, about twice as fast as one query per symbol;
``benchmarks/BENCH_FEATURES.md`` has the numbers against TA-Lib.
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

def _seeded_ewm(x: pl.Expr, row: int, n: int, alpha: float) -> pl.Expr:
    """Null before ``row``; at ``row`` the mean of x over the n rows ending there;
    then e = (1 - alpha) e + alpha x (TA-Lib's k = alpha)."""
    i = pl.col("_i")
    seed = x.slice(row - n + 1, n).mean()
    return pl.when(i == row).then(seed).when(i > row).then(x).ewm_mean(alpha=alpha, adjust=False)


def _ratio_or_null(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den, null where den == 0 (a zero-width band or range)."""
    return pl.when(den != 0).then(num / den)


def _stage1() -> dict[str, pl.Expr]:
    """Everything that reads the bars directly."""
    c, h, lo, v = pl.col("close"), pl.col("high"), pl.col("low"), pl.col("volume")
    c1 = c.shift(1)
    d = c - c1
    ret = d / c1
    # max(h - l, |h - c1|, |l - c1|) as one subtraction of the same two
    # operands TA-Lib ends up using (high >= low in Bars).
    true_range = pl.max_horizontal(h, c1) - pl.min_horizontal(lo, c1)
    return {
        "_i": pl.int_range(pl.len()),
        "norm_price": c / c.first(),
        "_d": d,
        "ret_1": ret,
        "log_ret_1": (c / c1).log(),
        **{f"sma_{n}": c.rolling_mean(n) for n in (5, 10, 20, 60)},
        **{f"vol_{n}": ret.rolling_std(n, ddof=0) for n in (5, 20)},
        **{f"mom_{n}": c - c.shift(n) for n in (5, 20)},
        "roc_10": (c / c.shift(10) - 1.0) * 100.0,
        "_sd20": c.rolling_std(20, ddof=0),
        "_lo20": lo.rolling_min(20),
        "_hi20": h.rolling_max(20),
        # sign(0) * v adds nothing on an unchanged close; row 0 adds v[0].
        "obv": (d.sign().fill_null(1.0) * v).cum_sum(),
        "_vdev": v - v.rolling_mean(20),
        "_vsd": v.rolling_std(20, ddof=0),
        "_tr": pl.when(c1.is_not_null()).then(true_range),  # TRANGE starts at row 1
    }


def _stage2() -> dict[str, pl.Expr]:
    """The recursions. RSI and ATR (Wilder) are seeded at row 14 with the mean
    of rows 1..14 (their inputs are differences, null at row 0); MACD's fast
    and slow EMAs both at row 25."""
    c, d = pl.col("close"), pl.col("_d")
    up, down = d.clip(lower_bound=0.0), (-d).clip(lower_bound=0.0)
    return {
        **{f"ema_{n}": _seeded_ewm(c, n - 1, n, 2.0 / (n + 1)) for n in (5, 10, 20, 60)},
        "_gain": _seeded_ewm(up, 14, 14, 1.0 / 14),
        "_loss": _seeded_ewm(down, 14, 14, 1.0 / 14),
        "_line": _seeded_ewm(c, 25, 12, 2.0 / 13) - _seeded_ewm(c, 25, 26, 2.0 / 27),
        "atr_14": _seeded_ewm(pl.col("_tr"), 14, 14, 1.0 / 14),
    }


def _stage3() -> dict[str, pl.Expr]:
    # the MACD line starts at row 25, so the signal's seed is mean(line[25..33])
    return {"macd_signal": _seeded_ewm(pl.col("_line"), 33, 9, 2.0 / 10)}


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
    if "symbol" in bars.columns:
        return _indicators_by_symbol(bars)
    lf = bars.lazy()
    for stage in (_stage1, _stage2, _stage3, _stage4):
        lf = lf.with_columns([e.alias(k) for k, e in stage().items()])
    # Polars 2 defaults to the streaming engine, ~5x slower on these small frames.
    return lf.select("date", *INDICATOR_COLUMNS).collect(engine="in-memory")


def _indicators_by_symbol(bars: pl.DataFrame) -> pl.DataFrame:
    """Stacked symbols: each stage as one group_by-agg, exploded back in row order.

    Cheaper than ``.over("symbol")`` on every expression (one grouping per
    stage instead of one per column); needs each symbol's rows contiguous.
    """
    blocks = bars.select((pl.col("symbol") != pl.col("symbol").shift(1)).sum() + 1).item()
    if bars.height and blocks != bars["symbol"].n_unique():
        raise ValueError("stacked bars must keep each symbol's rows together, in date order; "
                         "sort them by symbol then date")
    frame = bars
    for stage in (_stage1, _stage2, _stage3):
        exprs = stage()
        new = (
            frame.lazy()
            .group_by("symbol", maintain_order=True)
            .agg([e.alias(k) for k, e in exprs.items()])
            .drop("symbol")
            .explode(list(exprs))
            .collect(engine="in-memory")
        )
        frame = frame.hstack(new)
    return (
        frame.lazy()
        .with_columns([e.alias(k) for k, e in _stage4().items()])
        .select("symbol", "date", *INDICATOR_COLUMNS)
        .collect(engine="in-memory")
    )


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
    first = {n: bad[n].arg_max() for n in names if bad[n].any()}
    if first:
        n = min(first, key=first.__getitem__)
        raise ValueError(
            f"feature {n} is null or not finite from {frame['date'][first[n]]}: the bars break the "
            f"Bars contract (non-positive or missing prices?); run validate_bars on them"
        )

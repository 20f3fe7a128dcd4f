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

import math

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

# Stacked symbols are computed as one series, without grouping. A rolling
# window or shift that reaches into the previous symbol only touches a
# symbol's first rows, which are warm-up nulls anyway (``_WARMUP`` masks them
# with ``_i``, the row number within the symbol). The recursions cannot be
# masked that way, so they run on ``ewm_mean_by`` against a time key ``_t``
# that steps by ``_TICK`` per row and jumps by ``_GAP`` rows between symbols:
# ewm_mean_by decays by exp(-ln2 * dt / half_life) = 2 ** (-rows / h), which
# across the gap underflows to exactly 0.0, so each symbol's recursion starts
# from its own seed with nothing carried over from the symbol before it.
_TICK = 2**32  # key units per row; the half-life is rounded to 1/_TICK rows
_GAP = 2**15  # rows; 2 ** (-_GAP / h) == 0.0 for a half-life h < _GAP / 1075 = 30 rows
_MAX_KEY_ROWS = 2**63 // _TICK  # _t is Int64


def _half_life(alpha: float) -> str:
    """ewm_mean_by's half-life, in key units, for a per-row decay of 1 - alpha."""
    rows = math.log(2.0) / -math.log1p(-alpha)
    assert rows * 1075 < _GAP, f"half-life {rows:.1f} rows too long for the symbol gap"
    return f"{round(rows * _TICK)}i"


def _seeded_ewm(x: pl.Expr, seed: pl.Expr, row: int, alpha: float) -> pl.Expr:
    """Null before ``row``; ``seed`` at ``row``; then e = (1 - alpha) e + alpha x
    (TA-Lib's k = alpha)."""
    i = pl.col("_i")
    return pl.when(i == row).then(seed).when(i > row).then(x).ewm_mean_by("_t", half_life=_half_life(alpha))


def _ratio_or_null(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den, null where den == 0 (a zero-width band or range)."""
    return pl.when(den != 0).then(num / den)


def _row_keys(stacked: bool) -> dict[str, pl.Expr]:
    """``_blk`` (which symbol), ``_i`` (row within it) and the time key ``_t``."""
    row = pl.int_range(pl.len(), dtype=pl.Int64)
    if not stacked:
        return {"_blk": pl.lit(0, pl.Int64), "_i": row, "_t": row * _TICK}
    blk = pl.col("symbol").rle_id().cast(pl.Int64)
    # rows are numbered from 0 in each symbol: subtract the row its block starts at
    start = pl.when(blk != blk.shift(1, fill_value=-1)).then(row).otherwise(0).cum_max()
    return {"_blk": blk, "_i": row - start, "_t": (row + blk * _GAP) * _TICK}


def _stage1(stacked: bool) -> dict[str, pl.Expr]:
    """Everything that reads the bars directly (warm-up rows masked later)."""
    c, h, lo, v, i = pl.col("close"), pl.col("high"), pl.col("low"), pl.col("volume"), pl.col("_i")
    c1 = c.shift(1)
    d = c - c1
    ret = d / c1
    # max(h - l, |h - c1|, |l - c1|) as one subtraction of the same two
    # operands TA-Lib ends up using (high >= low in Bars).
    true_range = pl.max_horizontal(h, c1) - pl.min_horizontal(lo, c1)
    # sign(0) * v adds nothing on an unchanged close; a symbol's row 0 adds v[0].
    obv = (pl.when(i > 0).then(d.sign()).otherwise(1.0) * v).cum_sum()
    return {
        "norm_price": c / pl.when(i == 0).then(c).forward_fill(),
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
        # a running sum must restart at each symbol (not maskable like a window)
        "obv": obv.over("_blk") if stacked else obv,
        "_vdev": v - v.rolling_mean(20),
        "_vsd": v.rolling_std(20, ddof=0),
        "_tr": true_range,
    }


def _stage2() -> dict[str, pl.Expr]:
    """The recursions, each seeded with the mean TA-Lib starts from. RSI and
    ATR (Wilder) at row 14 with the mean of rows 1..14 (their inputs are
    differences, so row 0 has none); MACD's fast and slow EMAs both at row 25."""
    c, d, tr = pl.col("close"), pl.col("_d"), pl.col("_tr")
    up, down = d.clip(lower_bound=0.0), (-d).clip(lower_bound=0.0)
    return {
        **{f"ema_{n}": _seeded_ewm(c, pl.col(f"sma_{n}"), n - 1, 2.0 / (n + 1)) for n in (5, 10, 20, 60)},
        "_gain": _seeded_ewm(up, up.rolling_mean(14), 14, 1.0 / 14),
        "_loss": _seeded_ewm(down, down.rolling_mean(14), 14, 1.0 / 14),
        "_line": _seeded_ewm(c, c.rolling_mean(12), 25, 2.0 / 13)
        - _seeded_ewm(c, c.rolling_mean(26), 25, 2.0 / 27),
        "atr_14": _seeded_ewm(tr, tr.rolling_mean(14), 14, 1.0 / 14),
    }


def _stage3() -> dict[str, pl.Expr]:
    # the MACD line starts at row 25, so the signal's seed is mean(line[25..33])
    line = pl.col("_line")
    return {"macd_signal": _seeded_ewm(line, line.rolling_mean(9), 33, 2.0 / 10)}


#: First row (within a symbol) at which each windowed column has a value, as
#: TA-Lib: before it the window reaches back past the symbol's first bar. The
#: recursions (ema, rsi, macd, atr) are null before their seed on their own.
_WARMUP = {
    "ret_1": 1, "log_ret_1": 1,
    **{f"sma_{n}": n - 1 for n in (5, 10, 20, 60)},
    **{f"vol_{n}": n for n in (5, 20)},  # std of returns: ret_1 starts at row 1
    **{f"mom_{n}": n for n in (5, 20)},
    "roc_10": 10, "bb_pos_20": 19, "range_pos_20": 19, "vol_z_20": 19,
}


def _stage4() -> dict[str, pl.Expr]:
    """Row-wise combinations, and the warm-up masks."""
    c, gain, loss, i = pl.col("close"), pl.col("_gain"), pl.col("_loss"), pl.col("_i")
    signal, sd = pl.col("macd_signal"), pl.col("_sd20")
    macd = pl.when(signal.is_not_null()).then(pl.col("_line"))
    out = {
        "rsi_14": pl.when(gain + loss != 0).then(100.0 * gain / (gain + loss))
        .when(gain.is_not_null()).then(0.0),
        "bb_pos_20": _ratio_or_null(c - (pl.col("sma_20") - 2.0 * sd), 4.0 * sd),
        "range_pos_20": _ratio_or_null(c - pl.col("_lo20"), pl.col("_hi20") - pl.col("_lo20")),
        "macd": macd,
        "macd_hist": macd - signal,
        "vol_z_20": _ratio_or_null(pl.col("_vdev"), pl.col("_vsd")),
    }
    return {k: pl.when(i >= first).then(out.get(k, pl.col(k))) for k, first in _WARMUP.items()} | {
        k: e for k, e in out.items() if k not in _WARMUP}


def _check_bars(bars: pl.DataFrame) -> None:
    missing = [c for c in BARS_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack columns {missing}; Bars have {list(BARS_COLUMNS)} (see DESIGN.md)")
    nulls = {c: n for c, n in bars.select(BARS_COLUMNS[1:]).null_count().row(0, named=True).items() if n}
    if nulls:
        raise ValueError(f"bars have nulls {nulls}; run validate_bars first, it names the dates")
    if "symbol" in bars.columns and bars.height:
        blocks, symbols = bars.select(pl.col("symbol").rle_id().max() + 1, pl.col("symbol").n_unique()).row(0)
        if blocks != symbols:
            raise ValueError("stacked bars must keep each symbol's rows together, in date order; "
                             "sort them by symbol then date")
        if bars.height + blocks * _GAP > _MAX_KEY_ROWS:
            raise ValueError(f"{blocks} stacked symbols, {bars.height} rows: too many for one call "
                             f"(the time key would overflow); split the frame")


def indicators(bars: pl.DataFrame) -> pl.DataFrame:
    """``date`` (after ``symbol``, if the frame has one) and the 25 ``INDICATOR_COLUMNS``."""
    _check_bars(bars)
    stacked = "symbol" in bars.columns
    lf = bars.lazy()
    for exprs in (_row_keys(stacked), _stage1(stacked), _stage2(), _stage3(), _stage4()):
        lf = lf.with_columns([e.alias(k) for k, e in exprs.items()])
    # Polars 2 defaults to the streaming engine, ~5x slower on these small frames.
    return lf.select(*(["symbol"] if stacked else []), "date", *INDICATOR_COLUMNS).collect(engine="in-memory")


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

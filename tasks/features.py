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

The EMA and Wilder recursions are ``ewm_mean(adjust=False)`` fed with the
seed (the mean TA-Lib starts from) up to the seed row and the raw series after
it, so the recursion starts where TA-Lib's does; the rows before the seed are
masked to null. The work runs in six stages, so each recursion is computed
once. A frame with a ``symbol`` column (symbols stacked, each symbol's rows
together and in date order) is computed as one series with no grouping but
for the recursions and running sums (see the comment above ``_seeded``), which
is faster than one query per symbol; ``benchmarks/bench_features.py`` times
both against TA-Lib (its output is in ``benchmarks/BENCH_FEATURES.md``).
"""

from __future__ import annotations

import functools
import math

import polars as pl

from configs.schema import FeatureConfig
from tasks.bars import BARS_COLUMNS

INDICATOR_COLUMNS: tuple[str, ...] = (
    "norm_price", "ret_1", "log_ret_1",
    "sma_5", "sma_10", "sma_20", "sma_60",
    "ema_5", "ema_10", "ema_20", "ema_60",
    "vol_5", "vol_20", "mom_5", "mom_20", "roc_10", "rsi_14",
    "bb_pos_20", "range_pos_20", "macd", "macd_signal", "macd_hist",
    "obv", "vol_z_20", "atr_14",
)

# ---------------------------------------------------------------- indicators

# Stacked symbols are computed as one series, not one group at a time. A
# rolling window or shift that reaches back into the previous symbol only
# touches a symbol's first rows, which are warm-up nulls anyway: ``_WARMUP``
# masks them with ``_i``, the row number within the symbol. What carries state
# from row to row (the recursions, OBV's running sum, the first close, the
# seeds) runs per symbol with ``.over("_blk")`` on a plain column: ``_blk``
# numbers the symbols' contiguous blocks and is flagged sorted, so Polars
# takes each group as a slice rather than gathering its rows. Under ``.over``
# a when/then chain costs more than a plain column, hence the recursions'
# inputs are columns of their own, built a stage before.


def _seeded(x: str, row: int, n: int, by: str | None) -> pl.Expr:
    """A recursion's input: up to ``row``, the mean of x over the n rows ending
    there (TA-Lib's seed), then x. Repeating the seed before ``row`` rather
    than leaving nulls keeps ewm_mean on its no-null path; ewm_mean leaves e
    unchanged while x equals it, and ``_WARMUP`` masks those rows."""
    seed = pl.col(x).slice(row - n + 1, n).mean()
    return pl.when(pl.col("_i") <= row).then(seed.over(by) if by else seed).otherwise(pl.col(x))


def _ewm(x: str, alpha: float, by: str | None) -> pl.Expr:
    """e = (1 - alpha) e + alpha x (TA-Lib's k = alpha)."""
    e = pl.col(x).ewm_mean(alpha=alpha, adjust=False)
    return e.over(by) if by else e


def _ratio_or_null(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den, null where den == 0 (a zero-width band or range)."""
    return pl.when(den != 0).then(num / den)


def _larger(a: pl.Expr, b: pl.Expr) -> pl.Expr:  # for two columns, cheaper than max_horizontal
    return pl.when(a >= b).then(a).otherwise(b)


def _smaller(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    return pl.when(a <= b).then(a).otherwise(b)


def _with_range_20(lf: pl.LazyFrame) -> pl.LazyFrame:
    """``_lo20``, ``_hi20``: the lowest low and the highest high of the last 20
    rows, by doubling: the extreme of 2w rows is the extreme of two adjacent
    windows of w, and 20 rows are two overlapping windows of 16. Exact; used
    on stacked symbols, where it beats rolling_min/max, and not on one
    symbol's rows, where its five extra stages cost more than they save. One
    ``with_columns`` per level: as one nested expression, level k would be
    evaluated 2**k times."""
    lf = lf.with_columns(_lo20=pl.col("low"), _hi20=pl.col("high"))
    for w in (1, 2, 4, 8, 4):  # windows of 2, 4, 8, 16 rows, then 16 + 4
        lo, hi = pl.col("_lo20"), pl.col("_hi20")
        lf = lf.with_columns(_lo20=_smaller(lo, lo.shift(w)), _hi20=_larger(hi, hi.shift(w)))
    return lf


def _stage1(by: str | None) -> dict[str, pl.Expr]:
    """Everything that reads the bars directly."""
    c, h, lo, v, i = pl.col("close"), pl.col("high"), pl.col("low"), pl.col("volume"), pl.col("_i")
    c1 = c.shift(1)
    d = c - c1
    ret = d / c1
    c0 = c.first()
    return {
        "norm_price": c / (c0.over(by) if by else c0),
        "ret_1": ret,
        "log_ret_1": (c / c1).log(),
        **{f"sma_{n}": c.rolling_mean(n) for n in (5, 10, 20, 60)},
        **{f"vol_{n}": ret.rolling_std(n, ddof=0) for n in (5, 20)},
        **{f"mom_{n}": c - c.shift(n) for n in (5, 20)},
        "roc_10": (c / c.shift(10) - 1.0) * 100.0,
        "_sd20": c.rolling_std(20, ddof=0),
        # sign(0) * v adds nothing on an unchanged close; a symbol's row 0 adds v[0].
        "_obv_step": pl.when(i > 0).then(d.sign()).otherwise(1.0) * v,
        "_vdev": v - v.rolling_mean(20),
        "_vsd": v.rolling_std(20, ddof=0),
        "_up": d.clip(lower_bound=0.0),
        "_down": (-d).clip(lower_bound=0.0),
        # max(h - l, |h - c1|, |l - c1|) as one subtraction of the same two
        # operands TA-Lib ends up using (high >= low in Bars).
        "_tr": _larger(h, c1) - _smaller(lo, c1),
    }


def _stage2(by: str | None) -> dict[str, pl.Expr]:
    """OBV's running sum, and the recursions' inputs. RSI and ATR (Wilder) are
    seeded at row 14 with the mean of rows 1..14 (their inputs are
    differences, none at row 0); MACD's fast and slow EMAs both at row 25."""
    obv = pl.col("_obv_step").cum_sum()
    return {
        "obv": obv.over(by) if by else obv,
        **{f"_x_ema_{n}": _seeded("close", n - 1, n, by) for n in (5, 10, 20, 60)},
        "_x_gain": _seeded("_up", 14, 14, by),
        "_x_loss": _seeded("_down", 14, 14, by),
        "_x_fast": _seeded("close", 25, 12, by),
        "_x_slow": _seeded("close", 25, 26, by),
        "_x_atr": _seeded("_tr", 14, 14, by),
    }


def _stage3(by: str | None) -> dict[str, pl.Expr]:
    """The recursions, from the inputs of stage 2."""
    return {
        **{f"ema_{n}": _ewm(f"_x_ema_{n}", 2.0 / (n + 1), by) for n in (5, 10, 20, 60)},
        "_gain": _ewm("_x_gain", 1.0 / 14, by),
        "_loss": _ewm("_x_loss", 1.0 / 14, by),
        "_line": _ewm("_x_fast", 2.0 / 13, by) - _ewm("_x_slow", 2.0 / 27, by),
        "atr_14": _ewm("_x_atr", 1.0 / 14, by),
    }


def _stage4(by: str | None) -> dict[str, pl.Expr]:
    # the MACD line starts at row 25, so the signal's seed is mean(line[25..33])
    return {"_x_signal": _seeded("_line", 33, 9, by)}


def _stage5(by: str | None) -> dict[str, pl.Expr]:
    """MACD's signal line, an EMA of the line of stage 3."""
    return {"macd_signal": _ewm("_x_signal", 2.0 / 10, by)}


#: First row of each column within a symbol, as TA-Lib: a window's first full
#: one (earlier, a window on stacked symbols reaches into the previous one), a
#: recursion's seed row (earlier rows hold the repeated seed).
_WARMUP = {
    "ret_1": 1, "log_ret_1": 1,
    **{f"sma_{n}": n - 1 for n in (5, 10, 20, 60)},
    **{f"ema_{n}": n - 1 for n in (5, 10, 20, 60)},
    **{f"vol_{n}": n for n in (5, 20)},  # std of ret_1, which starts at row 1
    **{f"mom_{n}": n for n in (5, 20)},
    "roc_10": 10, "rsi_14": 14, "bb_pos_20": 19, "range_pos_20": 19,
    "macd": 33, "macd_signal": 33, "macd_hist": 33, "vol_z_20": 19, "atr_14": 14,
}


def _stage6(by: str | None) -> dict[str, pl.Expr]:
    """Row-wise combinations, and the warm-up masks."""
    c, gain, loss = pl.col("close"), pl.col("_gain"), pl.col("_loss")
    signal, sd = pl.col("macd_signal"), pl.col("_sd20")
    out = {k: pl.col(k) for k in _WARMUP} | {
        "rsi_14": pl.when(gain + loss != 0).then(100.0 * gain / (gain + loss)).otherwise(0.0),
        "bb_pos_20": _ratio_or_null(c - (pl.col("sma_20") - 2.0 * sd), 4.0 * sd),
        "range_pos_20": _ratio_or_null(c - pl.col("_lo20"), pl.col("_hi20") - pl.col("_lo20")),
        "macd": pl.col("_line"),
        "macd_hist": pl.col("_line") - signal,
        "vol_z_20": _ratio_or_null(pl.col("_vdev"), pl.col("_vsd")),
    }
    return {k: pl.when(pl.col("_i") >= _WARMUP[k]).then(e) if k in _WARMUP else e for k, e in out.items()}


def _check_bars(bars: pl.DataFrame) -> None:
    missing = [c for c in BARS_COLUMNS if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack columns {missing}; Bars have {list(BARS_COLUMNS)} (see DESIGN.md)")
    nulls = {c: n for c, n in bars.select(BARS_COLUMNS[1:]).null_count().row(0, named=True).items() if n}
    if nulls:
        raise ValueError(f"bars have nulls {nulls}; run validate_bars first, it names the dates")
    if "symbol" in bars.columns:
        firsts = bars["symbol"].rle().struct.field("value")  # one per contiguous block
        if firsts.n_unique() != firsts.len():
            raise ValueError("stacked bars must keep each symbol's rows together, in date order; "
                             "sort them by symbol then date")


@functools.cache
def _stages(by: str | None) -> tuple[list[pl.Expr], ...]:
    """The stages' expressions, built once per path rather than on every call."""
    return tuple([e.alias(k) for k, e in stage(by).items()]
                 for stage in (_stage1, _stage2, _stage3, _stage4, _stage5, _stage6))


def indicators(bars: pl.DataFrame) -> pl.DataFrame:
    """``date`` (after ``symbol``, if the frame has one) and the 25 ``INDICATOR_COLUMNS``."""
    _check_bars(bars)
    if "symbol" in bars.columns:
        by, keys = "_blk", ["symbol", "date"]
        lf = (bars.lazy().with_columns(_blk=pl.col("symbol").rle_id().set_sorted())
              .with_columns(_i=pl.int_range(pl.len()).over(by)))
    else:  # one symbol: no grouping at all
        by, keys = None, ["date"]
        lf = bars.lazy().with_columns(_i=pl.int_range(pl.len()))
    # on one symbol's few thousand rows the query's per-stage cost dominates
    lf = _with_range_20(lf) if by else lf.with_columns(
        _lo20=pl.col("low").rolling_min(20), _hi20=pl.col("high").rolling_max(20))
    for exprs in _stages(by):
        lf = lf.with_columns(exprs)
    # Polars 2 defaults to the streaming engine, slower on frames this small.
    return lf.select(*keys, *INDICATOR_COLUMNS).collect(engine="in-memory")


# ------------------------------------------------------------------ features


# Neutral values for the zero-width cases, which are null in ``indicators``:
# with sd = 0 every close in the window equals the mean, so the close sits in
# the middle of the (empty) band; likewise for an empty high-low range; a
# volume equal to its mean has z = 0; no volume traded means no flow.
_ZERO_WIDTH_FILL = {"bb_pos_20": 0.5, "range_pos_20": 0.5, "vol_z_20": 0.0, "obv_flow_20": 0.0}


#: Floor of the volatility features (a daily std of 0.01%): a stale feed has a
#: std of 0, whose log is -inf.
_VOL_FLOOR = 1e-4


def _log_vol(n: int) -> pl.Expr:
    """ln of the std (ddof 0) of the last n daily log returns."""
    return pl.col("log_ret_1").rolling_std(n, ddof=0).clip(lower_bound=_VOL_FLOOR).log()


def _log_range_vol(n: int) -> pl.Expr:
    """ln of Parkinson's (1980) daily volatility over the last n bars:
    sigma^2 = mean(ln(high / low)^2) / (4 ln 2); it reads the intraday range,
    so it is less noisy than the close-to-close std over the same days."""
    var = ((pl.col("high") / pl.col("low")).log() ** 2).rolling_mean(n) / (4.0 * math.log(2.0))
    return (var.sqrt().clip(lower_bound=_VOL_FLOOR)).log()


def _feature_exprs() -> dict[str, pl.Expr]:
    """Scale-free model inputs: ratios to close, returns, positions, z-scores,
    log volatilities (a scale is what the quantile head's spread multiplies)."""
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
        **{f"log_vol_{n}": _log_vol(n) for n in (5, 20, 50)},  # 50: the longest inside the warm-up
        "log_range_vol_20": _log_range_vol(20),
    }


FEATURE_COLUMNS: tuple[str, ...] = tuple(_feature_exprs())
#: The log volatilities: the inputs the quantile head's spread starts from
#: (``tasks.train.spread_init``).
VOLATILITY_COLUMNS: tuple[str, ...] = ("log_vol_5", "log_vol_20", "log_vol_50", "log_range_vol_20")
#: Features that read history of their own (not row-wise: computed per
#: symbol), with the first row they have a value at.
_READS_HISTORY = {"obv_flow_20": 20}
#: First rows of the features with rolling windows of their own (row-wise on
#: stacked symbols: a window reaching into the previous symbol only touches
#: these warm-up rows). log_vol_n: std of n log returns, which start at row 1.
_ROLLING_WARMUP = {"log_vol_5": 5, "log_vol_20": 20, "log_vol_50": 50, "log_range_vol_20": 19}
#: Leading rows ``build_features`` drops: the latest first row of any input,
#: from the indicator and feature definitions (sma_60 and ema_60: row 59).
WARMUP_ROWS = max(*_WARMUP.values(), *_READS_HISTORY.values(), *_ROLLING_WARMUP.values())


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

"""Data quality checks on Bars: ``validate_bars(bars, symbol, min_rows)``.

Validation judges, it never repairs: the input frame is not modified and no
row is dropped or filled here. Blocking failures raise ``DataQualityError``
naming the symbol, the check, the first offending dates/values and the fix;
warnings (stale closes, extreme moves) stay in the ``QualityReport`` that is
stored with the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import polars as pl

from tasks.bars import BARS_COLUMNS, PRICE_COLUMNS, schema_problems

_NUMERIC = BARS_COLUMNS[1:]  # all but date
_SHOW = 3  # offending rows quoted in a message

# The fix for each blocking check, appended to its error message.
_FIXES = {
    "columns": "load bars through tasks.sources.load_bars, which returns exactly date (Date) and "
    "open/high/low/close/volume (Float64)",
    "min_rows": "load a longer history (a larger --days, or an earlier --start) or use a smaller "
    "window / largest horizon",
    "no_nulls": "correct the source data (for yfinance, delete the cached SYMBOL.parquet to "
    "re-download) or choose --start/--end that exclude these dates",
    "finite": "correct the source data: +-inf usually comes from dividing by a zero Close when adjusting",
    "unique_dates": "remove the duplicated rows from the source (validation does not choose which one is right)",
    "sorted_dates": "sort the source by date (load_bars sorts files; a frame built elsewhere must be sorted too)",
    "positive_prices": "correct the source data: prices must be > 0 (check the Adj Close / Close ratio "
    "and missing values written as 0)",
    "non_negative_volume": "correct the source data: volume must be >= 0",
    "ohlc_consistent": "correct the source data: each bar needs low <= min(open, close) and "
    "max(open, close) <= high",
    "close_varies": "the close never changes, so there is nothing to forecast: check that the right "
    "column and symbol were loaded",
}


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    blocking: bool
    detail: str


@dataclass
class QualityReport:
    symbol: str
    checks: list[Check] = field(default_factory=list)

    @property
    def warnings(self) -> list[Check]:
        """Failed non-blocking checks."""
        return [c for c in self.checks if not c.passed and not c.blocking]

    @property
    def passed(self) -> bool:
        """True when no blocking check failed."""
        return all(c.passed for c in self.checks if c.blocking)

    def to_dict(self) -> dict:
        return {
            "symbol": self.symbol,
            "passed": self.passed,
            "warnings": [c.name for c in self.warnings],
            "checks": [asdict(c) for c in self.checks],
        }


class DataQualityError(ValueError):
    """A blocking check failed; ``report`` holds every check that ran."""

    def __init__(self, symbol: str, check: str, message: str, report: QualityReport) -> None:
        super().__init__(message)
        self.symbol = symbol
        self.check = check
        self.report = report

    def __reduce__(self) -> tuple:
        # Task runners pickle or copy exceptions; rebuild with all four arguments.
        return type(self), (self.symbol, self.check, str(self), self.report)


def validate_bars(
    bars: pl.DataFrame,
    symbol: str,
    min_rows: int,
    *,
    stale_run: int = 5,
    max_move: float = 0.25,
) -> QualityReport:
    """Run every check; raise on the first blocking failure, else return the report.

    ``min_rows`` is what the caller needs (window + largest horizon + the
    validation and test splits). ``stale_run``: a run of this many identical
    consecutive closes is a warning (a stale feed). ``max_move``: a one-day
    |close / previous close - 1| above this is a warning listing the dates
    (real crashes happen, so it does not block).
    """
    if min_rows < 1:
        raise ValueError(f"{symbol}: min_rows={min_rows}; need a positive number of rows")
    report = QualityReport(symbol)
    columns = _check_columns(bars)
    report.checks.append(columns)
    if columns.passed:
        # Later checks read the columns, so they only run on a well-formed frame.
        report.checks += [
            _check_rows(bars, min_rows),
            _check_nulls(bars),
            _check_finite(bars),
            _check_unique_dates(bars),
            _check_sorted_dates(bars),
            _check_positive(bars),
            _check_volume(bars),
            _check_ohlc(bars),
            _check_variance(bars),
            _check_stale(bars, stale_run),
            _check_moves(bars, max_move),
        ]
    for check in report.checks:
        if check.blocking and not check.passed:
            raise DataQualityError(
                symbol, check.name,
                f"{symbol}: data check {check.name!r} failed: {check.detail}. To fix: {_FIXES[check.name]}",
                report,
            )
    return report


def _ok(name: str, detail: str, blocking: bool = True) -> Check:
    return Check(name, True, blocking, detail)


def _fail(name: str, detail: str, blocking: bool = True) -> Check:
    return Check(name, False, blocking, detail)


def _rows(bars: pl.DataFrame, mask: pl.Expr, cols: tuple[str, ...]) -> tuple[int, str]:
    """How many rows match ``mask``, and the first few as 'date (col=value, ...)'."""
    hit = bars.with_row_index("_row").filter(mask.fill_null(False))
    shown = []
    for row in hit.head(_SHOW).iter_rows(named=True):
        when = row["date"] if row["date"] is not None else f"row {row['_row']}"
        shown.append(f"{when} (" + ", ".join(f"{c}={_fmt(row[c])}" for c in cols) + ")")
    more = f" and {hit.height - _SHOW} more" if hit.height > _SHOW else ""
    return hit.height, "; ".join(shown) + more


def _fmt(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _check_columns(bars: pl.DataFrame) -> Check:
    # The Bars schema is written once, in tasks.bars; this check reports it, load_bars raises on it.
    problems = schema_problems(bars)
    if problems:
        return _fail("columns", "; ".join(problems))
    return _ok("columns", "exactly date Date, open/high/low/close/volume Float64")


def _check_rows(bars: pl.DataFrame, min_rows: int) -> Check:
    if bars.height < min_rows:
        return _fail(
            "min_rows",
            f"{bars.height} rows, need at least {min_rows} (window + largest horizon + validation and test splits)",
        )
    return _ok("min_rows", f"{bars.height} rows >= {min_rows}")


def _check_nulls(bars: pl.DataFrame) -> Check:
    mask = pl.any_horizontal(
        pl.col("date").is_null(), *[pl.col(c).is_null() | pl.col(c).is_nan() for c in _NUMERIC]
    )
    n, first = _rows(bars, mask, BARS_COLUMNS)
    if n:
        return _fail("no_nulls", f"{n} rows with null/NaN: {first}")
    return _ok("no_nulls", "no null or NaN")


def _check_finite(bars: pl.DataFrame) -> Check:
    n, first = _rows(bars, pl.any_horizontal(pl.col(c).is_infinite() for c in _NUMERIC), _NUMERIC)
    if n:
        return _fail("finite", f"{n} rows with +-inf: {first}")
    return _ok("finite", "no +-inf")


def _check_unique_dates(bars: pl.DataFrame) -> Check:
    dup = bars.filter(pl.col("date").is_duplicated() & pl.col("date").is_not_null())
    if dup.height:
        days = dup["date"].unique(maintain_order=True)
        shown = ", ".join(str(d) for d in days.head(_SHOW))
        more = f" and {days.len() - _SHOW} more" if days.len() > _SHOW else ""
        return _fail("unique_dates", f"{days.len()} dates appear more than once: {shown}{more}")
    return _ok("unique_dates", "dates unique")


def _check_sorted_dates(bars: pl.DataFrame) -> Check:
    back = pl.col("date") < pl.col("date").shift(1)
    hit = bars.with_columns(prev=pl.col("date").shift(1)).filter(back.fill_null(False))
    if hit.height:
        shown = "; ".join(f"{r['date']} follows {r['prev']}" for r in hit.head(_SHOW).iter_rows(named=True))
        return _fail("sorted_dates", f"dates go backwards {hit.height} times: {shown}")
    return _ok("sorted_dates", "dates increasing")


def _check_positive(bars: pl.DataFrame) -> Check:
    n, first = _rows(bars, pl.any_horizontal(pl.col(c) <= 0 for c in PRICE_COLUMNS), PRICE_COLUMNS)
    if n:
        return _fail("positive_prices", f"{n} rows with a price <= 0: {first}")
    return _ok("positive_prices", "all prices > 0")


def _check_volume(bars: pl.DataFrame) -> Check:
    n, first = _rows(bars, pl.col("volume") < 0, ("volume",))
    if n:
        return _fail("non_negative_volume", f"{n} rows with negative volume: {first}")
    return _ok("non_negative_volume", "volume >= 0")


def _check_ohlc(bars: pl.DataFrame) -> Check:
    o, h, lo, c = (pl.col(x) for x in PRICE_COLUMNS)
    bad = (h < pl.max_horizontal(o, c)) | (lo > pl.min_horizontal(o, c))
    n, first = _rows(bars, bad, PRICE_COLUMNS)
    if n:
        return _fail("ohlc_consistent", f"{n} rows with high < max(open, close) or low > min(open, close): {first}")
    return _ok("ohlc_consistent", "low <= min(open, close) and max(open, close) <= high")


def _check_variance(bars: pl.DataFrame) -> Check:
    lo, hi = bars["close"].min(), bars["close"].max()
    if bars.height > 1 and lo == hi:
        return _fail("close_varies", f"close is {_fmt(lo)} on all {bars.height} rows (zero variance)")
    return _ok("close_varies", f"close ranges {_fmt(lo)} to {_fmt(hi)}")


def _check_stale(bars: pl.DataFrame, stale_run: int) -> Check:
    runs = (
        bars.with_columns(run=pl.col("close").rle_id())
        .group_by("run", maintain_order=True)
        .agg(pl.len().alias("n"), pl.col("date").first().alias("from"),
             pl.col("date").last().alias("to"), pl.col("close").first())
        .filter(pl.col("n") >= stale_run)
    )
    if runs.height:
        longest = runs.sort("n", descending=True, maintain_order=True).head(_SHOW)
        shown = "; ".join(
            f"{r['n']} days at {_fmt(r['close'])} from {r['from']} to {r['to']}"
            for r in longest.iter_rows(named=True)
        )
        detail = f"{runs.height} runs of >= {stale_run} identical closes (stale feed?): {shown}"
        return _fail("stale_closes", detail, blocking=False)
    return _ok("stale_closes", f"no run of {stale_run} identical closes", blocking=False)


def _check_moves(bars: pl.DataFrame, max_move: float) -> Check:
    move = pl.col("close") / pl.col("close").shift(1) - 1
    hit = bars.with_columns(move=move).filter(move.abs().fill_null(0) > max_move)
    if hit.height:
        shown = ", ".join(f"{r['date']} {r['move']:+.1%}" for r in hit.head(10).iter_rows(named=True))
        more = f" and {hit.height - 10} more" if hit.height > 10 else ""
        return _fail(
            "extreme_moves",
            f"{hit.height} one-day close moves beyond +-{max_move:.0%} (unadjusted split?): {shown}{more}",
            blocking=False,
        )
    return _ok("extreme_moves", f"no one-day close move beyond +-{max_move:.0%}", blocking=False)

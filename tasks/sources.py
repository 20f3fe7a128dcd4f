"""Where bars come from: ``load_bars(symbol, source, ...)`` -> Bars.

Bars (shared/DESIGN.md): a Polars frame with ``date`` (pl.Date, strictly
increasing, unique) and ``open high low close volume`` (pl.Float64), prices
split- and dividend-adjusted. Sources:

- ``sample``: real daily bars of AAPL, GOOG, IBM, MSFT (Quandl WIKI, public
  domain) shipped in ``tasks/data/`` so the quickstart runs offline.
- ``synthetic``: a deterministic market simulator for any symbol name.
- ``yfinance``: live data with an incremental Parquet cache per symbol.
- ``files:DIR``: the user's own ``DIR/SYMBOL.csv`` or ``DIR/SYMBOL.parquet``.

Start and end are inclusive dates; ``days`` then keeps the last N rows. The
sources return the data as they found it (ordering and adjustment aside);
judging it is ``tasks.validate.validate_bars``'s job, so a duplicate date in a
user's file reaches validation and is reported there, never dropped here.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from tasks.atomic import atomic_write

if TYPE_CHECKING:
    import pandas as pd

SAMPLE_SYMBOLS = ("AAPL", "GOOG", "IBM", "MSFT")
SAMPLE_PATH = Path(__file__).parent / "data" / "sample_bars.parquet"
PRICE_COLUMNS = ("open", "high", "low", "close")
BARS_COLUMNS = ("date", *PRICE_COLUMNS, "volume")
BARS_SCHEMA = {"date": pl.Date, **{c: pl.Float64 for c in (*PRICE_COLUMNS, "volume")}}
DEFAULT_CACHE_DIR = Path("results/cache/yfinance")
# The simulator's calendar is fixed so a (symbol, seed) gives the same bars on
# any day; weekdays only, no exchange holidays.
SYNTHETIC_START = date(2005, 1, 3)
SYNTHETIC_END = date(2024, 12, 31)
# yfinance turns a missing start into "one month before end"; ask for all.
_YF_EARLIEST = date(1900, 1, 1)

_SYMBOL_RE = re.compile(r"[A-Za-z0-9^][A-Za-z0-9.\-^=]{0,19}")
_SYMBOL_RULE = (
    "1-20 characters from letters, digits, '.', '-', '^', '=', "
    "starting with a letter, digit or '^' (e.g. AAPL, BRK-B, ^GSPC, EURUSD=X)"
)


class SourceError(ValueError):
    """Bars could not be loaded: names the symbol, source, what failed and the fix.

    ``retryable`` is True only when retrying later may help (the network
    failed or Yahoo rate-limited us), not when the symbol or a file is wrong.
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable

    def __reduce__(self) -> tuple:
        # Keep ``retryable`` when a task runner pickles or copies the exception.
        return type(self), (str(self), self.retryable)


def validate_symbol(symbol: str) -> str:
    """Return the canonical (upper-case) symbol, or raise ValueError.

    Called before a symbol becomes part of any path: the rule admits no '/',
    and no leading '.', so '../x' or '..' can never name a file outside the
    intended folder.
    """
    if not isinstance(symbol, str) or _SYMBOL_RE.fullmatch(symbol) is None:
        raise ValueError(f"invalid symbol {symbol!r}: a symbol is {_SYMBOL_RULE}")
    return symbol.upper()


def load_bars(
    symbol: str,
    source: str,
    start: date | None = None,
    end: date | None = None,
    days: int | None = None,
    cache_dir: Path | None = None,
    seed: int = 0,
) -> pl.DataFrame:
    """Bars for ``symbol`` from ``source``, dates in [start, end], last ``days`` rows.

    ``end=None`` means "as of today": for yfinance, through today's date (a
    bar for today may be partial if the market is open; the next incremental
    fetch replaces it); the other sources have fixed histories, so it means
    "to their last bar". ``seed`` only affects ``synthetic``; ``cache_dir``
    only ``yfinance`` (default ``results/cache/yfinance``).
    """
    symbol = validate_symbol(symbol)
    if start is not None and end is not None and start > end:
        raise ValueError(f"{symbol}: start {start} is after end {end}; swap them")
    if days is not None and days < 1:
        raise ValueError(f"{symbol}: days={days}; use a positive number of rows")
    if source == "sample":
        bars = _load_sample(symbol)
    elif source == "synthetic":
        bars = synthetic_bars(symbol, seed)
    elif source == "yfinance":
        bars = _load_yfinance(symbol, start, end, cache_dir or DEFAULT_CACHE_DIR)
    elif (directory := files_dir(source)) is not None:
        bars = _load_files(symbol, directory)
    else:
        raise SourceError(
            f"{symbol}: unknown source {source!r}; use sample, synthetic, yfinance or files:DIR"
        )
    return _select(bars, symbol, source, start, end, days)


def check_source(source: str) -> str:
    """``source`` if it names a known source, else SourceError listing them."""
    if source in ("sample", "synthetic", "yfinance") or files_dir(source) is not None:
        return source
    raise SourceError(f"unknown source {source!r}; use sample, synthetic, yfinance or files:DIR")


def files_dir(source: str) -> Path | None:
    """The directory of a ``files:DIR`` source, with ``~`` expanded; None for any other source."""
    if source.startswith("files:") and len(source) > len("files:"):
        return Path(source[len("files:"):]).expanduser()
    return None


def _select(
    bars: pl.DataFrame, symbol: str, source: str, start: date | None, end: date | None, days: int | None
) -> pl.DataFrame:
    full = bars
    if start is not None:
        bars = bars.filter(pl.col("date") >= start)
    if end is not None:
        bars = bars.filter(pl.col("date") <= end)
    if days is not None:
        bars = bars.tail(days)
    if bars.height == 0:
        have = f"{full['date'].min()} to {full['date'].max()}" if full.height else "no rows"
        raise SourceError(
            f"{symbol}: no bars from source {source!r} between {start or 'the start'} and "
            f"{end or 'the end'}; the source has {have}. Choose --start/--end inside that range"
        )
    return bars


def bars_fingerprint(bars: pl.DataFrame) -> str:
    """sha256 hex digest of the Bars values (date and OHLCV, nulls included).

    Stable across machines and runs (little-endian bytes in a fixed column
    order); any changed value, row or null changes it. Extra columns and
    column order do not matter. Used as a cache key and stored with models.
    """
    digest = hashlib.sha256(f"bars-v1 rows={bars.height};".encode())
    for name in BARS_COLUMNS:
        col = bars.get_column(name).cast(BARS_SCHEMA[name], strict=True)
        if name == "date":
            values = col.to_physical().fill_null(0).to_numpy().astype("<i4")
        else:
            values = col.fill_null(0.0).to_numpy().astype("<f8")
        digest.update(name.encode())
        digest.update(values.tobytes())
        digest.update(col.is_null().to_numpy().astype(np.uint8).tobytes())
    return digest.hexdigest()


def apply_adjustment(frame: pl.DataFrame) -> pl.DataFrame:
    """Adjust OHLCV by ``adj_close / close`` and drop ``adj_close``.

    Prices are multiplied by the ratio and volume divided by it, so that
    price x volume (turnover) is unchanged: after a 2:1 split the earlier
    prices halve and the earlier volumes double. A frame without ``adj_close``
    is returned as it is. A null ratio gives null values, left for validation.
    """
    if "adj_close" not in frame.columns:
        return frame
    ratio = pl.col("adj_close") / pl.col("close")
    return frame.with_columns(
        *[pl.col(c) * ratio for c in PRICE_COLUMNS], pl.col("volume") / ratio
    ).drop("adj_close")


# --- sample -----------------------------------------------------------------


@cache
def _sample_table() -> pl.DataFrame:
    """The shipped sample file, read once per process rather than on every
    sample load. Never returned as it is: ``_load_sample`` hands out a new
    frame (filtered, selected, cast), so a caller that writes into its bars
    cannot change what the next caller gets."""
    return pl.read_parquet(SAMPLE_PATH)


def _load_sample(symbol: str) -> pl.DataFrame:
    if symbol not in SAMPLE_SYMBOLS:
        raise SourceError(
            f"{symbol}: not in the shipped sample data ({', '.join(SAMPLE_SYMBOLS)}); "
            "use one of these, --source synthetic (any name) or --source yfinance"
        )
    frame = _sample_table().filter(pl.col("symbol") == symbol)
    return frame.select(BARS_COLUMNS).cast(BARS_SCHEMA)


# --- synthetic ----------------------------------------------------------------


@cache
def _synthetic_calendar() -> np.ndarray:
    days = np.arange(SYNTHETIC_START, SYNTHETIC_END + timedelta(days=1), dtype="datetime64[D]")
    days = days[np.is_busday(days)]
    days.flags.writeable = False
    return days


def _garch_variance_ref(a: np.ndarray, omega: float, var0: float) -> np.ndarray:
    """Slow reference: var[0] = var0, var[t] = omega + a[t-1] * var[t-1]."""
    var = np.empty_like(a)
    var[0] = var0
    for t in range(1, len(a)):
        var[t] = omega + a[t - 1] * var[t - 1]
    return var


def _garch_variance(a: np.ndarray, omega: float, var0: float, chunk: int = 256) -> np.ndarray:
    """Vectorised ``_garch_variance_ref`` (the GARCH(1,1) recursion, a = alpha z^2 + beta).

    Within a chunk starting at s with var[s] = v and L_k = sum(log a[s..s+k-1]):
    var[s+k] = exp(L_k) v + omega * sum_{j=1..k} exp(L_k - L_j). Chunks keep
    exp(+-L) far from overflow whatever the persistence.
    """
    var = np.empty_like(a)
    v = var0
    for s in range(0, len(a), chunk):
        la = np.log(a[s : s + chunk])
        L = np.concatenate(([0.0], np.cumsum(la[:-1])))  # L[k], k = 0..m-1
        inner = np.cumsum(np.exp(-L)) - 1.0  # sum_{j=1..k} exp(-L_j); exp(-L_0) = 1
        var[s : s + chunk] = np.exp(L) * (v + omega * inner)
        v = omega + a[s + len(la) - 1] * var[s + len(la) - 1]
    return var


def _rng(symbol: str, seed: int) -> np.random.Generator:
    # sha256, not hash(): Python's str hash changes between processes.
    key = hashlib.sha256(f"{symbol}|{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(key[:16], "little"))


def synthetic_bars(symbol: str, seed: int = 0) -> pl.DataFrame:
    """Deterministic simulated Bars for (symbol, seed) on the fixed calendar.

    Daily log return r = mu - var/2 + sqrt(var) z + jump, with var from a
    GARCH(1,1) (volatility clustering), z a unit-variance Student-t (fat
    tails) and rare normal jumps (about one a year) that land in the overnight
    gap. open = previous close x exp(gap); high and low extend max/min(open,
    close) by exponential draws scaled with the day's volatility, so low <=
    min(open, close) and max(open, close) <= high hold exactly. Volume rises
    with |r| / long-run volatility. Parameters are drawn per symbol, so each
    name has its own character.
    """
    symbol = validate_symbol(symbol)
    rng = _rng(symbol, seed)
    dates = _synthetic_calendar()
    n = len(dates)
    vol = rng.uniform(0.010, 0.025)  # long-run daily volatility
    alpha = rng.uniform(0.04, 0.10)
    beta = rng.uniform(0.95, 0.985) - alpha  # persistence alpha + beta in [0.95, 0.985)
    omega = vol**2 * (1.0 - alpha - beta)
    nu = rng.uniform(3.5, 6.0)  # Student-t degrees of freedom
    mu = rng.uniform(-0.02, 0.15) / 252
    price0 = rng.uniform(10.0, 200.0)
    volume0 = rng.uniform(1e5, 5e7)

    z = np.clip(rng.standard_t(nu, n) * np.sqrt((nu - 2.0) / nu), -10.0, 10.0)
    var = _garch_variance(alpha * z**2 + beta, omega, vol**2)
    sigma = np.minimum(np.sqrt(var), 0.08)
    jump = (rng.random(n) < 1.0 / 250) * rng.normal(-0.01, 0.06, n)
    r = mu - 0.5 * sigma**2 + sigma * z + jump
    gap = 0.3 * sigma * rng.standard_normal(n) + jump

    close = price0 * np.exp(np.cumsum(r))
    prev_close = np.concatenate(([price0], close[:-1]))
    open_ = prev_close * np.exp(gap)
    high = np.maximum(open_, close) * np.exp(0.5 * sigma * rng.exponential(1.0, n))
    low = np.minimum(open_, close) * np.exp(-0.5 * sigma * rng.exponential(1.0, n))
    volume = np.round(volume0 * (1.0 + np.abs(r) / vol) * np.exp(0.4 * rng.standard_normal(n)))
    return pl.DataFrame(
        {"date": dates, "open": open_, "high": high, "low": low, "close": close, "volume": volume},
        schema=BARS_SCHEMA,
    )


# --- files:DIR ----------------------------------------------------------------

def _canonical(name: str) -> str:
    """'Adj Close', 'adj_close', 'AdjClose' -> 'adj_close'; 'Date' -> 'date'."""
    key = re.sub(r"[\s\-_]+", "_", name.strip().lower())
    return "adj_close" if key.replace("_", "") == "adjclose" else key


def find_file(symbol: str, directory: Path) -> Path:
    """The one ``DIR/SYMBOL.csv`` or ``DIR/SYMBOL.parquet`` (names matched case-insensitively)."""
    symbol = validate_symbol(symbol)
    where = f"files:{directory}"
    if not directory.is_dir():
        raise SourceError(f"{symbol}: source {where}: directory {directory} does not exist; fix the path")
    found = sorted(
        p for p in directory.iterdir()
        if p.stem.upper() == symbol and p.suffix.lower() in (".csv", ".parquet") and p.is_file()
    )
    if not found:
        raise SourceError(
            f"{symbol}: source {where}: no {symbol}.csv or {symbol}.parquet in {directory}; "
            "add the file (columns Date, Open, High, Low, Close, Volume, optional Adj Close)"
        )
    if len(found) > 1:
        raise SourceError(
            f"{symbol}: source {where}: several files match: {', '.join(p.name for p in found)}; keep one"
        )
    return found[0]


def _load_files(symbol: str, directory: Path) -> pl.DataFrame:
    path = find_file(symbol, directory)
    try:
        if path.suffix.lower() == ".csv":
            raw = pl.read_csv(path, infer_schema=False, null_values=["null", "NaN", "nan", "NA", ""])
        else:
            raw = pl.read_parquet(path)
    except pl.exceptions.PolarsError as exc:
        raise SourceError(f"{symbol}: cannot read {path}: {exc}; fix or replace the file") from exc
    return _bars_from_table(raw, symbol, str(path))


def _bars_from_table(raw: pl.DataFrame, symbol: str, where: str) -> pl.DataFrame:
    """Columns matched case-insensitively, typed, adjusted, sorted by date."""
    names = [_canonical(c) for c in raw.columns]
    used = (*BARS_COLUMNS, "adj_close")
    dup = sorted({n for n in names if n in used and names.count(n) > 1})
    if dup:
        raise SourceError(f"{symbol}: {where}: columns {dup} appear more than once (case-insensitively); keep one")
    frame = raw.rename(dict(zip(raw.columns, names)))
    missing = [c for c in BARS_COLUMNS if c not in frame.columns]
    if missing:
        raise SourceError(
            f"{symbol}: {where}: missing column(s) {missing} (found {raw.columns}); "
            "a bars file needs Date, Open, High, Low, Close, Volume (Adj Close optional)"
        )
    keep = [*BARS_COLUMNS, *(["adj_close"] if "adj_close" in frame.columns else [])]
    frame = frame.select(keep)
    frame = frame.with_columns(_to_date(frame.get_column("date"), symbol, where))
    for name in keep[1:]:
        frame = frame.with_columns(_to_float(frame.get_column(name), symbol, where))
    return apply_adjustment(frame).sort("date", maintain_order=True)


def _to_date(col: pl.Series, symbol: str, where: str) -> pl.Series:
    if col.dtype == pl.Date:
        return col
    if isinstance(col.dtype, pl.Datetime):
        return col.dt.date()  # the local date of a tz-aware stamp
    # "2024-01-02", or "2024-01-02 00:00:00-05:00" as pandas writes tz-aware daily bars
    out = col.cast(pl.String).str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
    _raise_unconverted(col, out, symbol, where, "a date YYYY-MM-DD")
    return out


def _to_float(col: pl.Series, symbol: str, where: str) -> pl.Series:
    out = col.cast(pl.Float64, strict=False)
    _raise_unconverted(col, out, symbol, where, "a number")
    return out


def _raise_unconverted(before: pl.Series, after: pl.Series, symbol: str, where: str, want: str) -> None:
    lost = after.is_null() & before.is_not_null()
    if lost.any():
        row = int(lost.arg_true()[0])
        raise SourceError(
            f"{symbol}: {where}: column {before.name!r} row {row}: {before[row]!r} is not {want}; fix the file"
        )


# --- yfinance -------------------------------------------------------------------

# Markers in the failure lines yfinance logs instead of raising. The network
# ones come from curl/requests (a real offline call logs "DNSError('Failed to
# perform, curl: (6) Could not resolve host: ...')"); the symbol ones from
# yfinance's YFTickerMissingError family.
_NETWORK_MARKERS = (
    "could not resolve host", "dnserror", "connectionerror", "connection refused",
    "timeout", "timed out", "failed to perform", "curl: (", "sslerror", "proxyerror",
    "network is unreachable", "max retries exceeded",
)
_RATE_LIMIT_MARKERS = ("too many requests", "rate limit", "yfratelimiterror")
_SYMBOL_MARKERS = ("possibly delisted", "no timezone found", "no price data found",
                   "quote not found", "yftickermissingerror", "yfpricesmissingerror", "yftzmissingerror")


class _ErrorLines(logging.Handler):
    """Collects the ERROR lines the yfinance logger emits in one thread."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(record.getMessage().strip())


def _download(ticker: str, start: date, end: date) -> pd.DataFrame:
    """The one call into yfinance: daily auto-adjusted bars for [start, end).

    yfinance logs download failures rather than raising them and returns an
    empty frame; the lines it logged during this call are attached as
    ``frame.attrs["yfinance_errors"]`` so the caller can tell a network
    failure from an unknown symbol. Tests replace this function.
    """
    import pandas as pd
    import yfinance as yf

    lines = _ErrorLines()
    logger = logging.getLogger("yfinance")
    logger.addHandler(lines)
    try:
        frame = yf.download(
            ticker, start=start, end=end, auto_adjust=True, actions=False, progress=False,
            threads=False, multi_level_index=True, timeout=30,
        )
    finally:
        logger.removeHandler(lines)
    frame = pd.DataFrame() if frame is None else frame
    frame.attrs["yfinance_errors"] = [line for line in lines.lines if line]
    return frame


def _from_yfinance(frame: pd.DataFrame, symbol: str) -> pl.DataFrame:
    """Bars from a ``yf.download`` frame, in any of the shapes it returns.

    Columns may be (Price, Ticker), (Ticker, Price) or flat; the index may be
    tz-aware (its local date is kept: converting midnight Tokyo to UTC would
    move the bar to the previous day) or naive. Rows with no price at all
    (yfinance's padding when it aligns tickers, or keepna) are dropped; rows
    with some prices missing are kept, for validation to report.
    """
    import pandas as pd

    columns = frame.columns
    if frame.shape[1] == 0 or frame.shape[0] == 0:
        return pl.DataFrame(schema=BARS_SCHEMA)
    if getattr(columns, "nlevels", 1) == 2:
        levels = [{str(v).lower() for v in columns.get_level_values(i)} for i in (0, 1)]
        price_level = 0 if "close" in levels[0] else 1
        tickers = sorted({str(v) for v in columns.get_level_values(1 - price_level)})
        pick = symbol if symbol in tickers else (tickers[0] if len(tickers) == 1 else None)
        if pick is None:
            raise SourceError(
                f"{symbol}: yfinance frame holds tickers {tickers}, not {symbol}; download one symbol at a time"
            )
        frame = frame.xs(pick, axis=1, level=1 - price_level)
    data = {_canonical(str(c)): frame[c].to_numpy(dtype="float64", na_value=np.nan) for c in frame.columns}
    missing = [c for c in BARS_COLUMNS[1:] if c not in data]
    if missing:
        raise SourceError(f"{symbol}: yfinance frame lacks column(s) {missing} (has {list(frame.columns)})")
    index = frame.index
    if not isinstance(index, pd.DatetimeIndex):
        raise SourceError(f"{symbol}: yfinance frame has a {type(index).__name__}, expected a DatetimeIndex of days")
    if index.tz is not None:
        index = index.tz_localize(None)  # keep the exchange-local wall time
    dates = np.asarray(index.normalize().to_numpy(), dtype="datetime64[D]")
    keep = [c for c in (*BARS_COLUMNS[1:], "adj_close") if c in data]
    bars = pl.DataFrame({"date": dates, **{c: data[c] for c in keep}}, nan_to_null=False)
    bars = bars.filter(~pl.all_horizontal(pl.col(c).is_nan() for c in PRICE_COLUMNS))
    return apply_adjustment(bars).cast(BARS_SCHEMA).sort("date", maintain_order=True)


def _failure(symbol: str, start: date, end: date, why: str, lines: list[str]) -> SourceError:
    text = " ".join(lines).lower()
    span = f"{start} to {end - timedelta(days=1)}"
    told = "; ".join(line for line in lines if not re.fullmatch(r"\d+ Failed downloads?:", line))
    said = f" (yfinance: {told[:400]}{'...' if len(told) > 400 else ''})" if told else ""
    if why == "network" or any(m in text for m in _NETWORK_MARKERS):
        return SourceError(
            f"{symbol}: source yfinance: download of {span} failed: the network is the problem, not the "
            f"symbol{said}. Check the internet connection or proxy and retry, or work offline with "
            "--source sample, --source files:DIR, or an end date the cache already covers",
            retryable=True,
        )
    if any(m in text for m in _RATE_LIMIT_MARKERS):
        return SourceError(
            f"{symbol}: source yfinance: Yahoo rate-limited the download of {span}{said}. "
            "Wait a few minutes and retry, with fewer symbols in parallel",
            retryable=True,
        )
    if not lines or any(m in text for m in _SYMBOL_MARKERS):
        return SourceError(
            f"{symbol}: source yfinance: no bars for {span}: the symbol is the problem (unknown to "
            f"Yahoo, delisted, or no trading in that range){said}. Check the spelling on "
            "finance.yahoo.com (e.g. BRK-B, ^GSPC, EURUSD=X) or widen --start/--end"
        )
    return SourceError(
        f"{symbol}: source yfinance: no bars for {span}, with a failure that names neither the "
        f"network nor the symbol{said}. Retry later; if it persists, check the symbol on "
        "finance.yahoo.com and whether this yfinance version still works with Yahoo",
        retryable=True,
    )


def _fetch(symbol: str, start: date, end: date) -> pl.DataFrame:
    try:
        frame = _download(symbol, start, end)
    # requests' and curl_cffi's exceptions (and socket timeouts) all derive from OSError.
    except OSError as exc:
        raise _failure(symbol, start, end, "network", [repr(exc)]) from exc
    bars = _from_yfinance(frame, symbol)
    if bars.height == 0:
        raise _failure(symbol, start, end, "empty", list(frame.attrs.get("yfinance_errors", [])))
    return bars


_COVER_START, _COVER_END = "mambaflow.covered_start", "mambaflow.covered_end"


def _read_cache(path: Path) -> tuple[pl.DataFrame, date | None, date] | None:
    """(bars, covered start or None for "from the earliest", covered end exclusive)."""
    if not path.exists():
        return None
    try:
        meta = pl.read_parquet_metadata(path)
        bars = pl.read_parquet(path)
    except pl.exceptions.PolarsError as exc:
        raise SourceError(f"cannot read the yfinance cache {path}: {exc}; delete the file to re-download") from exc
    if _COVER_END not in meta or bars.height == 0:
        raise SourceError(f"the yfinance cache {path} has no coverage record; delete the file to re-download")
    start = date.fromisoformat(meta[_COVER_START]) if meta.get(_COVER_START) else None
    return bars.cast(BARS_SCHEMA), start, date.fromisoformat(meta[_COVER_END])


def _write_cache(path: Path, bars: pl.DataFrame, start: date | None, end: date) -> None:
    # Atomic: a crash leaves the previous cache whole, never half a file or a temporary one.
    meta = {_COVER_START: start.isoformat() if start else "", _COVER_END: end.isoformat()}
    atomic_write(path, lambda tmp: bars.write_parquet(tmp, metadata=meta))


def _plan(
    cached: tuple[pl.DataFrame, date | None, date] | None, start: date | None, end: date
) -> tuple[str, date | None, date]:
    """What to download for [start, end): ("none" | "append" | "full", from, to)."""
    if cached is None:
        return "full", start, end
    bars, have_start, have_end = cached
    earlier = have_start is not None and (start is None or start < have_start)
    if earlier:
        return "full", start, max(end, have_end)
    if end <= have_end:
        return "none", have_start, have_end
    # From the last cached bar, not the day after: it may have been a partial
    # bar of a trading day, and it is the overlap that detects re-adjustment.
    return "append", bars["date"].max(), end


def _today() -> date:
    """The "as of" date of a yfinance load (the local calendar date); tests pin it."""
    return date.today()


def _load_yfinance(symbol: str, start: date | None, end: date | None, cache_dir: Path) -> pl.DataFrame:
    """Cached yfinance bars. Adjusted prices change retroactively after a split
    or dividend, so an append re-downloads the last cached day too; if that
    day's open differs from the cached one the whole history is re-fetched
    rather than gluing two adjustment bases together."""
    today = _today()
    # Exclusive end, as yfinance takes it; never past tomorrow, or a request for
    # a future end would mark days as covered before they exist.
    fetch_end = min((end or today) + timedelta(days=1), today + timedelta(days=1))
    path = cache_dir / f"{symbol}.parquet"
    cached = _read_cache(path)
    mode, frm, to = _plan(cached, start, fetch_end)
    if mode == "none":
        return cached[0]
    if mode == "append":
        old, have_start, _ = cached
        new = _fetch(symbol, frm, to)
        if _same_day(old, new, frm):
            bars = pl.concat([old.filter(pl.col("date") < frm), new])
            _write_cache(path, bars, have_start, to)
            return bars
        frm = have_start  # re-adjusted: fetch the whole cached range again
    bars = _fetch(symbol, frm or _YF_EARLIEST, to)
    _write_cache(path, bars, frm, to)
    return bars


def _same_day(old: pl.DataFrame, new: pl.DataFrame, day: date) -> bool:
    """Does the re-downloaded ``day`` match the cached one (same adjustment basis)?
    The open is compared, not the close: a partial bar's close moves during
    the day, its open does not, while any re-adjustment rescales both."""
    a = old.filter(pl.col("date") == day)["open"]
    b = new.filter(pl.col("date") == day)["open"]
    return a.len() == 1 and b.len() == 1 and bool(np.isclose(a[0], b[0], rtol=1e-6, atol=0.0))

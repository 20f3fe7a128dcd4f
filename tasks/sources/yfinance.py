"""``yfinance``: live daily bars from Yahoo, with an incremental Parquet cache
per symbol and failures sorted into "the network" (retryable) and "the symbol".

The one call into the ``yfinance`` package is ``_download``; tests replace it
with frames shaped as yfinance returns them, so no test touches the network.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from tasks.atomic import atomic_write
from tasks.bars import BARS_COLUMNS, BARS_SCHEMA, PRICE_COLUMNS, apply_adjustment, canonical_column
from tasks.sources._base import Request, SourceError

if TYPE_CHECKING:
    import pandas as pd

SOURCE = "yfinance"
DEFAULT_CACHE_DIR = Path("results/cache/yfinance")
# yfinance turns a missing start into "one month before end"; ask for all.
_YF_EARLIEST = date(1900, 1, 1)


def load(request: Request) -> pl.DataFrame:
    """``end=None`` means "as of today": through today's date (a bar for today
    may be partial if the market is open; the next incremental fetch replaces it)."""
    return _load_yfinance(request.symbol, request.start, request.end, request.cache_dir or DEFAULT_CACHE_DIR)


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
    data = {canonical_column(str(c)): frame[c].to_numpy(dtype="float64", na_value=np.nan) for c in frame.columns}
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

"""tasks.sources.yfinance: frames shaped as yfinance returns them, failures, the cache (no network)."""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

import tasks.sources.yfinance as yfs
from tasks.bars import BARS_SCHEMA
from tasks.sources import SourceError, load_bars
from tasks.validate import DataQualityError, validate_bars

# Frames shaped as yfinance 1.7 returns them (checked against its multi.py and
# a real offline call): columns MultiIndex (Price, Ticker) sorted by price name,
# a DatetimeIndex named Date, naive for daily bars (ignore_tz) or tz-aware.

PRICE_NAMES = ["Close", "High", "Low", "Open", "Volume"]


def yf_frame(ticker: str, days: list[date], tz: str | None = None, scale: float = 1.0) -> pd.DataFrame:
    """A yf.download(ticker, auto_adjust=True) frame with deterministic prices."""
    base = np.array([(d - date(2024, 1, 1)).days for d in days], dtype=float)
    close = (100.0 + base) * scale
    values = {"Close": close, "High": close + 2 * scale, "Low": close - 2 * scale,
              "Open": close - scale, "Volume": 1e6 + base}
    index = pd.DatetimeIndex(pd.to_datetime(days), name="Date")
    if tz:
        index = index.tz_localize(tz)
    columns = pd.MultiIndex.from_product([PRICE_NAMES, [ticker]], names=["Price", "Ticker"])
    return pd.DataFrame(np.column_stack([values[p] for p in PRICE_NAMES]), index=index, columns=columns)


def yf_empty(ticker: str, lines: list[str]) -> pd.DataFrame:
    """What yf.download returns when the download failed: no rows, the columns of
    yfinance's empty_df (with Adj Close), and the lines it logged."""
    cols = ["Adj Close", "Close", "High", "Low", "Open", "Volume"]
    frame = pd.DataFrame(
        columns=pd.MultiIndex.from_product([cols, [ticker]], names=["Price", "Ticker"]),
        index=pd.DatetimeIndex([], dtype="datetime64[s]"),
    )
    frame.attrs["yfinance_errors"] = lines
    return frame


DNS_LINES = [  # logged by a real yf.download("AAPL", ...) without network (yfinance 1.7.0)
    "1 Failed download:",
    "['AAPL']: DNSError('Failed to perform, curl: (6) Could not resolve host: query2.finance.yahoo.com. "
    "See https://curl.se/libcurl/c/libcurl-errors.html first for more details.')",
]
UNKNOWN_LINES = ["1 Failed download:", "['NOSUCHX']: possibly delisted; no timezone found"]


def business_days(start: date, end: date) -> list[date]:
    """Weekdays in [start, end)."""
    return [start + timedelta(days=i) for i in range((end - start).days)
            if (start + timedelta(days=i)).weekday() < 5]


class FakeYahoo:
    """Stands in for ``tasks.sources.yfinance._download``: serves a market and counts calls."""

    def __init__(self, scale: float = 1.0) -> None:
        self.calls: list[tuple[str, date, date]] = []
        self.scale = scale

    def __call__(self, ticker: str, start: date, end: date) -> pd.DataFrame:
        self.calls.append((ticker, start, end))
        return yf_frame(ticker, business_days(start, end), scale=self.scale)


def expected_bars(start: date, end_inclusive: date, scale: float = 1.0) -> pl.DataFrame:
    return yfs._from_yfinance(yf_frame("T", business_days(start, end_inclusive + timedelta(days=1)), scale=scale), "T")


@pytest.fixture
def yahoo(monkeypatch: pytest.MonkeyPatch) -> FakeYahoo:
    fake = FakeYahoo()
    monkeypatch.setattr(yfs, "_download", fake)
    monkeypatch.setattr(yfs, "_today", lambda: date(2024, 6, 28))
    return fake


def test_from_yfinance_multiindex_values_and_dtypes() -> None:
    days = [date(2024, 1, 2), date(2024, 1, 3)]
    bars = yfs._from_yfinance(yf_frame("AAPL", days), "AAPL")
    assert bars.equals(pl.DataFrame(
        {"date": days, "open": [100.0, 101.0], "high": [103.0, 104.0], "low": [99.0, 100.0],
         "close": [101.0, 102.0], "volume": [1e6 + 1, 1e6 + 2]}, schema=BARS_SCHEMA))


@pytest.mark.parametrize("tz", ["America/New_York", "Asia/Tokyo", "Europe/London"])
def test_from_yfinance_tz_aware_index_keeps_local_dates(tz: str) -> None:
    days = [date(2024, 3, 8), date(2024, 3, 11)]  # around the US DST change
    bars = yfs._from_yfinance(yf_frame("X", days, tz=tz), "X")
    assert bars["date"].to_list() == days


def test_from_yfinance_other_shapes_agree() -> None:
    days = [date(2024, 1, 2), date(2024, 1, 3)]
    multi = yf_frame("MSFT", days)
    want = yfs._from_yfinance(multi, "MSFT")
    by_ticker = multi.swaplevel(0, 1, axis=1)  # group_by="ticker"
    flat = multi.droplevel(1, axis=1)  # multi_level_index=False
    assert yfs._from_yfinance(by_ticker, "MSFT").equals(want)
    assert yfs._from_yfinance(flat, "MSFT").equals(want)


def test_from_yfinance_drops_empty_rows_keeps_partial_ones() -> None:
    days = [date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4)]
    frame = yf_frame("X", days)
    frame.loc[pd.Timestamp("2024-01-03"), :] = np.nan  # padding row: no price at all
    frame.loc[pd.Timestamp("2024-01-04"), ("Close", "X")] = np.nan  # broken row
    bars = yfs._from_yfinance(frame, "X")
    assert bars["date"].to_list() == [date(2024, 1, 2), date(2024, 1, 4)]
    assert np.isnan(bars["close"][1]) and bars["open"][1] == 102.0
    with pytest.raises(DataQualityError, match="'no_nulls'.*2024-01-04"):
        validate_bars(bars, "X", min_rows=1)


def test_yfinance_unknown_ticker_says_the_symbol_is_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(yfs, "_download", lambda t, s, e: yf_empty(t, UNKNOWN_LINES))
    with pytest.raises(SourceError) as err:
        load_bars("NOSUCHX", "yfinance", start=date(2024, 1, 1), end=date(2024, 2, 1), cache_dir=tmp_path)
    msg = str(err.value)
    assert msg.startswith("NOSUCHX: source yfinance: no bars for 2024-01-01 to 2024-02-01")
    assert "the symbol is the problem" in msg and "possibly delisted" in msg
    assert err.value.retryable is False  # retrying will not make the symbol exist
    assert list(tmp_path.iterdir()) == []  # nothing cached


def test_yfinance_empty_frame_without_log_lines_blames_the_symbol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(yfs, "_download", lambda t, s, e: pd.DataFrame())
    with pytest.raises(SourceError, match="ZZ: source yfinance: no bars .*the symbol is the problem"):
        load_bars("ZZ", "yfinance", start=date(2024, 1, 1), end=date(2024, 2, 1), cache_dir=tmp_path)


def test_yfinance_logged_network_failure_says_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yfs, "_download", lambda t, s, e: yf_empty(t, DNS_LINES))
    network = "AAPL: .*the network is the problem, not the symbol.*Could not resolve host"
    with pytest.raises(SourceError, match=network) as err:
        load_bars("AAPL", "yfinance", start=date(2024, 1, 1), end=date(2024, 2, 1), cache_dir=tmp_path)
    assert err.value.retryable is True
    copied = copy.deepcopy(err.value)  # as a task runner would carry it across processes
    assert (str(copied), copied.retryable) == (str(err.value), True)


def test_yfinance_rate_limit_is_retryable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ["1 Failed download:", "['AAPL']: YFRateLimitError('Too Many Requests. Rate limited. Try after a while.')"]
    monkeypatch.setattr(yfs, "_download", lambda t, s, e: yf_empty(t, lines))
    with pytest.raises(SourceError, match="AAPL: source yfinance: Yahoo rate-limited") as err:
        load_bars("AAPL", "yfinance", start=date(2024, 1, 1), end=date(2024, 2, 1), cache_dir=tmp_path)
    assert err.value.retryable is True


def test_yfinance_unexplained_failure_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ["1 Failed download:", "['AAPL']: KeyError('chart')"]
    monkeypatch.setattr(yfs, "_download", lambda t, s, e: yf_empty(t, lines))
    with pytest.raises(SourceError, match=r"names neither the network nor the symbol \(yfinance: .*KeyError"):
        load_bars("AAPL", "yfinance", start=date(2024, 1, 1), end=date(2024, 2, 1), cache_dir=tmp_path)


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(lambda: __import__("requests").exceptions.ConnectionError("Connection refused"), id="requests"),
        pytest.param(lambda: importlib.import_module("curl_cffi.requests.exceptions").ConnectionError(
            "Failed to perform, curl: (7) Couldn't connect to server"), id="curl_cffi"),
        pytest.param(lambda: TimeoutError("read timed out"), id="timeout"),
    ],
)
def test_yfinance_raised_network_error_becomes_source_error(
    exc: Callable[[], Exception], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = exc()

    def boom(ticker: str, start: date, end: date) -> pd.DataFrame:
        raise error

    monkeypatch.setattr(yfs, "_download", boom)
    with pytest.raises(SourceError, match="MSFT: .*the network is the problem") as err:
        load_bars("MSFT", "yfinance", start=date(2024, 1, 1), end=date(2024, 2, 1), cache_dir=tmp_path)
    assert err.value.__cause__ is error and err.value.retryable is True


def test_download_wrapper_captures_yfinance_log_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ``_download`` around a fake ``yf.download`` that fails as 1.7 does:
    logs on the 'yfinance' logger and returns an empty frame."""
    import yfinance as yf
    seen = {}

    def fake_download(ticker: str, **kwargs: object) -> pd.DataFrame:
        seen.update(kwargs)
        log = logging.getLogger("yfinance")
        log.error("\n1 Failed download:")
        log.error(DNS_LINES[1])
        return yf_empty(ticker, [])

    monkeypatch.setattr(yf, "download", fake_download)
    frame = yfs._download("AAPL", date(2024, 1, 1), date(2024, 2, 1))
    assert frame.attrs["yfinance_errors"] == DNS_LINES
    assert seen["auto_adjust"] is True and seen["progress"] is False
    assert seen["start"] == date(2024, 1, 1) and seen["end"] == date(2024, 2, 1)
    assert logging.getLogger("yfinance").handlers == []  # handler removed again


def test_yfinance_cache_second_call_same_range_makes_no_download(yahoo: FakeYahoo, tmp_path: Path) -> None:
    start, end = date(2024, 1, 2), date(2024, 3, 28)
    first = load_bars("T", "yfinance", start=start, end=end, cache_dir=tmp_path)
    assert yahoo.calls == [("T", start, end + timedelta(days=1))]  # yfinance's end is exclusive
    assert first.equals(expected_bars(start, end))
    again = load_bars("T", "yfinance", start=start, end=end, cache_dir=tmp_path)
    inside = load_bars("T", "yfinance", start=date(2024, 2, 1), end=date(2024, 3, 1), cache_dir=tmp_path)
    assert len(yahoo.calls) == 1
    assert again.equals(first)
    assert inside.equals(expected_bars(date(2024, 2, 1), date(2024, 3, 1)))
    assert (tmp_path / "T.parquet").exists()


def test_yfinance_cache_later_end_downloads_only_new_days(yahoo: FakeYahoo, tmp_path: Path) -> None:
    start = date(2024, 1, 2)
    load_bars("T", "yfinance", start=start, end=date(2024, 3, 28), cache_dir=tmp_path)
    longer = load_bars("T", "yfinance", start=start, end=date(2024, 4, 30), cache_dir=tmp_path)
    # From the last cached bar (Thu 2024-03-28), which is re-checked, to the new end.
    assert yahoo.calls[1:] == [("T", date(2024, 3, 28), date(2024, 5, 1))]
    assert longer.equals(expected_bars(start, date(2024, 4, 30)))
    assert pl.read_parquet(tmp_path / "T.parquet").equals(longer)


def test_yfinance_cache_refetches_all_when_history_was_readjusted(
    yahoo: FakeYahoo, tmp_path: Path
) -> None:
    start = date(2024, 1, 2)
    load_bars("T", "yfinance", start=start, end=date(2024, 3, 28), cache_dir=tmp_path)
    yahoo.scale = 0.5  # a 2:1 split: Yahoo re-adjusts the whole history
    bars = load_bars("T", "yfinance", start=start, end=date(2024, 4, 30), cache_dir=tmp_path)
    assert yahoo.calls[1:] == [("T", date(2024, 3, 28), date(2024, 5, 1)), ("T", start, date(2024, 5, 1))]
    assert bars.equals(expected_bars(start, date(2024, 4, 30), scale=0.5))  # one basis, no -50% day


def test_yfinance_earlier_start_refetches_the_union(yahoo: FakeYahoo, tmp_path: Path) -> None:
    load_bars("T", "yfinance", start=date(2024, 2, 1), end=date(2024, 3, 1), cache_dir=tmp_path)
    bars = load_bars("T", "yfinance", start=date(2024, 1, 2), end=date(2024, 2, 15), cache_dir=tmp_path)
    assert yahoo.calls[1:] == [("T", date(2024, 1, 2), date(2024, 3, 2))]
    assert bars.equals(expected_bars(date(2024, 1, 2), date(2024, 2, 15)))
    load_bars("T", "yfinance", start=date(2024, 1, 2), end=date(2024, 3, 1), cache_dir=tmp_path)
    assert len(yahoo.calls) == 2


def test_yfinance_as_of_today(yahoo: FakeYahoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start = date(2024, 6, 3)
    bars = load_bars("T", "yfinance", start=start, cache_dir=tmp_path)  # end=None: through today (Fri 06-28)
    assert yahoo.calls == [("T", start, date(2024, 6, 29))] and bars["date"][-1] == date(2024, 6, 28)
    load_bars("T", "yfinance", start=start, cache_dir=tmp_path)
    load_bars("T", "yfinance", start=start, end=date(2030, 1, 1), cache_dir=tmp_path)  # no future coverage
    assert len(yahoo.calls) == 1
    monkeypatch.setattr(yfs, "_today", lambda: date(2024, 7, 2))  # the next nightly run
    bars = load_bars("T", "yfinance", start=start, cache_dir=tmp_path)
    assert yahoo.calls[1:] == [("T", date(2024, 6, 28), date(2024, 7, 3))]
    assert bars["date"][-1] == date(2024, 7, 2)


def test_yfinance_no_start_asks_for_the_whole_history(yahoo: FakeYahoo, tmp_path: Path) -> None:
    load_bars("T", "yfinance", end=date(2024, 1, 31), days=5, cache_dir=tmp_path)
    assert yahoo.calls[0][1] == yfs._YF_EARLIEST  # yfinance would default to one month
    load_bars("T", "yfinance", start=date(2023, 1, 3), end=date(2024, 1, 31), cache_dir=tmp_path)
    assert len(yahoo.calls) == 1


def test_yfinance_network_failure_on_extension_keeps_cache(
    yahoo: FakeYahoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_bars("T", "yfinance", start=date(2024, 1, 2), end=date(2024, 3, 28), cache_dir=tmp_path)
    before = (tmp_path / "T.parquet").read_bytes()
    monkeypatch.setattr(yfs, "_download", lambda t, s, e: yf_empty(t, DNS_LINES))
    with pytest.raises(SourceError, match="network is the problem"):
        load_bars("T", "yfinance", start=date(2024, 1, 2), end=date(2024, 4, 30), cache_dir=tmp_path)
    assert (tmp_path / "T.parquet").read_bytes() == before


def test_yfinance_cache_write_failure_keeps_the_old_cache_and_no_temporary(
    yahoo: FakeYahoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_bars("T", "yfinance", start=date(2024, 1, 2), end=date(2024, 3, 28), cache_dir=tmp_path)
    before = (tmp_path / "T.parquet").read_bytes()

    def half_then_crash(self: pl.DataFrame, file: Path, **kwargs: object) -> None:
        Path(file).write_bytes(before[:100])
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        load_bars("T", "yfinance", start=date(2024, 1, 2), end=date(2024, 4, 30), cache_dir=tmp_path)
    assert (tmp_path / "T.parquet").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["T.parquet"]


def test_yfinance_corrupt_cache_names_the_file(yahoo: FakeYahoo, tmp_path: Path) -> None:
    (tmp_path / "T.parquet").write_bytes(b"not parquet")
    with pytest.raises(SourceError, match=r"cannot read the yfinance cache .*T\.parquet.*delete the file"):
        load_bars("T", "yfinance", start=date(2024, 1, 2), end=date(2024, 3, 28), cache_dir=tmp_path)

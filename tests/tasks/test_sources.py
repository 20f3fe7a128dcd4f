"""tasks.sources: symbols, sample, synthetic, files:DIR, yfinance (no network), fingerprint."""

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

import tasks.sources as src
from tasks.sources import (
    BARS_SCHEMA,
    SAMPLE_SYMBOLS,
    SYNTHETIC_END,
    SourceError,
    bars_fingerprint,
    files_dir,
    load_bars,
    synthetic_bars,
    validate_symbol,
)
from tasks.validate import DataQualityError, validate_bars


def _assert_bars(bars: pl.DataFrame) -> None:
    assert dict(bars.schema) == BARS_SCHEMA
    assert bars["date"].diff().drop_nulls().dt.total_days().min() > 0  # strictly increasing


# --- symbols ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("AAPL", "AAPL"), ("brk-b", "BRK-B"), ("^GSPC", "^GSPC"), ("EURUSD=X", "EURUSD=X"),
     ("0700.HK", "0700.HK"), ("A" * 20, "A" * 20)],
)
def test_validate_symbol_accepts_yahoo_names(given: str, canonical: str) -> None:
    assert validate_symbol(given) == canonical


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\\b", "A" * 21, "", "..", ".x", "-x", "a b", "AAPL\n", "é"])
def test_validate_symbol_rejects_with_value_and_rule(bad: str) -> None:
    with pytest.raises(ValueError) as err:
        validate_symbol(bad)
    assert repr(bad) in str(err.value)
    assert "1-20 characters" in str(err.value)


@pytest.mark.parametrize("source", ["files:DIR", "yfinance", "sample", "synthetic"])
@pytest.mark.parametrize("bad", ["../x", "a/b", "A" * 21, ""])
def test_bad_symbol_raises_before_any_file_access(
    bad: str, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError("touched the file system or network before validating the symbol")

    for name in ("iterdir", "exists", "is_dir", "open", "stat"):
        monkeypatch.setattr(Path, name, no_io)
    for name in ("read_csv", "read_parquet", "scan_parquet", "read_parquet_metadata"):
        monkeypatch.setattr(pl, name, no_io)
    monkeypatch.setattr(src, "_download", no_io)
    source = source.replace("DIR", str(tmp_path))
    with pytest.raises(ValueError, match="invalid symbol"):
        load_bars(bad, source, cache_dir=tmp_path)


# --- sample -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "rows", "first"),
    [("AAPL", 3270, date(2000, 3, 1)), ("GOOG", 2148, date(2004, 8, 19)),
     ("IBM", 3270, date(2000, 3, 1)), ("MSFT", 3270, date(2000, 3, 1))],
)
def test_sample_loads_bars_with_real_ranges(symbol: str, rows: int, first: date) -> None:
    bars = load_bars(symbol, "sample")
    _assert_bars(bars)
    assert (bars.height, bars["date"][0], bars["date"][-1]) == (rows, first, date(2013, 3, 1))
    validate_bars(bars, symbol, min_rows=400)  # the shipped data passes every blocking check


def test_sample_symbols_are_the_shipped_ones() -> None:
    shipped = pl.read_parquet(src.SAMPLE_PATH)["symbol"].cast(pl.String).unique().sort()
    assert tuple(shipped) == tuple(sorted(SAMPLE_SYMBOLS))
    assert src.SAMPLE_PATH.stat().st_size < 600_000


def test_sample_aapl_is_split_adjusted_across_2005_02_28() -> None:
    bars = load_bars("AAPL", "sample", start=date(2005, 2, 14), end=date(2005, 3, 14))
    moves = bars["close"].pct_change().drop_nulls()
    assert moves.min() > -0.30
    day = {d: row for d, *row in bars.select("date", "close", "volume").iter_rows()}
    before, split = day[date(2005, 2, 25)], day[date(2005, 2, 28)]
    # Raw WIKI quotes: close 88.99 on 02-25, 44.86 on 02-28 after the 2:1 split;
    # volume 16,348,400 then 11,635,900. AAPL paid no dividend then, so the
    # adjusted ratios are the split-corrected raw ones.
    assert split[0] / before[0] == pytest.approx(2 * 44.86 / 88.99, rel=1e-3)  # +0.8%, not -49.6%
    assert before[1] / split[1] == pytest.approx(2 * 16_348_400 / 11_635_900, rel=1e-3)


def test_sample_adjusts_msft_2003_split_too() -> None:
    bars = load_bars("MSFT", "sample", start=date(2003, 2, 10), end=date(2003, 2, 25))
    assert bars["close"].pct_change().drop_nulls().abs().max() < 0.1  # raw 2003-02-18: -48%


def test_sample_regenerates_from_bokeh_sampledata() -> None:
    build_sample = importlib.import_module("tasks.data.build_sample")
    committed = pl.read_parquet(src.SAMPLE_PATH)
    rebuilt = build_sample.build()
    assert rebuilt.equals(committed)


def test_sample_file_is_read_once_and_callers_get_their_own_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    src._sample_table.cache_clear()
    reads: list[Path] = []
    read_parquet = pl.read_parquet

    def counting(path: Path, *args: object, **kwargs: object) -> pl.DataFrame:
        reads.append(path)
        return read_parquet(path, *args, **kwargs)

    monkeypatch.setattr(pl, "read_parquet", counting)
    first = load_bars("IBM", "sample")
    close0 = first["close"][0]
    first[0, "close"] = -1.0  # a caller scribbling on its frame
    again = load_bars("IBM", "sample")
    assert load_bars("MSFT", "sample")["date"][-1] == date(2013, 3, 1)
    assert reads == [src.SAMPLE_PATH]
    assert again["close"][0] == close0 and first["close"][0] == -1.0
    assert src._sample_table()["symbol"].n_unique() == len(SAMPLE_SYMBOLS)  # the cached table is whole


def test_sample_unknown_symbol_names_the_choices() -> None:
    with pytest.raises(SourceError, match=r"TSLA: not in the shipped sample data \(AAPL, GOOG, IBM, MSFT\)") as err:
        load_bars("TSLA", "sample")
    assert err.value.retryable is False


def test_start_end_days_select_inclusive_range_then_last_rows() -> None:
    bars = load_bars("IBM", "sample", start=date(2010, 1, 4), end=date(2010, 1, 8))
    assert bars["date"].to_list() == [date(2010, 1, d) for d in (4, 5, 6, 7, 8)]
    last = load_bars("IBM", "sample", end=date(2010, 1, 8), days=2)
    assert last["date"].to_list() == [date(2010, 1, 7), date(2010, 1, 8)]
    with pytest.raises(SourceError, match="IBM: no bars .* 2000-03-01 to 2013-03-01"):
        load_bars("IBM", "sample", start=date(2020, 1, 1))
    with pytest.raises(ValueError, match="start 2011-01-01 is after end 2010-01-01"):
        load_bars("IBM", "sample", start=date(2011, 1, 1), end=date(2010, 1, 1))


def test_unknown_source_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="unknown source 'quandl'"):
        load_bars("AAPL", "quandl")
    with pytest.raises(SourceError, match="unknown source 'files:'"):
        load_bars("AAPL", "files:")


# --- synthetic ------------------------------------------------------------------


def test_synthetic_is_deterministic_per_symbol_and_seed() -> None:
    a, b = load_bars("ZZZ", "synthetic"), load_bars("zzz", "synthetic")
    assert a.equals(b)
    assert bars_fingerprint(a) == bars_fingerprint(b)
    assert not a["close"].equals(load_bars("ZZY", "synthetic")["close"])
    assert not a["close"].equals(load_bars("ZZZ", "synthetic", seed=1)["close"])


def test_synthetic_calendar_is_fixed_business_days() -> None:
    bars = load_bars("CAL", "synthetic")  # end=None: the calendar's end, whatever today is
    _assert_bars(bars)
    assert bars["date"][0] == date(2005, 1, 3) and bars["date"][-1] == date(2024, 12, 31)
    assert bars.height == np.busday_count("2005-01-03", "2025-01-01")
    assert bars["date"].dt.weekday().max() <= 5
    tail = load_bars("CAL", "synthetic", end=date(2020, 6, 30), days=250)
    assert tail.height == 250 and tail["date"][-1] == date(2020, 6, 30)
    assert tail.equals(bars.filter(pl.col("date") <= date(2020, 6, 30)).tail(250))


def test_synthetic_ohlc_consistent_and_valid() -> None:
    for i in range(20):
        bars = synthetic_bars(f"S{i}", seed=i)
        o, h, lo, c = (bars[x].to_numpy() for x in ("open", "high", "low", "close"))
        assert (h >= np.maximum(o, c)).all() and (lo <= np.minimum(o, c)).all()
        assert (h > lo).all()  # bars have a range
        assert (bars["low"] > 0).all() and (bars["volume"] > 0).all()
        validate_bars(bars, f"S{i}", min_rows=1000)


def test_synthetic_has_fat_tails_clustering_and_volume_link() -> None:
    kurt, acf, vol_corr = [], [], []
    for i in range(10):
        bars = synthetic_bars(f"T{i}")
        r = np.diff(np.log(bars["close"].to_numpy()))
        z = (r - r.mean()) / r.std()
        kurt.append(np.mean(z**4))
        a = np.abs(r) - np.abs(r).mean()
        acf.append(np.mean([np.dot(a[:-k], a[k:]) / np.dot(a, a) for k in range(1, 11)]))
        vol_corr.append(np.corrcoef(np.abs(r), bars["volume"].to_numpy()[1:])[0, 1])
    assert np.median(kurt) > 5.0  # a normal has 3
    assert np.median(acf) > 0.05  # |r| autocorrelated: volatility clusters (iid gives ~0)
    assert np.median(vol_corr) > 0.3


def test_garch_variance_fast_matches_reference() -> None:
    rng = np.random.default_rng(0)
    a = 0.08 * rng.standard_t(4, 3000) ** 2 + 0.9
    fast = src._garch_variance(a, 1e-6, 4e-4, chunk=256)
    np.testing.assert_allclose(fast, src._garch_variance_ref(a, 1e-6, 4e-4), rtol=1e-10)


def test_synthetic_50_symbols_each_have_their_own_bars() -> None:
    bars = [load_bars(f"SCALE{i}", "synthetic", days=2500) for i in range(50)]
    assert all(b.height == 2500 and b["date"][-1] == SYNTHETIC_END for b in bars)
    assert len({bars_fingerprint(b) for b in bars}) == 50


# --- files:DIR -------------------------------------------------------------------

YAHOO_CSV = """Date,Open,High,Low,Close,Adj Close,Volume
2024-01-03,10.0,11.0,9.0,10.5,5.25,1000
2024-01-02,20.0,22.0,18.0,21.0,10.5,500
2024-01-04,10.5,11.5,10.0,11.0,11.0,2000
"""


def test_files_yahoo_csv_is_adjusted_and_sorted(tmp_path: Path) -> None:
    (tmp_path / "ACME.csv").write_text(YAHOO_CSV)
    bars = load_bars("ACME", f"files:{tmp_path}")
    # Hand-computed: ratio Adj Close / Close = 0.5 on 01-02 and 01-03, 1 on 01-04;
    # prices x ratio, volume / ratio.
    expected = pl.DataFrame(
        {"date": [date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4)],
         "open": [10.0, 5.0, 10.5], "high": [11.0, 5.5, 11.5], "low": [9.0, 4.5, 10.0],
         "close": [10.5, 5.25, 11.0], "volume": [1000.0, 2000.0, 2000.0]},
        schema=BARS_SCHEMA,
    )
    assert bars.equals(expected)


def test_files_dir_parses_the_source_and_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert files_dir("files:/data/bars") == Path("/data/bars")
    assert files_dir("files:rel/dir") == Path("rel/dir")
    assert files_dir("files:~/x") == tmp_path / "x"
    assert files_dir("files:~") == tmp_path
    for other in ("sample", "synthetic", "yfinance", "files:", "file:/x", "/x"):
        assert files_dir(other) is None, other
    # load_bars reads from the expanded directory
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "ACME.csv").write_text(YAHOO_CSV)
    assert load_bars("ACME", "files:~/x").equals(load_bars("ACME", f"files:{tmp_path / 'x'}"))


def test_files_lowercase_parquet_and_symbol_case(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {"DATE": [date(2024, 1, 2), date(2024, 1, 3)], "open": [1, 2], "high": [2, 3],
         "low": [1, 1], "close": [2, 2], "volume": [10, 20], "other": ["x", "y"]}
    )
    frame.write_parquet(tmp_path / "brk-b.parquet")
    bars = load_bars("BRK-B", f"files:{tmp_path}")
    assert bars.equals(pl.DataFrame(
        {"date": [date(2024, 1, 2), date(2024, 1, 3)], "open": [1.0, 2.0], "high": [2.0, 3.0],
         "low": [1.0, 1.0], "close": [2.0, 2.0], "volume": [10.0, 20.0]}, schema=BARS_SCHEMA))


def test_files_parquet_adj_close_and_tz_aware_datetimes(tmp_path: Path) -> None:
    stamps = pl.Series([pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03")]).dt.replace_time_zone("Asia/Tokyo")
    pl.DataFrame({"Date": stamps, "Open": [4.0, 4.0], "High": [4.0, 4.0], "Low": [2.0, 2.0],
                  "Close": [4.0, 2.0], "adj_close": [1.0, 2.0], "Volume": [100.0, 100.0]}
                 ).write_parquet(tmp_path / "TK.parquet")
    bars = load_bars("TK", f"files:{tmp_path}")
    assert bars["date"].to_list() == [date(2024, 1, 2), date(2024, 1, 3)]  # local dates kept
    assert bars["close"].to_list() == [1.0, 2.0] and bars["open"].to_list() == [1.0, 4.0]
    assert bars["volume"].to_list() == [400.0, 100.0]


def test_files_pandas_style_tz_dates_in_csv(tmp_path: Path) -> None:
    (tmp_path / "X.csv").write_text(
        "Date,Open,High,Low,Close,Volume\n2024-01-02 00:00:00-05:00,1,2,1,2,5\n"
    )
    assert load_bars("X", f"files:{tmp_path}")["date"].to_list() == [date(2024, 1, 2)]


def test_files_errors_name_file_and_column(tmp_path: Path) -> None:
    (tmp_path / "NOVOL.csv").write_text("Date,Open,High,Low,Close\n2024-01-02,1,2,1,2\n")
    with pytest.raises(SourceError, match=r"NOVOL: .*NOVOL\.csv: missing column\(s\) \['volume'\]"):
        load_bars("NOVOL", f"files:{tmp_path}")
    (tmp_path / "BADNUM.csv").write_text("Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,1,two,5\n")
    with pytest.raises(SourceError, match=r"BADNUM\.csv: column 'close' row 0: 'two' is not a number"):
        load_bars("BADNUM", f"files:{tmp_path}")
    with pytest.raises(SourceError, match=r"MISSING: .*no MISSING\.csv or MISSING\.parquet in"):
        load_bars("MISSING", f"files:{tmp_path}")
    with pytest.raises(SourceError, match="directory .*nowhere does not exist"):
        load_bars("X", f"files:{tmp_path / 'nowhere'}")
    (tmp_path / "TWICE.csv").write_text(YAHOO_CSV)
    (tmp_path / "TWICE.parquet").write_bytes(b"")
    with pytest.raises(SourceError, match="several files match: TWICE.csv, TWICE.parquet"):
        load_bars("TWICE", f"files:{tmp_path}")


def test_files_bad_rows_reach_validation_unchanged(tmp_path: Path) -> None:
    # Yahoo CSVs write missing values as "null"; a duplicated day is kept too:
    # the source does not patch data, validation reports it.
    (tmp_path / "HOLE.csv").write_text(
        "Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,1,2,5\n2024-01-03,null,null,null,null,null\n"
    )
    hole = load_bars("HOLE", f"files:{tmp_path}")
    assert hole.height == 2 and hole["close"].null_count() == 1
    with pytest.raises(DataQualityError, match="HOLE: .*'no_nulls'.*2024-01-03"):
        validate_bars(hole, "HOLE", min_rows=2)
    (tmp_path / "DUP.csv").write_text(
        "Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,1,2,5\n2024-01-02,1,2,1,2,5\n"
    )
    with pytest.raises(DataQualityError, match="DUP: .*'unique_dates'.*2024-01-02"):
        validate_bars(load_bars("DUP", f"files:{tmp_path}"), "DUP", min_rows=2)


# --- yfinance -------------------------------------------------------------------
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
    """Stands in for ``tasks.sources._download``: serves a market and counts calls."""

    def __init__(self, scale: float = 1.0) -> None:
        self.calls: list[tuple[str, date, date]] = []
        self.scale = scale

    def __call__(self, ticker: str, start: date, end: date) -> pd.DataFrame:
        self.calls.append((ticker, start, end))
        return yf_frame(ticker, business_days(start, end), scale=self.scale)


def expected_bars(start: date, end_inclusive: date, scale: float = 1.0) -> pl.DataFrame:
    return src._from_yfinance(yf_frame("T", business_days(start, end_inclusive + timedelta(days=1)), scale=scale), "T")


@pytest.fixture
def yahoo(monkeypatch: pytest.MonkeyPatch) -> FakeYahoo:
    fake = FakeYahoo()
    monkeypatch.setattr(src, "_download", fake)
    monkeypatch.setattr(src, "_today", lambda: date(2024, 6, 28))
    return fake


def test_from_yfinance_multiindex_values_and_dtypes() -> None:
    days = [date(2024, 1, 2), date(2024, 1, 3)]
    bars = src._from_yfinance(yf_frame("AAPL", days), "AAPL")
    assert bars.equals(pl.DataFrame(
        {"date": days, "open": [100.0, 101.0], "high": [103.0, 104.0], "low": [99.0, 100.0],
         "close": [101.0, 102.0], "volume": [1e6 + 1, 1e6 + 2]}, schema=BARS_SCHEMA))


@pytest.mark.parametrize("tz", ["America/New_York", "Asia/Tokyo", "Europe/London"])
def test_from_yfinance_tz_aware_index_keeps_local_dates(tz: str) -> None:
    days = [date(2024, 3, 8), date(2024, 3, 11)]  # around the US DST change
    bars = src._from_yfinance(yf_frame("X", days, tz=tz), "X")
    assert bars["date"].to_list() == days


def test_from_yfinance_other_shapes_agree() -> None:
    days = [date(2024, 1, 2), date(2024, 1, 3)]
    multi = yf_frame("MSFT", days)
    want = src._from_yfinance(multi, "MSFT")
    by_ticker = multi.swaplevel(0, 1, axis=1)  # group_by="ticker"
    flat = multi.droplevel(1, axis=1)  # multi_level_index=False
    assert src._from_yfinance(by_ticker, "MSFT").equals(want)
    assert src._from_yfinance(flat, "MSFT").equals(want)


def test_from_yfinance_drops_empty_rows_keeps_partial_ones() -> None:
    days = [date(2024, 1, 2), date(2024, 1, 3), date(2024, 1, 4)]
    frame = yf_frame("X", days)
    frame.loc[pd.Timestamp("2024-01-03"), :] = np.nan  # padding row: no price at all
    frame.loc[pd.Timestamp("2024-01-04"), ("Close", "X")] = np.nan  # broken row
    bars = src._from_yfinance(frame, "X")
    assert bars["date"].to_list() == [date(2024, 1, 2), date(2024, 1, 4)]
    assert np.isnan(bars["close"][1]) and bars["open"][1] == 102.0
    with pytest.raises(DataQualityError, match="'no_nulls'.*2024-01-04"):
        validate_bars(bars, "X", min_rows=1)


def test_yfinance_unknown_ticker_says_the_symbol_is_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(src, "_download", lambda t, s, e: yf_empty(t, UNKNOWN_LINES))
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
    monkeypatch.setattr(src, "_download", lambda t, s, e: pd.DataFrame())
    with pytest.raises(SourceError, match="ZZ: source yfinance: no bars .*the symbol is the problem"):
        load_bars("ZZ", "yfinance", start=date(2024, 1, 1), end=date(2024, 2, 1), cache_dir=tmp_path)


def test_yfinance_logged_network_failure_says_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(src, "_download", lambda t, s, e: yf_empty(t, DNS_LINES))
    network = "AAPL: .*the network is the problem, not the symbol.*Could not resolve host"
    with pytest.raises(SourceError, match=network) as err:
        load_bars("AAPL", "yfinance", start=date(2024, 1, 1), end=date(2024, 2, 1), cache_dir=tmp_path)
    assert err.value.retryable is True
    copied = copy.deepcopy(err.value)  # as a task runner would carry it across processes
    assert (str(copied), copied.retryable) == (str(err.value), True)


def test_yfinance_rate_limit_is_retryable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ["1 Failed download:", "['AAPL']: YFRateLimitError('Too Many Requests. Rate limited. Try after a while.')"]
    monkeypatch.setattr(src, "_download", lambda t, s, e: yf_empty(t, lines))
    with pytest.raises(SourceError, match="AAPL: source yfinance: Yahoo rate-limited") as err:
        load_bars("AAPL", "yfinance", start=date(2024, 1, 1), end=date(2024, 2, 1), cache_dir=tmp_path)
    assert err.value.retryable is True


def test_yfinance_unexplained_failure_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ["1 Failed download:", "['AAPL']: KeyError('chart')"]
    monkeypatch.setattr(src, "_download", lambda t, s, e: yf_empty(t, lines))
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

    monkeypatch.setattr(src, "_download", boom)
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
    frame = src._download("AAPL", date(2024, 1, 1), date(2024, 2, 1))
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
    monkeypatch.setattr(src, "_today", lambda: date(2024, 7, 2))  # the next nightly run
    bars = load_bars("T", "yfinance", start=start, cache_dir=tmp_path)
    assert yahoo.calls[1:] == [("T", date(2024, 6, 28), date(2024, 7, 3))]
    assert bars["date"][-1] == date(2024, 7, 2)


def test_yfinance_no_start_asks_for_the_whole_history(yahoo: FakeYahoo, tmp_path: Path) -> None:
    load_bars("T", "yfinance", end=date(2024, 1, 31), days=5, cache_dir=tmp_path)
    assert yahoo.calls[0][1] == src._YF_EARLIEST  # yfinance would default to one month
    load_bars("T", "yfinance", start=date(2023, 1, 3), end=date(2024, 1, 31), cache_dir=tmp_path)
    assert len(yahoo.calls) == 1


def test_yfinance_network_failure_on_extension_keeps_cache(
    yahoo: FakeYahoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_bars("T", "yfinance", start=date(2024, 1, 2), end=date(2024, 3, 28), cache_dir=tmp_path)
    before = (tmp_path / "T.parquet").read_bytes()
    monkeypatch.setattr(src, "_download", lambda t, s, e: yf_empty(t, DNS_LINES))
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


# --- fingerprint -------------------------------------------------------------------


def test_bars_fingerprint_is_stable_and_value_sensitive() -> None:
    bars = pl.DataFrame(
        {"date": [date(2024, 1, 2), date(2024, 1, 3)], "open": [1.0, 2.0], "high": [2.0, 3.0],
         "low": [0.5, 1.5], "close": [1.5, 2.5], "volume": [100.0, 200.0]}, schema=BARS_SCHEMA)
    digest = bars_fingerprint(bars)
    # Pinned: the digest is a cache key stored with models, so it must not drift.
    assert digest == "3755b87e7147588f339e57915a1ee57db3208c745c90ff8bee9e1c37cbf14304"
    reordered = bars.select("volume", "date", "close", "low", "high", "open").with_columns(extra=pl.lit(1))
    assert bars_fingerprint(reordered) == digest
    for col in ("open", "high", "low", "close", "volume"):
        changed = bars.with_columns(pl.when(pl.int_range(2) == 1).then(pl.col(col) + 1e-9).otherwise(pl.col(col)))
        assert bars_fingerprint(changed) != digest, col
    shifted = bars.with_columns(pl.col("date") + pl.duration(days=1))
    assert bars_fingerprint(shifted) != digest
    assert bars_fingerprint(bars.head(1)) != digest
    nulled = bars.with_columns(pl.when(pl.int_range(2) == 0).then(None).otherwise(pl.col("close")).alias("close"))
    zeroed = bars.with_columns(pl.when(pl.int_range(2) == 0).then(0.0).otherwise(pl.col("close")).alias("close"))
    assert bars_fingerprint(nulled) != bars_fingerprint(zeroed)

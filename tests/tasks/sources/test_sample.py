"""tasks.sources.sample: the shipped real bars (no network)."""

from __future__ import annotations

import importlib
from datetime import date
from pathlib import Path

import polars as pl
import pytest

import tasks.sources.sample as sample
from tasks.bars import BARS_SCHEMA
from tasks.sources import SAMPLE_SYMBOLS, SourceError, load_bars
from tasks.validate import validate_bars


@pytest.mark.parametrize(
    ("symbol", "rows", "first"),
    [("AAPL", 3270, date(2000, 3, 1)), ("GOOG", 2148, date(2004, 8, 19)),
     ("IBM", 3270, date(2000, 3, 1)), ("MSFT", 3270, date(2000, 3, 1))],
)
def test_sample_loads_bars_with_real_ranges(symbol: str, rows: int, first: date) -> None:
    bars = load_bars(symbol, "sample")
    assert list(bars.schema.items()) == list(BARS_SCHEMA.items())
    assert bars["date"].diff().drop_nulls().dt.total_days().min() > 0  # strictly increasing
    assert (bars.height, bars["date"][0], bars["date"][-1]) == (rows, first, date(2013, 3, 1))
    validate_bars(bars, symbol, min_rows=400)  # the shipped data passes every blocking check


def test_sample_symbols_are_the_shipped_ones() -> None:
    shipped = pl.read_parquet(sample.SAMPLE_PATH)["symbol"].cast(pl.String).unique().sort()
    assert tuple(shipped) == tuple(sorted(SAMPLE_SYMBOLS))
    assert sample.SAMPLE_PATH.stat().st_size < 600_000


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
    committed = pl.read_parquet(sample.SAMPLE_PATH)
    rebuilt = build_sample.build()
    assert rebuilt.equals(committed)


def test_sample_file_is_read_once_and_callers_get_their_own_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    sample._sample_table.cache_clear()
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
    assert reads == [sample.SAMPLE_PATH]
    assert again["close"][0] == close0 and first["close"][0] == -1.0
    assert sample._sample_table()["symbol"].n_unique() == len(SAMPLE_SYMBOLS)  # the cached table is whole


def test_sample_unknown_symbol_names_the_choices() -> None:
    with pytest.raises(SourceError, match=r"TSLA: not in the shipped sample data \(AAPL, GOOG, IBM, MSFT\)") as err:
        load_bars("TSLA", "sample")
    assert err.value.retryable is False

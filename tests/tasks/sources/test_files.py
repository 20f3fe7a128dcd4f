"""tasks.sources.files: the user's DIR/SYMBOL.csv or .parquet."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from tasks.bars import BARS_SCHEMA
from tasks.sources import SourceError, files_dir, load_bars
from tasks.validate import DataQualityError, validate_bars

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

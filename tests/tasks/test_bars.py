"""tasks.bars: symbol names, the schema check, column names, adjustment, fingerprint."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest

from tasks.bars import (
    BARS_COLUMNS,
    BARS_SCHEMA,
    apply_adjustment,
    bars_fingerprint,
    canonical_column,
    check_bars,
    schema_problems,
    validate_symbol,
)

BARS = pl.DataFrame(
    {"date": [date(2024, 1, 2), date(2024, 1, 3)], "open": [1.0, 2.0], "high": [2.0, 3.0],
     "low": [0.5, 1.5], "close": [1.5, 2.5], "volume": [100.0, 200.0]}, schema=BARS_SCHEMA)


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


# --- the schema ---------------------------------------------------------------


def test_check_bars_returns_a_conforming_frame_itself() -> None:
    assert schema_problems(BARS) == []
    assert check_bars(BARS, "AAA") is BARS
    assert tuple(BARS.columns) == BARS_COLUMNS == ("date", "open", "high", "low", "close", "volume")


@pytest.mark.parametrize(
    ("broken", "problems"),
    [
        (BARS.drop("volume"), ["volume missing"]),
        (BARS.with_columns(pl.col("close").cast(pl.Float32)), ["close is Float32, need Float64"]),
        (BARS.with_columns(pl.col("date").cast(pl.Datetime("us"))),
         ["date is Datetime(time_unit='us', time_zone=None), need Date"]),
        (BARS.with_columns(pl.col("volume").cast(pl.Int64)).drop("open"),
         ["open missing", "volume is Int64, need Float64"]),
        (BARS.with_columns(adj_close=pl.col("close")), ["extra column(s) ['adj_close']"]),
        (BARS.select("date", "close", "open", "high", "low", "volume"),
         ["columns in the order ['date', 'close', 'open', 'high', 'low', 'volume'], "
          "need ['date', 'open', 'high', 'low', 'close', 'volume']"]),
    ],
    ids=["missing", "float32", "datetime", "two", "extra", "order"],
)
def test_check_bars_names_symbol_column_type_and_fix(broken: pl.DataFrame, problems: list[str]) -> None:
    assert schema_problems(broken) == problems
    with pytest.raises(ValueError) as err:
        check_bars(broken, "ACME")
    msg = str(err.value)
    assert msg.startswith(f"ACME: bars break the Bars contract: {'; '.join(problems)}. To fix: ")
    assert ".cast(BARS_SCHEMA)" in msg


# --- column names and adjustment ---------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("Adj Close", "adj_close"), ("adj_close", "adj_close"), ("AdjClose", "adj_close"),
     (" Adj-Close ", "adj_close"), ("Date", "date"), ("VOLUME", "volume"), ("Open Interest", "open_interest")],
)
def test_canonical_column(given: str, canonical: str) -> None:
    assert canonical_column(given) == canonical


def test_apply_adjustment_scales_prices_and_keeps_turnover() -> None:
    raw = BARS.with_columns(adj_close=pl.Series([0.75, 2.5]))  # ratios 0.5 and 1.0
    adjusted = apply_adjustment(raw)
    # Hand-computed: prices x ratio, volume / ratio; adj_close dropped.
    assert adjusted.equals(pl.DataFrame(
        {"date": [date(2024, 1, 2), date(2024, 1, 3)], "open": [0.5, 2.0], "high": [1.0, 3.0],
         "low": [0.25, 1.5], "close": [0.75, 2.5], "volume": [200.0, 200.0]}, schema=BARS_SCHEMA))
    assert (adjusted["close"] * adjusted["volume"]).to_list() == (BARS["close"] * BARS["volume"]).to_list()
    assert apply_adjustment(BARS) is BARS  # nothing to adjust


# --- fingerprint -------------------------------------------------------------------


def test_bars_fingerprint_is_stable_and_value_sensitive() -> None:
    bars = BARS
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

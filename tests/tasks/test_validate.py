"""tasks.validate: each check fails on a bad frame, names symbol and check, never alters data."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import polars as pl
import pytest

from tasks.sources import synthetic_bars
from tasks.validate import Check, DataQualityError, QualityReport, validate_bars

SYMBOL = "QQQX"
BLOCKING = ["columns", "min_rows", "no_nulls", "finite", "unique_dates", "sorted_dates",
            "positive_prices", "non_negative_volume", "ohlc_consistent", "close_varies"]


@pytest.fixture(scope="module")
def good() -> pl.DataFrame:
    return synthetic_bars("GOOD").slice(1000, 200)


def _set(bars: pl.DataFrame, row: int, **values: float | None) -> pl.DataFrame:
    """A copy of ``bars`` with the given columns replaced at one row."""
    at = pl.int_range(pl.len()) == row
    return bars.with_columns(
        pl.when(at).then(pl.lit(v, dtype=bars.schema[c])).otherwise(pl.col(c)).alias(c) for c, v in values.items()
    )


def _day(bars: pl.DataFrame, row: int) -> str:
    return str(bars["date"][row])


# Each case: a way to break the good frame, the check it must trip, and text
# the message must hold (the offending date or value).
CASES: dict[str, Callable[[pl.DataFrame], tuple[pl.DataFrame, list[str]]]] = {
    "columns": lambda b: (b.drop("volume"), ["volume missing"]),
    "columns_dtype": lambda b: (b.with_columns(pl.col("volume").cast(pl.Int64)), ["volume is Int64, need Float64"]),
    "min_rows": lambda b: (b.head(50), ["50 rows, need at least 100", "--days", "smaller window"]),
    "no_nulls": lambda b: (_set(b, 10, close=None), [_day(b, 10), "close=None"]),
    "no_nulls_nan": lambda b: (_set(b, 11, volume=float("nan")), [_day(b, 11), "volume=nan"]),
    "finite": lambda b: (_set(b, 20, high=float("inf")), [_day(b, 20), "high=inf"]),
    "unique_dates": lambda b: (_set(b, 31, date=b["date"][30]), [_day(b, 30)]),
    "sorted_dates": lambda b: (pl.concat([b.slice(0, 40), b.slice(41, 1), b.slice(40, 1), b.slice(42)]),
                               [f"{_day(b, 40)} follows {_day(b, 41)}"]),
    "positive_prices": lambda b: (_set(b, 50, low=0.0), [_day(b, 50), "low=0"]),
    "non_negative_volume": lambda b: (_set(b, 60, volume=-5.0), [_day(b, 60), "volume=-5"]),
    "ohlc_consistent": lambda b: (_set(b, 70, high=b["low"][70] * 0.5), [_day(b, 70), "high < max(open, close)"]),
    "ohlc_consistent_low": lambda b: (_set(b, 71, low=b["high"][71] * 2), [_day(b, 71)]),
    "close_varies": lambda b: (b.with_columns(pl.lit(10.0).alias(c) for c in ("open", "high", "low", "close")),
                               ["close is 10 on all 200 rows"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_blocking_check_names_symbol_check_and_offender(case: str, good: pl.DataFrame) -> None:
    bad, expected_text = CASES[case](good)
    check = next(name for name in BLOCKING if case.startswith(name))
    before = bad.clone()
    with pytest.raises(DataQualityError) as err:
        validate_bars(bad, SYMBOL, min_rows=100)
    e = err.value
    assert (e.symbol, e.check) == (SYMBOL, check)
    msg = str(e)
    assert msg.startswith(f"{SYMBOL}: data check '{check}' failed: ")
    assert "To fix: " in msg
    for text in expected_text:
        assert text in msg, (text, msg)
    assert bad.equals(before)  # validation never alters its input
    assert not e.report.passed and e.report.symbol == SYMBOL
    assert [c.name for c in e.report.checks if not c.passed and c.blocking][0] == check


def test_error_survives_copy_with_its_attributes(good: pl.DataFrame) -> None:
    with pytest.raises(DataQualityError) as err:
        validate_bars(good.head(5), SYMBOL, min_rows=100)
    copied = copy.deepcopy(err.value)  # task runners carry exceptions across processes
    assert (copied.symbol, copied.check, str(copied)) == (SYMBOL, "min_rows", str(err.value))
    assert copied.report.to_dict() == err.value.report.to_dict()


def test_every_blocking_check_is_exercised() -> None:
    assert {next(n for n in BLOCKING if c.startswith(n)) for c in CASES} == set(BLOCKING)


def test_good_frame_passes_all_checks_and_is_unchanged(good: pl.DataFrame) -> None:
    before = good.clone()
    report = validate_bars(good, SYMBOL, min_rows=200)
    assert good.equals(before)
    assert report.passed and report.warnings == []
    assert [c.name for c in report.checks] == BLOCKING + ["stale_closes", "extreme_moves"]
    assert all(c.passed for c in report.checks)
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["symbol"] == SYMBOL and as_json["passed"] is True and as_json["warnings"] == []
    assert as_json["checks"][1] == {"name": "min_rows", "passed": True, "blocking": True, "detail": "200 rows >= 200"}


def test_min_rows_boundary(good: pl.DataFrame) -> None:
    validate_bars(good, SYMBOL, min_rows=200)
    with pytest.raises(DataQualityError, match="200 rows, need at least 201"):
        validate_bars(good, SYMBOL, min_rows=201)


def test_first_blocking_failure_wins_and_report_lists_all(good: pl.DataFrame) -> None:
    bad = _set(_set(good, 5, close=None), 80, volume=-1.0)
    with pytest.raises(DataQualityError) as err:
        validate_bars(bad, SYMBOL, min_rows=100)
    assert err.value.check == "no_nulls"
    failed = {c.name for c in err.value.report.checks if not c.passed}
    assert {"no_nulls", "non_negative_volume"} <= failed


def test_stale_closes_warn_with_dates(good: pl.DataFrame) -> None:
    flat = good["close"][100]
    stale = good.with_columns(
        pl.when(pl.int_range(pl.len()).is_between(100, 106)).then(flat).otherwise(pl.col(c)).alias(c)
        for c in ("open", "high", "low", "close")
    )
    before = stale.clone()
    report = validate_bars(stale, SYMBOL, min_rows=100)
    assert stale.equals(before)
    assert [w.name for w in report.warnings] == ["stale_closes"]
    detail = report.warnings[0].detail
    assert f"7 days at {flat:.6g} from {_day(good, 100)} to {_day(good, 106)}" in detail
    assert report.passed
    # Six identical closes are below a threshold of 8: no warning.
    assert validate_bars(stale, SYMBOL, min_rows=100, stale_run=8).warnings == []


def test_extreme_moves_warn_with_dates(good: pl.DataFrame) -> None:
    # An unadjusted 2:1 split from row 120 on: prices halve, volume doubles.
    split = good.with_columns(
        *[pl.when(pl.int_range(pl.len()) >= 120).then(pl.col(c) / 2).otherwise(pl.col(c)).alias(c)
          for c in ("open", "high", "low", "close")],
        pl.when(pl.int_range(pl.len()) >= 120).then(pl.col("volume") * 2).otherwise(pl.col("volume")).alias("volume"),
    )
    move = split["close"][120] / split["close"][119] - 1
    report = validate_bars(split, SYMBOL, min_rows=100)
    assert [w.name for w in report.warnings] == ["extreme_moves"]
    detail = report.warnings[0].detail
    assert f"1 one-day close moves beyond +-25% (unadjusted split?): {_day(good, 120)} {move:+.1%}" in detail
    assert move < -0.4
    assert report.to_dict()["warnings"] == ["extreme_moves"]
    assert validate_bars(split, SYMBOL, min_rows=100, max_move=0.6).warnings == []


def test_real_sample_crash_is_a_warning_not_an_error() -> None:
    from tasks.sources import load_bars

    report = validate_bars(load_bars("AAPL", "sample"), "AAPL", min_rows=400)
    assert [w.name for w in report.warnings] == ["extreme_moves"]
    assert "2000-09-29 -51.9%" in report.warnings[0].detail  # the profit warning, a real crash


def test_report_helpers() -> None:
    checks = [Check("a", True, True, ""), Check("b", False, False, "w"), Check("c", True, False, "")]
    report = QualityReport("X", checks)
    assert [c.name for c in report.warnings] == ["b"] and report.passed
    assert report.to_dict()["checks"][1] == {"name": "b", "passed": False, "blocking": False, "detail": "w"}


def test_min_rows_must_be_positive(good: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="min_rows=0"):
        validate_bars(good, SYMBOL, min_rows=0)


def test_nulls_in_dates_are_reported(good: pl.DataFrame) -> None:
    bad = _set(good, 3, date=None)
    with pytest.raises(DataQualityError, match="'no_nulls'.*row 3 \\(date=None"):
        validate_bars(bad, SYMBOL, min_rows=10)


def test_dates_must_be_date_typed(good: pl.DataFrame) -> None:
    bad = good.with_columns(pl.col("date").cast(pl.Datetime("us")))
    with pytest.raises(DataQualityError, match="date is Datetime.*need Date"):
        validate_bars(bad, SYMBOL, min_rows=10)

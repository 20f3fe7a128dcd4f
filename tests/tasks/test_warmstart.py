"""Restatement detection (tasks.warmstart.restatement) on hand-made bars."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from tasks.warmstart import restatement


def bars(closes: list[float], start: dt.date = dt.date(2012, 1, 2)) -> pl.DataFrame:
    n = len(closes)
    return pl.DataFrame({
        "date": [start + dt.timedelta(days=i) for i in range(n)], "open": closes, "high": [c * 1.01 for c in closes],
        "low": [c * 0.99 for c in closes], "close": closes, "volume": [1e6] * n})


def test_unchanged_history_plus_new_bars_is_no_restatement():
    old = bars([10.0, 11.0, 12.0, 13.0])
    assert restatement(old, bars([10.0, 11.0, 12.0, 13.0, 14.0])) is None
    # a shorter window of the same history (a --days window that moved on) is no change either
    assert restatement(old, bars([11.0, 12.0, 13.0, 14.0], dt.date(2012, 1, 3))) is None


def test_a_rewritten_past_close_is_found_with_its_date_and_size():
    old = bars([10.0, 11.0, 12.0, 13.0])
    new = bars([10.0, 11.0, 12.6, 13.0, 14.0])  # 2012-01-04: 12 -> 12.6, +5%
    r = restatement(old, new)
    assert r["first_date"] == dt.date(2012, 1, 4) and r["size"] == pytest.approx(0.05)
    assert "1 bars changed" in r["detail"]
    # a split adjustment rewrites every earlier bar: the first date is the first bar
    halved = bars([5.0, 5.5, 6.0, 6.5, 7.0])
    r = restatement(old, halved)
    assert r["first_date"] == dt.date(2012, 1, 2) and r["size"] == pytest.approx(0.5)
    # a bar the champion trained on that has disappeared
    gone = bars([10.0, 11.0, 12.0, 13.0]).filter(pl.col("date") != dt.date(2012, 1, 3))
    r = restatement(old, gone)
    assert r["first_date"] == dt.date(2012, 1, 3) and "1 missing" in r["detail"]

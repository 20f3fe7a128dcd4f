"""The Bars contract (shared/DESIGN.md), in one place.

Bars: a Polars frame with exactly the columns ``date`` (pl.Date) and ``open
high low close volume`` (pl.Float64), in that order, prices split- and
dividend-adjusted. Every source returns this (``tasks.sources.load_bars``
checks it with ``check_bars``); what the values must satisfy (sorted unique
dates, positive prices ...) is ``tasks.validate``'s job, not this module's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

import numpy as np
import polars as pl

PRICE_COLUMNS = ("open", "high", "low", "close")
BARS_COLUMNS = ("date", *PRICE_COLUMNS, "volume")
BARS_SCHEMA = {"date": pl.Date, **{c: pl.Float64 for c in (*PRICE_COLUMNS, "volume")}}

_SYMBOL_RE = re.compile(r"[A-Za-z0-9^][A-Za-z0-9.\-^=]{0,19}")
_SYMBOL_RULE = (
    "1-20 characters from letters, digits, '.', '-', '^', '=', "
    "starting with a letter, digit or '^' (e.g. AAPL, BRK-B, ^GSPC, EURUSD=X)"
)


def validate_symbol(symbol: str) -> str:
    """Return the canonical (upper-case) symbol, or raise ValueError.

    Called before a symbol becomes part of any path: the rule admits no '/',
    and no leading '.', so '../x' or '..' can never name a file outside the
    intended folder.
    """
    if not isinstance(symbol, str) or _SYMBOL_RE.fullmatch(symbol) is None:
        raise ValueError(f"invalid symbol {symbol!r}: a symbol is {_SYMBOL_RULE}")
    return symbol.upper()


def schema_problems(frame: pl.DataFrame) -> list[str]:
    """How ``frame``'s columns break the Bars schema, one phrase per problem
    ("volume missing", "volume is Int64, need Float64", ...); empty when they
    do not. Shared by ``check_bars`` and validation's "columns" check."""
    problems = [
        f"{name} missing" if name not in frame.schema else f"{name} is {frame.schema[name]}, need {dtype}"
        for name, dtype in BARS_SCHEMA.items()
        if frame.schema.get(name) != dtype
    ]
    extra = [name for name in frame.columns if name not in BARS_SCHEMA]
    if extra:
        problems.append(f"extra column(s) {extra}")
    if not problems and tuple(frame.columns) != BARS_COLUMNS:
        problems.append(f"columns in the order {frame.columns}, need {list(BARS_COLUMNS)}")
    return problems


def check_bars(frame: pl.DataFrame, symbol: str) -> pl.DataFrame:
    """Return ``frame`` unchanged if its columns are exactly the Bars schema,
    else raise ValueError naming the symbol, each wrong column and its type."""
    problems = schema_problems(frame)
    if problems:
        raise ValueError(
            f"{symbol}: bars break the Bars contract: {'; '.join(problems)}. To fix: return "
            f"frame.select({list(BARS_COLUMNS)}).cast(BARS_SCHEMA) (date as pl.Date, the rest pl.Float64)"
        )
    return frame


def canonical_column(name: str) -> str:
    """'Adj Close', 'adj_close', 'AdjClose' -> 'adj_close'; 'Date' -> 'date'.

    How files and yfinance frames spell a column, mapped onto the Bars names."""
    key = re.sub(r"[\s\-_]+", "_", name.strip().lower())
    return "adj_close" if key.replace("_", "") == "adjclose" else key


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


def bars_as_of(bars: pl.DataFrame, as_of: dt.date | None) -> pl.DataFrame:
    """The bars dated on or before ``as_of`` (all of them for None): what a run
    as of that day could have seen (DESIGN.md, As-of)."""
    return bars if as_of is None else bars.filter(pl.col("date") <= as_of)

"""``sample``: real daily bars of AAPL, GOOG, IBM, MSFT (Quandl WIKI, public
domain) shipped in ``tasks/data/`` so the quickstart runs offline. See
``tasks/data/SOURCE.md`` for where they come from and how they were adjusted."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import polars as pl

from tasks.bars import BARS_COLUMNS, BARS_SCHEMA
from tasks.sources._base import Request, SourceError

SOURCE = "sample"
SAMPLE_SYMBOLS = ("AAPL", "GOOG", "IBM", "MSFT")
SAMPLE_PATH = Path(__file__).resolve().parents[1] / "data" / "sample_bars.parquet"
# The bars also depend on this file, not only on code: the registry hashes it too.
DATA_FILES = (SAMPLE_PATH,)


@cache
def _sample_table() -> pl.DataFrame:
    """The shipped sample file, read once per process rather than on every
    sample load. Never returned as it is: ``load`` hands out a new frame
    (filtered, selected, cast), so a caller that writes into its bars cannot
    change what the next caller gets."""
    return pl.read_parquet(SAMPLE_PATH)


def load(request: Request) -> pl.DataFrame:
    symbol = request.symbol
    if symbol not in SAMPLE_SYMBOLS:
        raise SourceError(
            f"{symbol}: not in the shipped sample data ({', '.join(SAMPLE_SYMBOLS)}); "
            "use one of these, --source synthetic (any name) or --source yfinance"
        )
    frame = _sample_table().filter(pl.col("symbol") == symbol)
    return frame.select(BARS_COLUMNS).cast(BARS_SCHEMA)

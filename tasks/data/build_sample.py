"""Regenerate ``tasks/data/sample_bars.parquet`` from ``bokeh_sampledata.stocks``.

    pip install bokeh_sampledata
    python -m tasks.data.build_sample

The source series (Quandl WIKI prices, public domain) hold unadjusted OHLCV
plus ``adj_close``; ``tasks.bars.apply_adjustment`` scales open, high, low
and close by adj_close / close and divides volume by it, the same rule the
``files:DIR`` source applies to Yahoo-style CSVs. See SOURCE.md. Not a runtime
dependency: the project only reads the committed Parquet file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

from tasks.bars import BARS_COLUMNS, BARS_SCHEMA, apply_adjustment
from tasks.sources.sample import SAMPLE_PATH, SAMPLE_SYMBOLS


def build() -> pl.DataFrame:
    """The sample table: ``symbol`` (Enum) then the Bars columns, by symbol and date."""
    from bokeh_sampledata import stocks  # dev-only; imported here so the module loads without it

    frames = []
    for symbol in SAMPLE_SYMBOLS:
        raw = pl.DataFrame(getattr(stocks, symbol))
        raw = raw.with_columns(
            pl.col("date").str.to_date("%Y-%m-%d"),
            pl.col("open", "high", "low", "close", "volume", "adj_close").cast(pl.Float64),
        )
        bars = apply_adjustment(raw).select(BARS_COLUMNS).cast(BARS_SCHEMA)
        if not bars["date"].is_sorted() or bars["date"].n_unique() != bars.height:
            raise ValueError(f"{symbol}: bokeh_sampledata dates are not strictly increasing")
        frames.append(bars.with_columns(symbol=pl.lit(symbol, dtype=pl.Enum(SAMPLE_SYMBOLS))))
    return pl.concat(frames).select("symbol", *BARS_COLUMNS)


def main(path: Path = SAMPLE_PATH) -> None:
    table = build()
    # zstd at its highest level: the file is written once and read often.
    table.write_parquet(path, compression="zstd", compression_level=22, statistics=True)
    spans = table.group_by("symbol", maintain_order=True).agg(
        pl.len().alias("rows"), pl.col("date").min().alias("first"), pl.col("date").max().alias("last")
    )
    print(spans)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLE_PATH)

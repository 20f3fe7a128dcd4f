"""``files:DIR``: the user's own ``DIR/SYMBOL.csv`` or ``DIR/SYMBOL.parquet``,
column names matched case-insensitively, adjusted by ``Adj Close`` when present.

The file is taken as it is (ordering and adjustment aside): a duplicate date
reaches validation and is reported there, never dropped here.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from tasks.bars import BARS_COLUMNS, apply_adjustment, canonical_column, validate_symbol
from tasks.sources._base import Request, SourceError

SOURCE = "files:DIR"
_NAME = SOURCE.partition(":")[0]


def files_dir(source: str) -> Path | None:
    """The directory of a ``files:DIR`` source, with ``~`` expanded; None for any other source."""
    name, _, directory = source.partition(":")
    return Path(directory).expanduser() if name == _NAME and directory else None


def load(request: Request) -> pl.DataFrame:
    symbol = request.symbol
    path = find_file(symbol, Path(request.arg).expanduser())
    try:
        if path.suffix.lower() == ".csv":
            raw = pl.read_csv(path, infer_schema=False, null_values=["null", "NaN", "nan", "NA", ""])
        else:
            raw = pl.read_parquet(path)
    except pl.exceptions.PolarsError as exc:
        raise SourceError(f"{symbol}: cannot read {path}: {exc}; fix or replace the file") from exc
    return _bars_from_table(raw, symbol, str(path))


def find_file(symbol: str, directory: Path) -> Path:
    """The one ``DIR/SYMBOL.csv`` or ``DIR/SYMBOL.parquet`` (names matched case-insensitively)."""
    symbol = validate_symbol(symbol)
    where = f"files:{directory}"
    if not directory.is_dir():
        raise SourceError(f"{symbol}: source {where}: directory {directory} does not exist; fix the path")
    found = sorted(
        p for p in directory.iterdir()
        if p.stem.upper() == symbol and p.suffix.lower() in (".csv", ".parquet") and p.is_file()
    )
    if not found:
        raise SourceError(
            f"{symbol}: source {where}: no {symbol}.csv or {symbol}.parquet in {directory}; "
            "add the file (columns Date, Open, High, Low, Close, Volume, optional Adj Close)"
        )
    if len(found) > 1:
        raise SourceError(
            f"{symbol}: source {where}: several files match: {', '.join(p.name for p in found)}; keep one"
        )
    return found[0]


def _bars_from_table(raw: pl.DataFrame, symbol: str, where: str) -> pl.DataFrame:
    """Columns matched case-insensitively, typed, adjusted, sorted by date."""
    names = [canonical_column(c) for c in raw.columns]
    used = (*BARS_COLUMNS, "adj_close")
    dup = sorted({n for n in names if n in used and names.count(n) > 1})
    if dup:
        raise SourceError(f"{symbol}: {where}: columns {dup} appear more than once (case-insensitively); keep one")
    frame = raw.rename(dict(zip(raw.columns, names)))
    missing = [c for c in BARS_COLUMNS if c not in frame.columns]
    if missing:
        raise SourceError(
            f"{symbol}: {where}: missing column(s) {missing} (found {raw.columns}); "
            "a bars file needs Date, Open, High, Low, Close, Volume (Adj Close optional)"
        )
    keep = [*BARS_COLUMNS, *(["adj_close"] if "adj_close" in frame.columns else [])]
    frame = frame.select(keep)
    frame = frame.with_columns(_to_date(frame.get_column("date"), symbol, where))
    for name in keep[1:]:
        frame = frame.with_columns(_to_float(frame.get_column(name), symbol, where))
    return apply_adjustment(frame).sort("date", maintain_order=True)


def _to_date(col: pl.Series, symbol: str, where: str) -> pl.Series:
    if col.dtype == pl.Date:
        return col
    if isinstance(col.dtype, pl.Datetime):
        return col.dt.date()  # the local date of a tz-aware stamp
    # "2024-01-02", or "2024-01-02 00:00:00-05:00" as pandas writes tz-aware daily bars
    out = col.cast(pl.String).str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
    _raise_unconverted(col, out, symbol, where, "a date YYYY-MM-DD")
    return out


def _to_float(col: pl.Series, symbol: str, where: str) -> pl.Series:
    out = col.cast(pl.Float64, strict=False)
    _raise_unconverted(col, out, symbol, where, "a number")
    return out


def _raise_unconverted(before: pl.Series, after: pl.Series, symbol: str, where: str, want: str) -> None:
    lost = after.is_null() & before.is_not_null()
    if lost.any():
        row = int(lost.arg_true()[0])
        raise SourceError(
            f"{symbol}: {where}: column {before.name!r} row {row}: {before[row]!r} is not {want}; fix the file"
        )

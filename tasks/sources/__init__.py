"""Where bars come from: ``load_bars(symbol, source, ...)`` -> Bars (``tasks.bars``).

Each public module of this package is one source, found by name, so adding
a source means adding one file here that declares:

    SOURCE = "name"          # how users write it; "name:ARG" if it takes an argument ("files:DIR")
    def load(request: Request) -> pl.DataFrame: ...   # Bars, any date range
    DATA_FILES = (path, ...) # optional: data files its bars depend on besides code

Modules whose name starts with '_' are helpers, not sources. The registry
validates the symbol and the source, checks what ``load`` returns against the
Bars contract (``check_bars``) and cuts the date range, so a source does none
of that. Sources return the data as they found it (ordering and adjustment
aside); judging it is ``tasks.validate.validate_bars``'s job.

``source_code_hash`` digests every file the sources' output depends on; the
Prefect fetch cache is keyed on it, so editing any of them refetches.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import pkgutil
from datetime import date
from functools import cache
from pathlib import Path
from types import ModuleType

import polars as pl

from tasks.bars import check_bars, validate_symbol
from tasks.sources._base import Request, SourceError
from tasks.sources.files import files_dir, find_file
from tasks.sources.sample import SAMPLE_SYMBOLS
from tasks.sources.synthetic import synthetic_bars

__all__ = [
    "SAMPLE_SYMBOLS", "Request", "SourceError", "check_source", "files_dir", "find_file", "known_sources",
    "load_bars", "source_code_files", "source_code_hash", "synthetic_bars",
]

# The folder that holds the ``tasks`` package: absolute ``tasks.x`` imports resolve from here.
_ROOT = Path(__file__).resolve().parents[2]


def load_bars(
    symbol: str,
    source: str,
    start: date | None = None,
    end: date | None = None,
    days: int | None = None,
    cache_dir: Path | None = None,
    seed: int = 0,
) -> pl.DataFrame:
    """Bars for ``symbol`` from ``source``, dates in [start, end], last ``days`` rows.

    ``end=None`` means "as of today": for yfinance, through today's date; the
    other sources have fixed histories, so it means "to their last bar".
    ``seed`` only affects ``synthetic``; ``cache_dir`` only ``yfinance``
    (default ``results/cache/yfinance``).
    """
    symbol = validate_symbol(symbol)
    check_source(source, symbol=symbol)
    if start is not None and end is not None and start > end:
        raise ValueError(f"{symbol}: start {start} is after end {end}; swap them")
    if days is not None and days < 1:
        raise ValueError(f"{symbol}: days={days}; use a positive number of rows")
    name, _, arg = source.partition(":")
    request = Request(symbol, arg, start=start, end=end, cache_dir=cache_dir, seed=seed)
    bars = check_bars(_sources()[name].load(request), symbol)
    return _select(bars, symbol, source, start, end, days)


def check_source(source: str, *, symbol: str | None = None) -> str:
    """Return ``source`` if a source module serves it, else raise SourceError
    naming it and the known sources. ``symbol``, if given, starts the message."""
    name, colon, arg = source.partition(":")
    module = _sources().get(name)
    # A source that takes an argument needs one ("files:" is not a source); the others take none.
    if module is not None and (bool(arg) if ":" in module.SOURCE else not colon):
        return source
    raise SourceError(
        f"{symbol + ': ' if symbol else ''}unknown source {source!r}; "
        f"use one of {', '.join(known_sources())}"
    )


def known_sources() -> list[str]:
    """How each source is written: plain names first, then those taking an argument."""
    return sorted((m.SOURCE for m in _sources().values()), key=lambda usage: (":" in usage, usage))


@cache
def _sources() -> dict[str, ModuleType]:
    """The source modules of this package by name ("files" for files:DIR), imported once."""
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        usage = getattr(module, "SOURCE", None)
        if not isinstance(usage, str) or not callable(getattr(module, "load", None)):
            raise TypeError(
                f"{module.__name__}: a source module needs SOURCE = 'name' (or 'name:ARG') and "
                "load(request) -> Bars; add them, or start the module's name with '_' if it is a helper"
            )
        name = usage.partition(":")[0]
        if name in found:
            raise TypeError(
                f"{module.__name__}: source {name!r} is already served by {found[name].__name__}; rename one"
            )
        found[name] = module
    return found


def _select(
    bars: pl.DataFrame, symbol: str, source: str, start: date | None, end: date | None, days: int | None
) -> pl.DataFrame:
    full = bars
    if start is not None:
        bars = bars.filter(pl.col("date") >= start)
    if end is not None:
        bars = bars.filter(pl.col("date") <= end)
    if days is not None:
        bars = bars.tail(days)
    if bars.height == 0:
        have = f"{full['date'].min()} to {full['date'].max()}" if full.height else "no rows"
        raise SourceError(
            f"{symbol}: no bars from source {source!r} between {start or 'the start'} and "
            f"{end or 'the end'}; the source has {have}. Choose --start/--end (or --as-of) inside that range"
        )
    return bars


# --- what the sources' output depends on ------------------------------------------


def source_code_hash() -> str:
    """sha256 hex digest of every file in ``source_code_files()``: their
    contents and their paths below the project root, so it is the same in any checkout."""
    digest = hashlib.sha256(b"sources-v1;")
    for path in source_code_files():
        data = path.read_bytes()
        name = path.relative_to(_ROOT).as_posix() if path.is_relative_to(_ROOT) else str(path)
        digest.update(f"{name} {len(data)};".encode())
        digest.update(data)
    return digest.hexdigest()


def source_code_files() -> list[Path]:
    """The files the sources' output depends on, sorted: this registry, every
    source module, each ``tasks`` module these import (at any depth, also
    inside functions, packages' ``__init__`` included) and the sources' DATA_FILES.

    Found by reading the imports rather than listed by hand, so a new import
    in a source cannot escape the fetch cache key.
    """
    todo = [Path(__file__).resolve(), *(Path(m.__file__).resolve() for m in _sources().values())]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += _imported_files(path)
    data = {Path(p).resolve() for m in _sources().values() for p in getattr(m, "DATA_FILES", ())}
    return sorted(seen | data)


def _imported_files(path: Path) -> set[Path]:
    """The files of the ``tasks`` modules that the Python file ``path`` imports anywhere in it."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found |= _module_files(_ROOT, alias.name.split("."))
        elif isinstance(node, ast.ImportFrom):
            # Relative imports start from this file's package, absolute ones from the root.
            where = path.parents[node.level - 1] if node.level else _ROOT
            parts = node.module.split(".") if node.module else []
            for alias in node.names:  # ``from tasks import bars`` imports a module: a name may be one
                found |= _module_files(where, [*parts, alias.name])
    return found


def _module_files(where: Path, parts: list[str]) -> set[Path]:
    """The files that importing ``parts`` (a.b.c) from ``where`` runs: a/__init__.py,
    a/b/__init__.py, then a/b/c.py or a/b/c/__init__.py; outside ``tasks``, none."""
    if where == _ROOT and parts[0] != "tasks":
        return set()  # the standard library or a third-party package
    files = {where / "__init__.py"} if where != _ROOT else set()
    for i in range(1, len(parts) + 1):
        files |= {where.joinpath(*parts[:i], "__init__.py"), where.joinpath(*parts[:i - 1], f"{parts[i - 1]}.py")}
    return {f for f in files if f.is_file()}

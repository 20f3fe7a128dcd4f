"""What the command lines share: the flags that override the config, and the
checks that fail a whole run before any work is done (exit code 2)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from configs.load import named_overrides, resolve_symbols
from configs.schema import Config

def iso_date(text: str) -> dt.date:
    """An argparse type: YYYY-MM-DD, with a message that says so."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD, e.g. 2012-06-01") from None


# name (as in configs.load.OVERRIDE_KEYS) -> (flag, type, help)
FLAGS: dict[str, tuple[str, Any, str]] = {
    "symbols": ("--symbols", str, "comma-separated tickers or universe names (TEST, SAMPLE, TIER_1)"),
    "source": ("--source", str, "sample | synthetic | yfinance | files:DIR"),
    "days": ("--days", int, "last N trading days of history"),
    "epochs": ("--epochs", int, "most training epochs per symbol"),
    "batch_size": ("--batch-size", int, "training batch size"),
    "seed": ("--seed", int, "training seed"),
    "threads": ("--threads", int, "torch threads per trainer (default: cores / --parallel); "
                                  "the weights depend on it, so fix it to compare runs"),
    "parallel": ("--parallel", int, "symbols handled at the same time"),
    "results_dir": ("--results", str, "results directory (default results/)"),
    "store_url": ("--store-url", str, "SQLAlchemy URL of the results database (default sqlite RESULTS/store.db)"),
    "as_of": ("--as-of", iso_date, "use only bars dated on or before this day, YYYY-MM-DD (replays, backfills); "
                                   "default: all bars to today"),
}


def add_flags(parser: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        flag, kind, text = FLAGS[name]
        parser.add_argument(flag, dest=name, type=kind, help=text, **({"metavar": "DATE"} if name == "as_of" else {}))


def symbol_list(text: str | None) -> list[str] | None:
    """``"AAPL, msft"`` -> ``["AAPL", "msft"]``; None stays None (flag not given)."""
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def flag_overrides(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The given flags among ``names`` as config overrides (``configs.load.apply_overrides``)."""
    values = {n: getattr(args, n) for n in names}
    if "symbols" in values:
        values["symbols"] = symbol_list(values["symbols"])
    return named_overrides(**values)


def check_run(config: Config) -> list[str]:
    """What can be known wrong before any symbol is touched: the symbols or
    universe names, the source, the calendar, the feature columns, and
    whether the results database answers (a wrong URL or password, a server
    that is down). Returns the symbols."""
    # Imported here: the pipeline's modules pull in torch and Prefect, which
    # `--help` does not need.
    from tasks.calendar import check_calendar
    from tasks.features import feature_names
    from tasks.sources import check_source
    from tasks.store import check_store

    check_source(config.data.source)
    check_calendar(config.data.calendar)
    feature_names(config.features)
    symbols = resolve_symbols(config.run.symbols)
    check_as_of(config, symbols)
    check_store(config.run.store_url)  # last: it may wait for a server (connect_timeout)
    return symbols


def check_as_of(config: Config, symbols: list[str]) -> None:
    """``data.as_of`` before a symbol's first bar is a mistake about the whole
    run: ValueError naming the symbol and its first bar. Checked on the
    offline sources (sample, synthetic, files:); for yfinance the fetch says
    it per symbol. A symbol the source does not have is left to its own run."""
    from tasks.sources import SourceError, load_bars

    as_of, source = config.data.as_of, config.data.source
    if as_of is None or source == "yfinance":
        return
    for symbol in symbols:
        try:
            first = load_bars(symbol, source, seed=config.data.seed)["date"][0]
        except (SourceError, ValueError):
            continue
        if as_of < first:
            raise ValueError(f"{symbol}: --as-of {as_of} is before its first bar {first} in source {source!r}; "
                             f"give a date on or after {first}")

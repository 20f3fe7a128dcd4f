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
    "executor": ("--executor", str, "where each symbol runs: threads (this process, default), workers (flow runs "
                                    "on a Prefect work pool: needs PREFECT_API_URL and `python -m "
                                    "deployments.workers`), dask (a Dask cluster)"),
    "work_pool": ("--work-pool", str, "the Prefect work pool of --executor workers (default mambaflow)"),
    "dask_address": ("--dask-address", str, "the Dask scheduler of --executor dask, tcp://HOST:8786 (default: a "
                                            "local cluster of --parallel processes)"),
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


def check_run(config: Config, subflow: str = "train-symbol") -> list[str]:
    """What can be known wrong before any symbol is touched: the symbols or
    universe names, the source, the calendar, the feature columns, and
    whether the results database answers (a wrong URL or password, a server
    that is down), and whether ``run.executor`` can run ``subflow`` (the
    per-symbol flow's name). Returns the symbols."""
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
    check_store(config.run.store_url)  # it may wait for a server (connect_timeout)
    check_executor(config, subflow)
    return symbols


EXECUTOR_TIMEOUT = 10  # seconds to wait for the Prefect API or a Dask scheduler before giving up


def check_executor(config: Config, subflow: str) -> None:
    """``run.executor`` can run this: ValueError naming what is missing and the fix.

    ``workers``: a Prefect server the workers share (PREFECT_API_URL), the
    work pool, and the ``SUBFLOW/worker`` deployment on it. ``dask`` with an
    address: a scheduler that answers."""
    run = config.run
    if run.executor == "workers":
        _check_workers(run.work_pool, subflow)
    elif run.executor == "dask" and run.dask_address:
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            raise ValueError(f"--dask-address {run.dask_address}: the Dask workers report to Prefect, and "
                             "PREFECT_API_URL is not set (a temporary server on 127.0.0.1 is out of their reach): "
                             "start a server (`prefect server start`), then `export PREFECT_API_URL="
                             "http://HOST:4200/api` here and for every `dask worker`")
        _check_dask(run.dask_address)


def _check_workers(pool: str, subflow: str) -> None:
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from flows.fanout import WORKER_DEPLOYMENT

    api = PREFECT_API_URL.value()
    if not api:
        raise ValueError("--executor workers needs a Prefect server that this process and the workers share, and "
                         "PREFECT_API_URL is not set: start one (`prefect server start`), then "
                         "`export PREFECT_API_URL=http://HOST:4200/api` here and on every worker machine")
    deployment = f"{subflow}/{WORKER_DEPLOYMENT}"
    fix = f"create both with `python -m deployments.workers --pool {pool}`, then start workers with " \
          f"`prefect worker start --pool {pool}`"
    try:
        with get_client(sync_client=True, httpx_settings={"timeout": EXECUTOR_TIMEOUT}) as client:
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                raise ValueError(f"--work-pool {pool!r}: no such work pool on the Prefect server {api}; {fix}") from None
            try:
                found = client.read_deployment_by_name(deployment)
            except ObjectNotFound:
                raise ValueError(f"--executor workers: no deployment {deployment!r} on the Prefect server {api}; "
                                 f"{fix}") from None
            if found.work_pool_name != pool:
                raise ValueError(f"--executor workers: deployment {deployment!r} is on work pool "
                                 f"{found.work_pool_name!r}, not {pool!r}; {fix}")
    except (httpx.HTTPError, OSError) as exc:
        raise ValueError(f"--executor workers: the Prefect server at PREFECT_API_URL={api} does not answer "
                         f"({type(exc).__name__}: {exc}); start it, or fix PREFECT_API_URL") from None


def _check_dask(address: str) -> None:
    from distributed import Client

    try:
        Client(address, timeout=EXECUTOR_TIMEOUT).close()
    except (OSError, TimeoutError) as exc:
        raise ValueError(f"--dask-address {address}: no Dask scheduler answered within {EXECUTOR_TIMEOUT} s "
                         f"({type(exc).__name__}: {exc}); start one (`dask scheduler`, then `dask worker "
                         f"{address}` on each machine), fix the address, or leave it out for a local cluster") from None


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

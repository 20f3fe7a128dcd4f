"""Nightly retrain, then forecast: ``python -m flows.nightly`` (scheduled by ``deployments/``).

``nightly_retrain`` first scores the stored forecasts that came due
(``flows.score``), then runs a training run (``flows.train.run_symbols``)
whose per-symbol subflow, ``nightly_symbol``, trains the symbol on fresh bars
(``train_symbol``: warm-started from its champion where
``retrain.warm_start`` allows, then gated) and forecasts from the symbol's
champion, the new model if it was promoted (``forecast_symbol``). A
``nightly-summary`` artifact counts promoted, kept, rejected, restated and
failed symbols. The config is ``configs/nightly.yaml`` unless told
otherwise; the parameters below override it for one run (the Prefect UI's
run form shows them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from configs.load import ConfigError, load_config, named_overrides
from configs.schema import Config
from flows.cli import add_flags, check_run, flag_overrides, symbol_list
from flows.fanout import WorkerRun, error_text
from flows.predict import forecast_symbol, publish_forecasts, stored_forecasts
from flows.score import score_forecasts
from flows.train import run_symbols, summary_table, symbol_outcome, train_symbol
from tasks.store import ResultsStore

NIGHTLY_CONFIG = "configs/nightly.yaml"
REPO_ROOT = Path(__file__).resolve().parent.parent


class NightlyError(RuntimeError):
    """Some symbols failed to train or forecast (the others were stored and forecast)."""

    def __init__(self, message: str, outcomes: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.outcomes = outcomes

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.outcomes)


def resolve_config_path(path: str) -> Path:
    """``path`` as given if it exists (relative to the working directory),
    else relative to the repository, so ``configs/nightly.yaml`` works from a
    worker's or server's own directory."""
    given = Path(path)
    if given.is_file():
        return given
    if not given.is_absolute() and (REPO_ROOT / given).is_file():
        return REPO_ROOT / given
    raise ConfigError(f"config file {path} not found in {Path.cwd()} nor in {REPO_ROOT}; "
                      f"set config_path to an existing YAML file (e.g. {NIGHTLY_CONFIG})")


@flow(name="nightly-symbol", flow_run_name="nightly-{symbol}")
def nightly_symbol(symbol: str, config: Config, run_id: str, resume: bool = False) -> dict[str, Any]:
    """Train one symbol, then forecast from its champion. A training failure
    raises (the parent records it); a forecast failure is kept in the outcome."""
    outcome = train_symbol(symbol, config, run_id, resume)
    state = forecast_symbol(symbol, config.data.source, config.run.results_dir, config.run.store_url,
                            as_of=config.data.as_of, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        return outcome | {"forecasts": [], "error": f"forecast: {error_text(result)}"}
    return outcome | {"forecasts": result}


def nightly_outcome(store: ResultsStore, run_id: str, symbol: str, result: Any) -> dict[str, Any]:
    """``nightly_symbol``'s outcome from what the executor handed back; for a
    ``WorkerRun``, the training outcome and the forecasts, read from the store."""
    if not isinstance(result, WorkerRun):
        return result
    outcome = symbol_outcome(store, run_id, symbol, result)
    forecasts = stored_forecasts(store, symbol, result)
    if isinstance(forecasts, LookupError):
        return outcome | {"forecasts": [], "error": f"forecast: none stored by flow run {result.flow_run_name} "
                                                     f"(its log says why)"}
    return outcome | {"forecasts": forecasts}


def nightly_config(config_path: str = NIGHTLY_CONFIG, **overrides: Any) -> Config:
    """The nightly config file with the run's overrides (names of ``configs.load.OVERRIDE_KEYS``)."""
    return load_config(resolve_config_path(config_path), named_overrides(**overrides))


@flow(name="nightly-retrain")
def nightly_retrain(config_path: str = NIGHTLY_CONFIG, symbols: list[str] | None = None,
                    source: str | None = None, days: int | None = None, epochs: int | None = None,
                    results_dir: str | None = None, store_url: str | None = None,
                    parallel: int | None = None, as_of: dt.date | None = None, executor: str | None = None,
                    work_pool: str | None = None, dask_address: str | None = None) -> list[dict[str, Any]]:
    """Retrain every symbol of the config on fresh bars, then forecast each one that trained.

    Fails (after storing everything that succeeded) if any symbol failed to
    train or forecast, so the UI shows the run as Failed with the reasons.

    Args:
        config_path: YAML config, relative to the working directory or the repository.
        symbols: tickers or universe names (SAMPLE, TEST, TIER_1); empty: the config's.
        source: sample | synthetic | yfinance | files:DIR; empty: the config's.
        days: last N trading days of history; empty: the config's.
        epochs: most training epochs per symbol; empty: the config's.
        results_dir: results directory (models, store.db); empty: the config's.
        store_url: SQLAlchemy URL of the results database; empty: the config's.
        parallel: symbols handled at the same time; empty: the config's.
        as_of: the night to run as (bars dated on or before it only; replays); empty: today.
        executor: threads | workers | dask (where each symbol runs); empty: the config's.
        work_pool: the Prefect work pool of executor workers; empty: the config's.
        dask_address: the Dask scheduler of executor dask (tcp://HOST:8786); empty: a local cluster.
    """
    log = get_run_logger()
    config = nightly_config(config_path, symbols=symbols, source=source, days=days, epochs=epochs,
                            results_dir=results_dir, store_url=store_url, parallel=parallel, as_of=as_of,
                            executor=executor, work_pool=work_pool, dask_address=dask_address)
    log.info("config %s: symbols %s, source %s, %d epochs, results in %s", config_path, config.run.symbols,
             config.data.source, config.training.epochs, Path(config.run.results_dir).resolve())
    scored = score_forecasts(config.run.symbols, config.data.source, config.run.results_dir, config.run.store_url,
                             config.data.as_of, config.run.parallel)
    outcomes = run_symbols(config, nightly_symbol, outcome=nightly_outcome)
    forecasts = [row for o in outcomes for row in o.get("forecasts", [])]
    publish_forecasts(forecasts, config.run.results_dir)
    counts = nightly_counts(outcomes)
    create_table_artifact(key="nightly-summary", table=[counts | {"forecasts scored": scored["scored"]}],
                          description="the night's decisions: promoted (new champion), kept (the champion stays: the "
                                      "new model is a challenger or rejected), restated, failed")
    log.info("nightly: %s; %d forecasts scored", ", ".join(f"{v} {k}" for k, v in counts.items()), scored["scored"])
    failures = {o["symbol"]: o["error"] for o in outcomes if o["error"]}
    if failures:
        raise NightlyError(f"{len(failures)} of {len(outcomes)} symbols failed: "
                           + "; ".join(f"{s}: {e}" for s, e in failures.items()), outcomes)
    log.info("%d symbols retrained and forecast (%d forecasts)", len(outcomes), len(forecasts))
    return outcomes


def nightly_counts(outcomes: list[dict[str, Any]]) -> dict[str, int]:
    """Symbols promoted, kept (challenger), rejected, restated and failed."""
    return {"promoted": sum(o.get("decision") == "champion" for o in outcomes),
            "kept": sum(o.get("decision") == "challenger" for o in outcomes),
            "rejected": sum(o.get("decision") == "rejected" for o in outcomes),
            "restated": sum(bool(o.get("restated")) for o in outcomes),
            "warm": sum(o.get("init_from") is not None for o in outcomes),
            "failed": sum(o["status"] == "failed" for o in outcomes)}


NIGHTLY_FLAGS = ("symbols", "source", "days", "as_of", "epochs", "results_dir", "store_url", "parallel", "executor",
                 "work_pool", "dask_address")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.nightly", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=NIGHTLY_CONFIG, help=f"YAML config (default {NIGHTLY_CONFIG})")
    add_flags(p, *NIGHTLY_FLAGS)
    args = p.parse_args(argv)
    try:
        config = load_config(resolve_config_path(args.config), flag_overrides(args, *NIGHTLY_FLAGS))
        check_run(config, nightly_symbol.name)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kwargs = {n: getattr(args, n) for n in NIGHTLY_FLAGS} | {"symbols": symbol_list(args.symbols)}
    try:
        outcomes = nightly_retrain(args.config, **kwargs)
    except NightlyError as exc:
        outcomes = exc.outcomes
    print()
    print(summary_table(outcomes, config.windows.horizons))
    failed = [o["symbol"] for o in outcomes if o["error"]]
    print(f"\n{len(outcomes) - len(failed)} of {len(outcomes)} symbols retrained and forecast"
          + (f"; failed: {', '.join(failed)}" if failed else "") + "\n"
          + ", ".join(f"{k}: {v}" for k, v in nightly_counts(outcomes).items()))
    return 1 if failed else 0


if __name__ == "__main__":
    # The flows of the module flows.nightly, not of __main__: Dask and the workers
    # find a flow by its module (a flow of __main__ would travel without its globals).
    from flows.nightly import main as _main

    sys.exit(_main())

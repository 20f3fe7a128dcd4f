"""Forecast the next days from each symbol's champion model: ``python -m flows.predict --symbols AAPL``.

``predict_universe`` maps one ``forecast_symbol`` subflow per symbol, the way
training does:

    load_model -> fetch_bars -> validate_bars -> build_features -> forecast -> save_forecasts

The symbol's champion in the registry (``tasks.registry``; ``--run RUN_ID``
picks another of its models), fresh bars (through the
same cached ``fetch_bars`` task as training), the latest window rebuilt with
the model's own feature list and training scaler, and one forecast per
horizon: the log return and the price ``close * exp(r)``. Rows go to the
``predictions`` table. A symbol with no model, or whose fresh data fails
validation, is a per-symbol failure; the others are still forecast. A symbol
with no champion is not forecast (the error names its rejected runs) unless
``--fallback naive`` is given: then the random walk's forecast (the last close
at every horizon, no interval) is stored with flag ``naive``. The symbol's
challengers forecast too (unless ``--run`` is given): their rows are stored
with flag ``shadow`` (not printed), so live scoring compares them with the
champion on the same targets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from configs.load import ConfigError, apply_overrides, named_overrides
from configs.schema import Config
from flows.cli import add_flags, check_run, flag_overrides
from flows.fanout import WorkerRun, for_each_symbol, for_executor, local_results, split_outcomes
from flows.report import text_table
from tasks import registry, steps
from tasks.bars import bars_as_of, bars_fingerprint, validate_symbol
from tasks.calendar import target_dates
from tasks.forecast import forecast_data, model_config
from tasks.plan import min_forecast_bars
from tasks.store import ResultsStore, load_model, model_key


@flow(name="forecast-symbol", flow_run_name="forecast-{symbol}")
def forecast_symbol(symbol: str, source: str | None = None, results_dir: str = "results",
                    store_url: str | None = None, run_id: str | None = None, fallback: str | None = None,
                    as_of: dt.date | None = None) -> list[dict[str, Any]]:
    """Forecasts of every horizon from the symbol's champion (or run ``run_id``'s
    model), from bars dated on or before ``as_of``; raises on any failure."""
    validate_symbol(symbol)
    results = local_results(results_dir)
    with ResultsStore(results, store_url) as store:
        try:
            state, meta = steps.load_serving_model(store, symbol, run_id)
        except steps.ModelNotFoundError:
            if fallback != "naive":
                raise
            latest = registry.models(store, [symbol])[-1:]  # its data settings, if it has any model
            config = (model_config(load_model(store, model_key(symbol, latest[0]["run_id"]))[1]) if latest
                      else Config())
            rows = naive_rows(symbol, config, source, results, as_of)
            get_run_logger().warning("%s: no champion; stored the random walk's forecast (--fallback naive)", symbol)
            steps.save_forecasts(store, rows, symbol)
            return rows
        rows = _forecast_with(store, state, meta, symbol, source, results, as_of)
        if run_id is None:  # the challengers forecast too, stored as shadow forecasts beside the champion's
            for other in registry.models(store, [symbol]):
                if other["status"] == "challenger":
                    _forecast_with(store, *load_model(store, model_key(symbol, other["run_id"])), symbol, source,
                                   results, as_of, flag="shadow")
                    get_run_logger().info("%s: shadow forecasts of challenger %s stored", symbol, other["run_id"])
    return rows


def _forecast_with(store: ResultsStore, state: dict, meta: dict[str, Any], symbol: str, source: str | None,
                   results: Path, as_of: dt.date | None, flag: str | None = None) -> list[dict[str, Any]]:
    """One model's forecasts from its own features of the bars up to ``as_of``, stored; ``flag``
    (e.g. shadow) replaces the rows' own."""
    config = model_config(meta)
    data = forecast_data(config, source).model_copy(update={"as_of": as_of})
    cached = {"result_storage": results / "prefect"}
    bars = bars_as_of(steps.fetch_bars.with_options(**cached)(symbol, data, results), as_of)
    steps.validate_bars(bars, symbol, min_forecast_bars(meta["seq_len"]))
    frame = steps.build_features.with_options(**cached)(bars, config.features, symbol, bars_fingerprint(bars))
    rows = steps.forecast(state, meta, frame, symbol)
    if flag is not None:
        rows = [r | {"flag": flag} for r in rows]
    steps.save_forecasts(store, rows, symbol)
    return rows


def naive_rows(symbol: str, config: Config, source: str | None, results: Path,
               as_of: dt.date | None) -> list[dict[str, Any]]:
    """The random walk's forecast from the last bar on or before ``as_of``: return 0
    at ``config``'s horizons, price = last close, no interval, flag ``naive``."""
    data = forecast_data(config, source).model_copy(update={"as_of": as_of})
    bars = bars_as_of(steps.fetch_bars.with_options(result_storage=results / "prefect")(symbol, data, results), as_of)
    day, close = bars["date"][-1], float(bars["close"][-1])
    horizons = config.windows.horizons
    return [{"model_run_id": "naive", "symbol": symbol, "as_of": day, "horizon": int(h), "target_date": t,
             "predicted_return": 0.0, "predicted_price": close, "last_close": close, "lower_return": None,
             "upper_return": None, "lower_price": None, "upper_price": None, "quantiles": None, "flag": "naive"}
            for h, t in zip(horizons, target_dates(day, horizons, data.calendar))]


@flow(name="predict-universe")
def predict_universe(symbols: list[str], source: str | None = None, results_dir: str = "results",
                     store_url: str | None = None, parallel: int = 1, run_id: str | None = None,
                     fallback: str | None = None, as_of: dt.date | None = None, executor: str = "threads",
                     work_pool: str = "mambaflow", dask_address: str | None = None) -> dict[str, Any]:
    """Forecast every horizon for ``symbols`` (tickers or universe names).

    Args:
        symbols: tickers or universe names (SAMPLE, TEST, TIER_1).
        source: sample | synthetic | yfinance | files:DIR; empty: each model's own.
        results_dir: results directory (models, store.db).
        store_url: SQLAlchemy URL of the results database; empty: sqlite in results_dir.
        parallel: symbols forecast at the same time.
        run_id: forecast from this run's model instead of each symbol's champion.
        fallback: "naive": a symbol with no champion gets the random walk's forecast (flag naive).
        as_of: use only bars dated on or before this day; empty: all bars.
        executor: threads | workers | dask: where each symbol is forecast.
        work_pool: the Prefect work pool of executor workers.
        dask_address: the Dask scheduler of executor dask (tcp://HOST:8786); empty: a local cluster.
    """
    log = get_run_logger()
    # The same overrides and up-front checks as training (on a default config:
    # each model brings its own).
    config = for_executor(apply_overrides(Config(), named_overrides(
        symbols=symbols, source=source, results_dir=results_dir, store_url=store_url, parallel=parallel,
        executor=executor, work_pool=work_pool, dask_address=dask_address)))
    names = check_run(config, forecast_symbol.name)
    store_url = config.run.store_url
    outcomes = for_each_symbol(forecast_symbol, names, config.run,
                               {"source": source, "results_dir": results_dir, "store_url": store_url,
                                "run_id": run_id, "fallback": fallback, "as_of": as_of})
    if config.run.executor == "workers":  # the forecasts stayed on the workers: read them from the store
        with ResultsStore(results_dir, store_url) as store:
            outcomes = {s: stored_forecasts(store, s, r) if isinstance(r, WorkerRun) else r
                        for s, r in outcomes.items()}
    results, failures = split_outcomes(outcomes, log)
    rows = [row for result in results.values() for row in result]
    publish_forecasts(rows, results_dir)
    return {"predictions": rows, "failures": failures}


def stored_forecasts(store: ResultsStore, symbol: str, run: WorkerRun) -> list[dict[str, Any]] | LookupError:
    """The forecasts a worker's ``forecast_symbol`` stored for ``symbol`` (the
    champion's or the naive ones, not the shadow ones), as it returns them."""
    rows = [r for r in store.predictions(symbol) if r["created_at"] >= run.submitted and r["flag"] != "shadow"]
    if not rows:
        return LookupError(f"{symbol}: flow run {run.flow_run_name} completed but stored no forecast in "
                           f"{store.url}; is the worker writing to another store (--store-url)?")
    return rows


def publish_forecasts(rows: list[dict[str, Any]], results_dir: str) -> None:
    """The ``forecasts`` table artifact of a run (none when nothing was forecast)."""
    if rows:
        create_table_artifact(
            key="forecasts",
            description=f"forecasts from the champions (or the --run model) in {Path(results_dir).resolve()}",
            table=[{k: str(v) if isinstance(v, dt.date) else v for k, v in r.items()} for r in rows])


def forecast_table(rows: list[dict[str, Any]]) -> str:
    """The median return and price, and the price interval between the outer quantiles."""
    return text_table([{
        "symbol": r["symbol"], "as of": r["as_of"], "close": f"{r['last_close']:.2f}", "horizon": f"{r['horizon']}d",
        "target date": r["target_date"], "return": f"{math.expm1(r['predicted_return']):+.2%}",
        "price": f"{r['predicted_price']:.2f}",
        "interval": "" if r["lower_price"] is None else f"{r['lower_price']:.2f} - {r['upper_price']:.2f}",
        "model": r["model_run_id"] + (" (no skill)" if r["flag"] == "no_skill" else "")} for r in rows])


PREDICT_FLAGS = ("symbols", "source", "as_of", "results_dir", "store_url", "parallel", "executor", "work_pool",
                 "dask_address")


def check_run_for(config: Config, symbols: list[str], run_id: str) -> None:
    """``--run RUN_ID`` must name a model of every symbol asked for (RegistryError otherwise)."""
    with ResultsStore(config.run.results_dir, config.run.store_url) as store:
        for symbol in symbols:
            registry.model_row(store, symbol, run_id)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.predict", description=__doc__.splitlines()[0])
    add_flags(p, *PREDICT_FLAGS)
    p.add_argument("--run", metavar="RUN_ID", help="forecast from this training run's model instead of each "
                                                   "symbol's champion (python -m flows.models show SYMBOL lists them)")
    p.add_argument("--fallback", choices=["naive"], help="naive: a symbol with no champion gets the random walk's "
                                                          "forecast (stored with flag naive) instead of failing")
    args = p.parse_args(argv)
    if args.symbols is None:
        p.error("--symbols is required: tickers or a universe name (e.g. --symbols AAPL or --symbols SAMPLE)")
    try:
        config = apply_overrides(Config(), flag_overrides(args, *PREDICT_FLAGS))
        symbols = check_run(config, forecast_symbol.name)
        if args.run is not None:
            check_run_for(config, symbols, args.run)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = predict_universe(config.run.symbols, args.source, config.run.results_dir, config.run.store_url,
                           config.run.parallel, args.run, args.fallback, config.data.as_of, config.run.executor,
                           config.run.work_pool, config.run.dask_address)
    print()
    if out["predictions"]:
        print(forecast_table(out["predictions"]))
    for symbol, error in out["failures"].items():
        print(f"{symbol}: FAILED: {error}")
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    # The flows of the module flows.predict, not of __main__: Dask and the workers
    # find a flow by its module (a flow of __main__ would travel without its globals).
    from flows.predict import main as _main

    sys.exit(_main())

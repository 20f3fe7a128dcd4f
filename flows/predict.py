"""Forecast the next days from each symbol's latest model: ``python -m flows.predict --symbols AAPL``.

For every symbol: the latest completed model in the results store, fresh bars
(through the same cached ``fetch_bars`` task as training), the latest window
rebuilt with the model's own feature list and training scaler, and one
forecast per horizon: the log return and the price ``close * exp(r)``. Rows go
to the ``predictions`` table. A symbol with no model, or whose fresh data fails
validation, is a per-symbol failure; the others are still forecast.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from configs.load import ConfigError, resolve_symbols
from configs.schema import DataConfig, FeatureConfig
from flows.report import text_table
from tasks import steps
from tasks.features import WARMUP_ROWS, build_features
from tasks.bars import validate_symbol
from tasks.store import ResultsStore, load_model
from tasks.train import load_forecaster, predict_windows
from tasks.validate import validate_bars
from tasks.windows import Scaler, latest_window


class ModelNotFoundError(LookupError):
    """No completed model for a symbol in the results store."""


def target_date(as_of: dt.date, h: int) -> dt.date:
    """The date h trading days after ``as_of``: weekdays, no holiday calendar
    (a holiday in between makes the real date one day later)."""
    return np.busday_offset(np.datetime64(as_of, "D"), h, roll="forward").astype(dt.date)


@task(name="forecast_symbol", task_run_name="forecast-{symbol}", cache_policy=NO_CACHE)
def forecast_symbol(symbol: str, store: ResultsStore, source: str | None) -> list[dict[str, Any]]:
    validate_symbol(symbol)
    model_dir = store.latest_model(symbol)
    if model_dir is None:
        raise ModelNotFoundError(
            f"{symbol}: no completed model in {store.url}; train one first: "
            f"python -m flows.train --symbols {symbol} --results {store.results_dir}")
    state, meta = load_model(model_dir)
    data = DataConfig(**(meta["config"]["data"] | ({"source": source} if source else {}) | {"end": None}))
    bars = steps.fetch_bars.with_options(result_storage=store.results_dir / "prefect")(
        symbol, data, store.results_dir)
    validate_bars(bars, symbol, WARMUP_ROWS + meta["seq_len"])
    frame = build_features(bars, FeatureConfig(**meta["config"]["features"]))
    x, as_of, close = latest_window(frame, meta["feature_names"], Scaler.from_dict(meta["scaler"]), meta["seq_len"])
    model = load_forecaster(state, len(meta["feature_names"]), meta["horizons"], meta["config"]["model"])
    returns = predict_windows(model, x)[0]  # (h,)
    return [{
        "model_run_id": meta["run_id"], "symbol": symbol, "as_of": as_of, "horizon": int(h),
        "target_date": target_date(as_of, int(h)), "predicted_return": float(r),
        "predicted_price": float(close * math.exp(r)), "last_close": float(close),
    } for h, r in zip(meta["horizons"], returns)]


@flow(name="predict-universe")
def predict_universe(symbols: list[str], source: str | None = None, results_dir: str = "results",
                     store_url: str | None = None) -> dict[str, Any]:
    """Forecast every horizon for ``symbols`` (tickers or universe names)."""
    log = get_run_logger()
    store = ResultsStore(results_dir, store_url)
    names = resolve_symbols(symbols)
    futures = {s: forecast_symbol.submit(s, store, source) for s in names}
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    for symbol, future in futures.items():
        result = future.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            failures[symbol] = f"{type(result).__name__}: {result}"
            log.error("%s: %s", symbol, failures[symbol])
        else:
            store.record_predictions(result)
            rows.extend(result)
    if rows:
        create_table_artifact(
            key="forecasts", description=f"forecasts from the latest models in {store.url}",
            table=[{k: str(v) if isinstance(v, dt.date) else v for k, v in r.items()} for r in rows])
    return {"predictions": rows, "failures": failures}


def forecast_table(rows: list[dict[str, Any]]) -> str:
    return text_table([{
        "symbol": r["symbol"], "as of": r["as_of"], "close": f"{r['last_close']:.2f}", "horizon": f"{r['horizon']}d",
        "target date": r["target_date"], "return": f"{math.expm1(r['predicted_return']):+.2%}",
        "price": f"{r['predicted_price']:.2f}"} for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.predict", description=__doc__.splitlines()[0])
    p.add_argument("--symbols", required=True, help="comma-separated tickers or universe names")
    p.add_argument("--source", help="sample | synthetic | yfinance | files:DIR (default: the model's own)")
    p.add_argument("--results", default="results", help="results directory (default results/)")
    p.add_argument("--store-url", help="SQLAlchemy URL of the results database")
    args = p.parse_args(argv)
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    try:
        resolve_symbols(symbols)
        if args.source is not None:
            DataConfig(source=args.source)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = predict_universe(symbols, args.source, args.results, args.store_url)
    print()
    if out["predictions"]:
        print(forecast_table(out["predictions"]))
    for symbol, error in out["failures"].items():
        print(f"{symbol}: FAILED: {error}")
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

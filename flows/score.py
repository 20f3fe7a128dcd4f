"""Score stored forecasts whose target date has arrived: ``python -m flows.score``.

``score_forecasts`` finds every row of ``predictions`` whose target date is
on or before the as-of date (default today) and that has no score yet, reads
the symbol's bars (the source its model was trained on, or ``--source``), and
stores the realised return, the error, the random walk's error and whether
the realised return fell inside the interval (``tasks.scoring``), one
``score-SYMBOL`` subflow per symbol. A forecast whose target date has no bar
yet (a data delay) waits for the next run. The nightly flow runs this first.
``python -m flows.models scoreboard`` pools the scores per model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from configs.load import ConfigError, apply_overrides, named_overrides, resolve_symbols
from configs.schema import Config, DataConfig
from flows.cli import add_flags, check_run, flag_overrides
from flows.fanout import for_each_symbol, split_outcomes
from tasks import registry, scoring, steps
from tasks.bars import bars_as_of, validate_symbol
from tasks.forecast import forecast_data, model_config
from tasks.store import ResultsStore, load_model, model_key


def _data_of(store: ResultsStore, symbol: str, run_ids: set[str], source: str | None) -> DataConfig:
    """The data settings to read ``symbol``'s bars with: those of one of the
    models that made the forecasts (else its latest registered model, else the
    defaults), with ``source`` when given."""
    runs = sorted(r for r in run_ids if r != "naive") or [m["run_id"] for m in registry.models(store, [symbol])[-1:]]
    config = model_config(load_model(store, model_key(symbol, runs[0]))[1]) if runs else Config()
    return forecast_data(config, source)


@flow(name="score-symbol", flow_run_name="score-{symbol}")
def score_symbol(symbol: str, as_of: dt.date, source: str | None = None, results_dir: str = "results",
                 store_url: str | None = None) -> dict[str, Any]:
    validate_symbol(symbol)
    results = Path(results_dir).resolve()
    with ResultsStore(results, store_url) as store:
        due = scoring.due_predictions(store, as_of, [symbol])
        if not due:
            return {"symbol": symbol, "due": 0, "scored": 0}
        data = _data_of(store, symbol, {p["model_run_id"] for p in due}, source)
        bars = steps.fetch_bars.with_options(result_storage=results / "prefect")(
            symbol, data.model_copy(update={"as_of": as_of}), results)
        rows = scoring.score_rows(due, bars_as_of(bars, as_of))
        scoring.record_scores(store, rows)
    return {"symbol": symbol, "due": len(due), "scored": len(rows)}


@flow(name="score-forecasts")
def score_forecasts(symbols: list[str] | None = None, source: str | None = None, results_dir: str = "results",
                    store_url: str | None = None, as_of: dt.date | None = None, parallel: int = 1) -> dict[str, Any]:
    """Score the stored forecasts that have come due.

    Args:
        symbols: tickers or universe names; empty: every symbol with a forecast due.
        source: where to read realised bars; empty: each model's own source.
        results_dir: results directory (store.db).
        store_url: SQLAlchemy URL of the results database; empty: sqlite in results_dir.
        as_of: score targets dated on or before this day, with bars up to it; empty: today.
        parallel: symbols scored at the same time.
    """
    log = get_run_logger()
    day = as_of or dt.date.today()
    names = resolve_symbols(symbols) if symbols else None
    with ResultsStore(results_dir, store_url) as store:
        due = scoring.due_predictions(store, day, names)
    todo = sorted({p["symbol"] for p in due})
    outcomes = for_each_symbol(score_symbol, todo, parallel, {"as_of": day, "source": source,
                                                             "results_dir": results_dir, "store_url": store_url})
    results, failures = split_outcomes(outcomes, log)
    done = list(results.values())
    n = sum(r["scored"] for r in done)
    log.info("scored %d of %d forecasts due by %s (%d symbols); %d wait for their target bar", n, len(due), day,
             len(todo), sum(r["due"] - r["scored"] for r in done))
    return {"as_of": day, "due": len(due), "scored": n, "results": done, "failures": failures}


SCORE_FLAGS = ("symbols", "source", "as_of", "results_dir", "store_url", "parallel")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.score", description=__doc__.splitlines()[0])
    add_flags(p, *SCORE_FLAGS)
    args = p.parse_args(argv)
    try:
        overrides = flag_overrides(args, *SCORE_FLAGS)
        config = apply_overrides(Config(), overrides)
        if args.symbols is not None:
            check_run(config)
        else:
            check_run(apply_overrides(config, named_overrides(symbols=["SAMPLE"])))  # the store and source only
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = score_forecasts(config.run.symbols if args.symbols is not None else None, args.source,
                          config.run.results_dir, config.run.store_url, config.data.as_of, config.run.parallel)
    print(f"\nscored {out['scored']} of {out['due']} forecasts due by {out['as_of']}"
          + "".join(f"\n{s}: FAILED: {e}" for s, e in out["failures"].items()))
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

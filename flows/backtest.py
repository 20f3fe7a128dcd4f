"""Walk-forward backtest: ``python -m flows.backtest --symbols AAPL,MSFT --folds 4``.

One test split cannot rank models: moving it moves the skill of the same
method. ``backtest_universe`` tests each symbol on K consecutive blocks, each
with a model trained only on what came before it (``tasks.folds``). It
fetches every symbol's bars and checks that the folds fit before any
training, then maps one ``backtest_fold`` subflow per (symbol, fold),
``--parallel`` at a time, the way ``train_universe`` maps symbols:

    data-SYMBOL      fetch_bars -> bars as of --as-of -> validate_bars -> build_features
    fold-SYMBOL-K    fold_windows -> train_model -> evaluate_model -> save_backtest

and ends with the summary across folds (``tasks.backtest``): a text table,
a table artifact and a plot of skill per fold. With ``--refit once``, fold 0
trains and folds 1.. evaluate that model (and its scaler) on their own test
blocks: the cheap variant.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal

import polars as pl
from prefect import flow, get_run_logger

from configs.load import ConfigError, load_config
from configs.schema import Config
from flows.cli import add_flags, check_run, flag_overrides
from flows.fanout import error_text, for_each, for_each_symbol
from flows.report import text_table
from flows.train import TRAIN_FLAGS
from tasks import steps
from tasks.backtest import fold_rows, loss_differentials, summarize
from tasks.bars import bars_as_of, bars_fingerprint, validate_symbol
from tasks.folds import (DEFAULT_FOLDS, REFIT, FoldsDoNotFit, default_test_days, fold_plan, max_folds, misfit,
                         refit_once)
from tasks.plan import min_train_bars
from tasks.store import ResultsStore
from tasks.train import TrainResult


@flow(name="backtest-data", flow_run_name="data-{symbol}")
def backtest_data(symbol: str, config: Config, as_of: dt.date | None = None) -> pl.DataFrame:
    """The symbol's feature frame, from its bars dated on or before ``as_of``; raises on any failure."""
    validate_symbol(symbol)  # before the symbol touches any path
    results = Path(config.run.results_dir).resolve()
    cached = {"result_storage": results / "prefect"}
    bars = bars_as_of(steps.fetch_bars.with_options(**cached)(symbol, config.data, results), as_of)
    steps.validate_bars(bars, symbol, min_train_bars(config))
    return steps.build_features.with_options(**cached)(bars, config.features, symbol, bars_fingerprint(bars))


@flow(name="backtest-fold", flow_run_name="fold-{symbol}-{fold}")
def backtest_fold(symbol: str, fold: int, frame: pl.DataFrame, config: Config, backtest_id: str, folds: int,
                  test_days: int | None = None, trained: TrainResult | None = None,
                  keep_model: bool = False) -> dict[str, Any]:
    """Fold ``fold`` of ``folds``: its windows, a model trained on the history
    before its test block (or ``trained``, fold 0's model, for ``--refit
    once``), its test metrics into the store. Raises on any failure."""
    t0 = time.perf_counter()
    plan = fold_plan(frame.height, config.windows, folds, test_days, symbol)
    split = plan[fold] if trained is None else refit_once(plan, fold)
    windows = steps.fold_windows(frame, config.windows, split, symbol)
    results = Path(config.run.results_dir).resolve()
    workdir = results / "work" / f"backtest-{backtest_id}" / f"{symbol}-{fold}"
    model = trained
    if model is None:
        model = steps.train_model.with_options(task_run_name=f"train-{symbol}-{fold}")(
            windows, config, symbol, workdir)
    evaluation, q, _ = steps.evaluate_model.with_options(task_run_name=f"evaluate-{symbol}-{fold}")(
        model, config, windows, frame["close"].to_numpy(), symbol)
    # the quantile forecasts (n, h, k) are scored against the random walk by their median
    diffs = loss_differentials(windows.test.y, q, config.model.quantiles)
    with ResultsStore(results, config.run.store_url) as store:
        steps.save_backtest(store, backtest_id, symbol, fold, fold_rows(windows, evaluation))
    if trained is None:
        shutil.rmtree(workdir)  # checkpoints: a fold is not resumed
    return {"symbol": symbol, "fold": fold, "diffs": diffs, "epochs": model.epochs,
            "skill": {r["horizon"]: r["skill_zero"] for r in evaluation}, "seconds": time.perf_counter() - t0,
            "trained": model if keep_model else None}


def _run_folds(items: list[tuple[str, dict[str, Any]]], parallel: int,
               results: dict[str, dict[int, Any]]) -> None:
    """``backtest_fold`` for every item; each outcome into ``results[symbol][fold]``."""
    log = get_run_logger()

    def done(i: int, outcome: Any) -> None:
        symbol, fold = items[i][1]["symbol"], items[i][1]["fold"]
        results[symbol][fold] = outcome
        if isinstance(outcome, BaseException):
            log.error("%s fold %d: failed: %s", symbol, fold, error_text(outcome))
        else:
            log.info("%s fold %d: %s epochs, skill %s, %.1f s", symbol, fold, outcome["epochs"],
                     {h: round(v, 3) for h, v in outcome["skill"].items()}, outcome["seconds"])

    for_each(backtest_fold, items, parallel, done)


def _outcome(symbol: str, folds: int, results: dict[int, Any]) -> dict[str, Any]:
    failed = {k: r for k, r in sorted(results.items()) if isinstance(r, BaseException)}
    if not failed and len(results) == folds:
        return {"symbol": symbol, "status": "completed", "error": None}
    error = "; ".join(f"fold {k}: {error_text(r)}" for k, r in failed.items())
    if len(results) < folds:  # --refit once: fold 0 failed, so the others never ran
        error += "; folds 1.. not run (--refit once needs fold 0's model)"
    return {"symbol": symbol, "status": "failed", "error": error}


@flow(name="backtest-universe")
def backtest_universe(config: Config = Config(), folds: int | None = None,
                      refit: Literal["every", "once"] = "every", as_of: dt.date | None = None,
                      test_days: int | None = None) -> dict[str, Any]:
    """Walk-forward backtest of every symbol of ``config.run.symbols``.

    Args:
        config: the training config, as for train-universe.
        folds: test blocks (and models, with refit "every") per symbol; empty: 8, or as many as every
            symbol's history holds if fewer (test blocks of test_frac of the history hold about 6).
        refit: "every" trains a model per fold; "once" trains fold 0's and tests it on every block.
        as_of: use only bars dated on or before this day; empty: the config's data.as_of (--as-of).
        test_days: window ends per test block; empty: the test split of a normal run on the whole history.
    """
    log = get_run_logger()
    if (folds is not None and folds < 1) or (test_days is not None and test_days < 1):
        raise ValueError(f"folds {folds} and test_days {test_days} must be >= 1")
    symbols = check_run(config)
    w = config.windows
    if as_of is not None:
        config = config.model_copy(update={"data": config.data.model_copy(update={"as_of": as_of})})
    as_of = config.data.as_of
    data = for_each_symbol(backtest_data, symbols, config.run.parallel, {"config": config, "as_of": as_of})
    frames = {s: f for s, f in data.items() if not isinstance(f, BaseException)}
    if folds is None:  # the default: DEFAULT_FOLDS where they fit, else as many as fit everywhere
        fit = [max_folds(f.height, w, test_days or default_test_days(f.height, w)) for f in frames.values()]
        folds = max(1, min([DEFAULT_FOLDS, *fit]))
    misfits = [m for s, f in frames.items() if (m := misfit(f.height, w, folds, test_days, s))]
    if misfits:  # before any training: the flag, not the data, is wrong
        raise FoldsDoNotFit("; ".join(misfits))
    outcomes = {s: {"symbol": s, "status": "failed", "error": f"data: {error_text(f)}"}
                for s, f in data.items() if isinstance(f, BaseException)}
    for o in outcomes.values():
        log.error("%s: failed: %s", o["symbol"], o["error"])
    backtest_id = ResultsStore.new_run_id()
    log.info("backtest %s: %d symbols x %d folds, refit %s", backtest_id, len(frames), folds, refit)

    results: dict[str, dict[int, Any]] = {s: {} for s in frames}
    common = {"config": config, "backtest_id": backtest_id, "folds": folds, "test_days": test_days}

    def item(symbol: str, fold: int, **extra: Any) -> tuple[str, dict[str, Any]]:
        return f"fold-{symbol}-{fold}", {"symbol": symbol, "fold": fold, "frame": frames[symbol], **common, **extra}

    if refit == "every":
        _run_folds([item(s, k) for s in frames for k in range(folds)], config.run.parallel, results)
    else:
        _run_folds([item(s, 0, keep_model=True) for s in frames], config.run.parallel, results)
        models = {s: r[0]["trained"] for s, r in results.items() if not isinstance(r[0], BaseException)}
        _run_folds([item(s, k, trained=m) for s, m in models.items() for k in range(1, folds)],
                   config.run.parallel, results)
    outcomes |= {s: _outcome(s, folds, results[s]) for s in frames}

    root = Path(config.run.results_dir).resolve()
    with ResultsStore(root, config.run.store_url) as store:
        rows = store.backtests(backtest_id)
    completed = [s for s in symbols if outcomes[s]["status"] == "completed"]
    summary = summarize(rows, {s: [results[s][k]["diffs"] for k in range(folds)] for s in completed},
                        w.horizons, w.stride)
    plot = None
    if rows:
        plot = steps.publish_backtest(backtest_id, summary, rows, list(w.horizons),
                                      root / "backtests" / backtest_id / "skill_per_fold.png")
    work = root / "work" / f"backtest-{backtest_id}"
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()  # a failed fold's checkpoints stay, for a look
    return {"backtest_id": backtest_id, "folds": folds, "outcomes": [outcomes[s] for s in symbols], "rows": rows,
            "summary": summary, "plot": None if plot is None else str(plot)}


def fold_table(rows: list[dict[str, Any]], horizons: list[int]) -> str:
    """One line per symbol and fold: the as-of dates it trained and tested on, skill per horizon."""
    lines: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        line = lines.setdefault((r["symbol"], r["fold"]), {
            "symbol": r["symbol"], "fold": r["fold"], "train": f"{r['train_start']}..{r['train_end']}",
            "test": f"{r['test_start']}..{r['test_end']}", "windows": r["n"],
            **{f"skill h{h}": "" for h in horizons}})
        line[f"skill h{r['horizon']}"] = f"{r['skill_zero']:+.3f}"
    return text_table(list(lines.values()))


def summary_table(summary: list[dict[str, Any]]) -> str:
    """One line per symbol, horizon and skill: mean, std and min across folds,
    folds with skill > 0, and (on the skill_zero line) the pooled DM p-value."""
    lines = []
    for r in summary:
        for key in (k[: -len("_mean")] for k in r if k.endswith("_mean")):
            lines.append({
                "symbol": r["symbol"], "horizon": r["horizon"], "skill": key,
                "mean": f"{r[key + '_mean']:+.3f}", "std": f"{r[key + '_std']:.3f}", "min": f"{r[key + '_min']:+.3f}",
                "> 0": f"{round(r[key + '_pos'] * r['folds'])}/{r['folds']}",
                "DM p vs zero": f"{r['dm_p']:.3f}" if key == "skill_zero" else ""})
    return text_table(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flows.backtest", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="YAML config file (default configs/default.yaml)")
    add_flags(p, *TRAIN_FLAGS)
    p.add_argument("--folds", type=_positive, default=None, metavar="K",
                   help=f"test blocks per symbol, consecutive, the last ending at the latest bar (default "
                        f"{DEFAULT_FOLDS}, or as many as every symbol's history holds if fewer; a K that does "
                        f"not fit exits 2 saying how many do)")
    p.add_argument("--refit", choices=REFIT, default="every",
                   help="every: a model per fold, trained on all history before its block (default); "
                        "once: fold 0's model tested on every block (one training per symbol)")
    p.add_argument("--test-days", type=_positive, metavar="N",
                   help="window ends (trading days) per test block (default: the test split a normal run gets "
                        "from windows.test_frac on the whole history)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, flag_overrides(args, *TRAIN_FLAGS))
        check_run(config)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        out = backtest_universe(config, args.folds, args.refit, None, args.test_days)
    except FoldsDoNotFit as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    horizons = list(config.windows.horizons)
    print()
    if out["rows"]:
        print(fold_table(out["rows"], horizons) + "\n")
    if out["summary"]:
        print(summary_table(out["summary"]) + "\n")
    failed = [o for o in out["outcomes"] if o["status"] != "completed"]
    for o in failed:
        print(f"{o['symbol']}: FAILED: {o['error']}")
    print(f"{len(out['outcomes']) - len(failed)} of {len(out['outcomes'])} symbols backtested over {out['folds']} "
          f"folds (refit {args.refit}) in {time.perf_counter() - t0:.0f} s; backtest {out['backtest_id']} in "
          f"{Path(config.run.results_dir).resolve()}" + (f"; plot {out['plot']}" if out["plot"] else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

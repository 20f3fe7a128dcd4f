"""Train one Mamba forecaster per symbol: ``python -m flows.train --test``.

``train_universe`` maps one ``train_symbol`` subflow per symbol, at most
``config.run.parallel`` at a time (Prefect's ``ThreadPoolTaskRunner``: each
symbol is a task that runs its subflow, so the UI shows every subflow under
the parent). A symbol that fails is recorded with its reason; the others go on.

    fetch_bars -> validate_bars -> build_features -> make_windows
               -> train_model -> evaluate_model -> render_plots -> save_run -> publish_plots

``save_run`` puts the model (weights, metadata, plots) and its rows in the
results store in one transaction; the local results directory keeps only
caches and the checkpoints of symbols still training.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import Flow, flow, get_run_logger
from prefect.artifacts import create_table_artifact

from configs.load import TEST_CONFIG, ConfigError, load_config, named_overrides
from configs.schema import Config
from flows.cli import add_flags, check_run, flag_overrides
from flows.fanout import WorkerRun, error_text, for_each_symbol, for_executor, local_results
from flows.report import text_table
from tasks import registry, steps
from tasks.bars import bars_as_of, bars_fingerprint, validate_symbol
from tasks.plan import min_train_bars
from tasks.store import ResultsStore
from tasks.warmstart import record_restatement, was_restated


def _outcome(symbol: str, status: str, **kw: Any) -> dict[str, Any]:
    base = {"symbol": symbol, "status": status, "epochs": None, "best_val_loss": None, "no_skill": None,
            "metrics": {}, "seconds": None, "model_path": None, "error": None, "decision": None, "reason": None,
            "init_from": None, "restated": False}
    return base | kw


@flow(name="train-symbol", flow_run_name="train-{symbol}")
def train_symbol(symbol: str, config: Config, run_id: str, resume: bool = False) -> dict[str, Any]:
    """The whole pipeline for one symbol; raises on any failure (the parent records it)."""
    t0 = time.perf_counter()
    log = get_run_logger()
    validate_symbol(symbol)  # before the symbol touches any path
    results = local_results(config.run.results_dir)
    cached = {"result_storage": results / "prefect"}

    # bars to data.last_day() (--as-of); the filter again, so nothing later can reach the features
    bars = bars_as_of(steps.fetch_bars.with_options(**cached)(symbol, config.data, results), config.data.last_day())
    report = steps.validate_bars(bars, symbol, min_train_bars(config))
    fingerprint = bars_fingerprint(bars)
    frame = steps.build_features.with_options(**cached)(bars, config.features, symbol, fingerprint)
    windows = steps.make_windows(frame, config.windows, symbol)
    log.info("%s: %d bars %s..%s, windows train/val/test %d/%d/%d", symbol, bars.height, bars["date"][0],
             bars["date"][-1], len(windows.train), len(windows.val), len(windows.test))
    workdir = results / "work" / symbol
    with ResultsStore(results, config.run.store_url) as store:
        champ = registry.load_champion(store, symbol)  # read once: for the warm start and the gate
        plan = steps.plan_retrain(champ, symbol, config, bars, windows)
        if plan.restated is not None:
            record_restatement(store, run_id, symbol, plan.restated)
            log.warning("%s: restated: %s; refitting from scratch", symbol, plan.restated["detail"])
    log.info("%s: %s", symbol, plan.reason)
    trained = steps.train_model(windows, config, symbol, workdir, resume, plan.init_state)
    evaluation, q, baselines = steps.evaluate_model(trained, config, windows, frame["close"].to_numpy(), symbol)
    metadata = steps.build_metadata(symbol, run_id, config, windows, trained, evaluation, report, fingerprint)
    metadata |= {"init_from": plan.init_from, "retrain": plan.reason, "restatement": plan.restated}
    if plan.restated is not None:  # the quality report says so too
        metadata["quality"] = metadata["quality"] | {"restatement": plan.restated}
    plots = steps.render_plots(symbol, trained, windows, q, config.model.quantiles)
    with ResultsStore(results, config.run.store_url) as store:
        decision = steps.gate_model(champ, symbol, evaluation, config, windows, frame, baselines)
        seconds = time.perf_counter() - t0
        model = steps.save_run(store, symbol, run_id, trained, metadata, evaluation, plots, bars.height, seconds,
                               decision, bars, config.promotion.metric)
    log.info("%s: %s: %s", symbol, decision.status, decision.reason)
    steps.publish_plots(symbol, plots, evaluation)
    shutil.rmtree(workdir)  # checkpoints are only for resuming an unfinished symbol
    return _outcome(symbol, "completed", epochs=trained.epochs, best_val_loss=trained.best_val_loss,
                    no_skill=trained.no_skill, metrics={r["horizon"]: r for r in evaluation}, seconds=seconds,
                    model_path=model, decision=decision.status, reason=decision.reason, init_from=plan.init_from,
                    restated=plan.restated is not None)


def finished_earlier(store: ResultsStore, symbols: list[str], config: Config) -> dict[str, dict[str, Any]]:
    """For ``--resume``: each symbol's latest completed symbol_run whose run had
    this same config (the ``run`` section aside), so it is not redone."""
    configs = {r["run_id"]: r["config"] for r in store.runs()}
    now = {k: v for k, v in config.model_dump(mode="json").items() if k != "run"}
    return {s: r for s, r in store.latest_completed(symbols).items()
            if {k: v for k, v in configs[r["run_id"]].items() if k != "run"} == now}


def _carry_over(store: ResultsStore, run_id: str, row: dict[str, Any]) -> dict[str, Any]:
    """Record an earlier completed symbol_run under this run (its model_path
    names the earlier run's model: nothing is copied); its outcome for the summary."""
    keep = ("rows", "windows", "parameters", "epochs", "best_val_loss", "no_skill", "seconds", "model_path",
            "data_fingerprint")
    store.record_symbol(run_id, row["symbol"], "completed", **{k: row[k] for k in keep})
    return stored_outcome(store, row) | {"seconds": 0.0}


def stored_outcome(store: ResultsStore, row: dict[str, Any]) -> dict[str, Any]:
    """A completed symbol_run ``row``'s outcome for the summary, read back from
    the store: what ``train_symbol`` returns, for a symbol trained elsewhere
    (an earlier run, or a worker of ``--executor workers``)."""
    symbol, run_id = row["symbol"], row["run_id"]
    metrics = {e["horizon"]: e for e in store.evaluations(run_id, symbol)}
    decided = [m for m in registry.models(store, [symbol]) if m["run_id"] == run_id]
    return _outcome(symbol, "completed", epochs=row["epochs"], best_val_loss=row["best_val_loss"],
                    no_skill=row["no_skill"], metrics=metrics, seconds=row["seconds"], model_path=row["model_path"],
                    decision=decided[0]["status"] if decided else None,
                    reason=decided[0]["reason"] if decided else None,
                    init_from=decided[0]["init_from"] if decided else None,
                    restated=was_restated(store, run_id, symbol))


def symbol_outcome(store: ResultsStore, run_id: str, symbol: str, result: Any) -> dict[str, Any]:
    """``train_symbol``'s outcome from what the executor handed back: the outcome
    itself (threads, dask), or a ``WorkerRun`` (workers: read from the store)."""
    if not isinstance(result, WorkerRun):
        return result
    rows = [r for r in store.symbol_runs(run_id, symbol) if r["status"] == "completed"]
    if not rows:
        raise LookupError(f"{symbol}: flow run {result.flow_run_name} completed but the store has no completed row "
                          f"of run {run_id} for it; is the worker writing to another store (--store-url)?")
    return stored_outcome(store, rows[0])


def run_symbols(config: Config, subflow: Flow, resume: bool = False,
                outcome: Callable[[ResultsStore, str, str, Any], dict[str, Any]] = symbol_outcome
                ) -> list[dict[str, Any]]:
    """A training run: ``subflow(symbol, config, run_id, resume)`` per symbol of
    ``config.run.symbols``, with the run's rows in the store (a failed symbol
    with its reason) and a summary artifact; ``outcome(store, run_id, symbol,
    result)`` turns what the executor hands back into the symbol's outcome. ``train_universe`` and the
    nightly flow are this with their own per-symbol subflow."""
    log = get_run_logger()
    symbols = check_run(config, subflow.name)
    with ResultsStore(config.run.results_dir, config.run.store_url) as store:
        run_id = store.new_run_id()
        store.start_run(run_id, config.model_dump(mode="json"), symbols)
        log.info("run %s: %d symbols, %d at a time (%s)", run_id, len(symbols), config.run.parallel,
                 config.run.executor)
        outcomes: dict[str, dict[str, Any]] = {}
        for symbol, row in (finished_earlier(store, symbols, config) if resume else {}).items():
            outcomes[symbol] = _carry_over(store, run_id, row)
            log.info("%s: trained in run %s with this config; kept (--resume)", symbol, row["run_id"])

        def done(symbol: str, result: Any) -> None:
            if not isinstance(result, BaseException):
                try:
                    result = outcome(store, run_id, symbol, result)
                except LookupError as exc:
                    result = exc
            if isinstance(result, BaseException):
                outcomes[symbol] = _outcome(symbol, "failed", error=error_text(result))
                store.record_symbol(run_id, symbol, "failed", error=outcomes[symbol]["error"])
                log.error("[%d/%d] %s: failed: %s", len(outcomes), len(symbols), symbol, outcomes[symbol]["error"])
            else:
                outcomes[symbol] = result
                log.info("[%d/%d] %s: completed in %.1f s, %d epochs, best val_loss %.3g", len(outcomes),
                         len(symbols), symbol, result["seconds"], result["epochs"], result["best_val_loss"])

        todo = [s for s in symbols if s not in outcomes]
        for_each_symbol(subflow, todo, config.run, {"config": for_executor(config), "run_id": run_id,
                                                    "resume": resume}, on_done=done)
        ordered = [outcomes[s] for s in symbols]
        failed = sum(o["status"] != "completed" for o in ordered)
        store.finish_run(run_id, "completed" if not failed else "failed" if failed == len(ordered) else "partial")
    create_table_artifact(key="train-summary", table=summary_rows(ordered, config.windows.horizons),
                          description=f"run {run_id}: {len(ordered) - failed} of {len(ordered)} symbols trained")
    return ordered


@flow(name="train-universe")
def train_universe(config: Config = Config(), resume: bool = False) -> list[dict[str, Any]]:
    """Train every symbol of ``config.run.symbols`` (tickers or universe names)."""
    return run_symbols(config, train_symbol, resume)


def summary_rows(outcomes: list[dict[str, Any]], horizons: list[int]) -> list[dict[str, str]]:
    """One row per symbol, at the shortest and the longest horizon, on the test
    split: ``skill`` = 1 - MAE / MAE(random walk) of the median; ``vs garch`` =
    1 - pinball / pinball(GARCH(1,1) quantiles); ``cover`` = share of targets
    inside the central interval (0.05-0.95 by default: 0.90 is calibrated), the
    model's / GARCH(1,1)'s;
    ``status`` = the promotion gate's decision (champion, challenger,
    rejected), or failed."""
    ends = sorted({min(horizons), max(horizons)})

    def cell(o: dict[str, Any], h: int, key: str, fmt: str) -> str:
        value = o["metrics"].get(h, {}).get(key)
        return "" if value is None else format(value, fmt)

    rows = []
    for o in outcomes:
        rows.append({
            "symbol": o["symbol"],
            # the registry's decision for a trained model (tasks.registry); failed otherwise
            "status": o["decision"] or o["status"],
            "epochs": "" if o["epochs"] is None else str(o["epochs"]),
            **{f"skill h{h}": cell(o, h, "skill_zero", "+.3f") for h in ends},
            **{f"vs garch h{h}": cell(o, h, "pinball_skill_garch", "+.3f") for h in ends},
            # the model's coverage / GARCH(1,1)'s, the baseline interval, on the same windows
            **{f"cover h{h}": "/".join(filter(None, (cell(o, h, "coverage", ".2f"),
                                                     cell(o, h, "garch_coverage", ".2f")))) for h in ends},
            "seconds": "" if o["seconds"] is None else f"{o['seconds']:.1f}",
            "note": "no skill: baseline head" if o["no_skill"] else "",
            "error": (o["error"] or "")[:200],
        })
    return rows


def summary_table(outcomes: list[dict[str, Any]], horizons: list[int]) -> str:
    return text_table(summary_rows(outcomes, horizons))


TRAIN_FLAGS = ("symbols", "source", "days", "as_of", "epochs", "batch_size", "seed", "threads", "parallel",
               "results_dir", "store_url", "executor", "work_pool", "dask_address")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flows.train", description=__doc__.splitlines()[0])
    p.add_argument("--test", action="store_true", help="the quickstart config (configs/test.yaml)")
    p.add_argument("--config", type=Path, help="YAML config file (default configs/default.yaml)")
    add_flags(p, *TRAIN_FLAGS)
    p.add_argument("--warm-start", dest="warm_start", action="store_true", default=None,
                   help="start each symbol from its champion's weights where the architecture and the bars it saw "
                        "are unchanged (retrain.warm_start; full refits per retrain.full_every_days)")
    p.add_argument("--resume", action="store_true",
                   help="keep symbols already trained with this config; continue interrupted ones from last.ckpt")
    args = p.parse_args(argv)
    if args.test and args.config:
        p.error("--test and --config are exclusive: --test means --config configs/test.yaml")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(TEST_CONFIG if args.test else args.config,
                             flag_overrides(args, *TRAIN_FLAGS) | named_overrides(warm_start=args.warm_start))
        check_run(config)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    outcomes = train_universe(config, resume=args.resume)
    print()
    print(summary_table(outcomes, config.windows.horizons))
    failed = [o["symbol"] for o in outcomes if o["status"] != "completed"]
    print(f"\n{len(outcomes) - len(failed)} of {len(outcomes)} symbols trained; results in "
          f"{Path(config.run.results_dir).resolve()}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    # The flows of the module flows.train, not of __main__: Dask and the workers
    # find a flow by its module (a flow of __main__ would travel without its globals).
    from flows.train import main as _main

    sys.exit(_main())

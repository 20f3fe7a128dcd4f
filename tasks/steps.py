"""Prefect task wrappers around the pure pipeline steps.

Each wrapper only adds a name, retries and caching; the work is in the module
it calls (``tasks.sources``, ``tasks.features`` ...), which is what unit tests
exercise. Two steps are cached across flow runs, keyed on what determines
their output:

- ``fetch_bars``: source, symbol, date range, seed, the as-of day (so a nightly
  run refetches; the yfinance adapter's own Parquet cache then downloads only
  the new days), the source file's size and mtime for ``files:``, and
  ``tasks.sources.source_code_hash()``: every file the sources' output depends
  on (the ``tasks/sources/`` package, ``tasks/bars.py``, what they import, the
  shipped sample data).
- ``build_features``: the bars' fingerprint (computed once per symbol by the
  flow, passed in), the feature config, and the source code of
  ``tasks/features.py``.

Their results are Polars frames persisted as Parquet (base64 text, which is
what Prefect's result records hold) under ``RESULTS/prefect``; nothing is
pickled.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import os
import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.serializers import Serializer
from pydantic import Field

import tasks.features as features_mod
from configs.schema import Config, DataConfig, FeatureConfig, WindowConfig
from tasks.baselines import BaselineForecasts, baselines_on_test
from tasks.evaluate import evaluate_quantile_forecasts
from tasks.features import build_features as _build_features
from tasks.folds import Fold, fold_windows as _fold_windows
from tasks.plots import backtest_skill_png, forecast_vs_actual_png, learning_curve_png, png_to_markdown
from tasks.forecast import forecast_rows, load_forecaster, model_config, predict_quantiles
from tasks.plan import trainer_threads
from tasks.sources import SourceError, files_dir, find_file, load_bars, source_code_hash
from tasks import registry
from tasks.store import ResultsStore, load_model, model_key, package_versions, save_trained_model
from tasks.train import TrainResult
from tasks.train import train_model as _train_model
from tasks.validate import QualityReport, validate_bars as _validate_bars
from tasks.warmstart import RetrainPlan, bars_bytes, plan_retrain as _plan_retrain
from tasks.windows import Windows, make_windows as _make_windows


class ParquetSerializer(Serializer):
    """Prefect result serializer for Polars frames: Parquet bytes, base64."""

    type: str = Field(default="polars-parquet", frozen=True)

    def dumps(self, obj: pl.DataFrame) -> bytes:
        buf = io.BytesIO()
        obj.write_parquet(buf)
        return base64.b64encode(buf.getvalue())

    def loads(self, blob: bytes) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(base64.b64decode(blob)))


def _source_hash(module: Any) -> str:
    return hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()[:16]


def _digest(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _files_stamp(source: str, symbol: str) -> str:
    """Size and mtime of a ``files:DIR`` source file, so an edited file misses the cache."""
    folder = files_dir(source)
    if folder is None:
        return ""
    try:
        stat = find_file(symbol, folder).stat()
    except SourceError:
        return "missing"  # load_bars raises the clear error
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def fetch_key(context: TaskRunContext, params: dict[str, Any]) -> str:
    data: DataConfig = params["data"]
    symbol = params["symbol"]
    as_of = data.last_day() or dt.date.today()
    return "fetch-" + _digest(symbol, data.source, data.start, data.last_day(), data.days, data.seed,
                              as_of, _files_stamp(data.source, symbol), source_code_hash())


def features_key(context: TaskRunContext, params: dict[str, Any]) -> str:
    cfg: FeatureConfig = params["cfg"]
    return "features-" + _digest(params["fingerprint"], cfg.model_dump_json(), _source_hash(features_mod))


def _retry_network_only(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a fetch only when the network (not the symbol) is the problem."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, SourceError) and getattr(exc, "retryable", False)


@task(name="fetch_bars", task_run_name="fetch-{symbol}", cache_key_fn=fetch_key, persist_result=True,
      result_serializer=ParquetSerializer(), retries=3, retry_delay_seconds=[2, 10, 30],
      retry_condition_fn=_retry_network_only)
def fetch_bars(symbol: str, data: DataConfig, results_dir: Path) -> pl.DataFrame:
    """Bars of ``symbol`` up to ``data.last_day()`` (``end`` or ``as_of``; the
    last ``days`` of them count back from it); live data is cached under
    ``RESULTS/cache/yfinance``."""
    return load_bars(symbol, data.source, start=data.start, end=data.last_day(), days=data.days,
                     cache_dir=results_dir / "cache" / "yfinance", seed=data.seed)


@task(name="validate_bars", task_run_name="validate-{symbol}", cache_policy=NO_CACHE)
def validate_bars(bars: pl.DataFrame, symbol: str, min_rows: int) -> QualityReport:
    return _validate_bars(bars, symbol, min_rows)


@task(name="build_features", task_run_name="features-{symbol}", cache_key_fn=features_key, persist_result=True,
      result_serializer=ParquetSerializer())
def build_features(bars: pl.DataFrame, cfg: FeatureConfig, symbol: str, fingerprint: str) -> pl.DataFrame:
    """``fingerprint`` is ``bars_fingerprint(bars)``: the cache key, computed once by the caller."""
    return _build_features(bars, cfg)


@task(name="make_windows", task_run_name="windows-{symbol}", cache_policy=NO_CACHE)
def make_windows(frame: pl.DataFrame, cfg: WindowConfig, symbol: str) -> Windows:
    return _make_windows(frame, cfg=cfg, symbol=symbol)


@task(name="plan_retrain", task_run_name="plan-{symbol}", cache_policy=NO_CACHE)
def plan_retrain(champ: registry.Champion | None, symbol: str, config: Config, bars: pl.DataFrame,
                 windows: Windows) -> RetrainPlan:
    """Warm start from the champion or refit from scratch, and why (``tasks.warmstart``)."""
    return _plan_retrain(champ, config, bars, list(windows.feature_names), windows.seq_len)


@task(name="train_model", task_run_name="train-{symbol}", cache_policy=NO_CACHE)
def train_model(windows: Windows, config: Config, symbol: str, workdir: Path, resume: bool = False,
                init_state: dict | None = None) -> TrainResult:
    return _train_model(windows, config.model, config.training, config.augment, workdir,
                        resume=resume, threads=trainer_threads(config), init_state=init_state)


@task(name="evaluate_model", task_run_name="evaluate-{symbol}", cache_policy=NO_CACHE)
def evaluate_model(trained: TrainResult, config: Config, windows: Windows, close: np.ndarray,
                   symbol: str) -> tuple[list[dict], np.ndarray, BaselineForecasts]:
    """Test-split metrics per horizon of the saved weights' quantiles (n, h, k),
    beside the baselines fitted on the same training split (``tasks.baselines``),
    which it returns too (the registry scores a champion against them);
    ``close`` (N,) is the feature frame's close, which the windows' ends index."""
    model = load_forecaster(trained.state_dict, len(windows.feature_names), windows.horizons, config.model)
    q = predict_quantiles(model, windows.test.x)  # (n, h, k)
    _, baselines = baselines_on_test(windows, close, config.model.quantiles)
    rows = evaluate_quantile_forecasts(windows.test.y, q, config.model.quantiles, windows.horizons, baselines,
                                       stride=config.windows.stride)
    return rows, q, baselines


def build_metadata(symbol: str, run_id: str, config: Config, windows: Windows, trained: TrainResult,
                   evaluation: list[dict], report: QualityReport, fingerprint: str) -> dict[str, Any]:
    """Everything predict needs to rebuild the model and its inputs, and what a reader needs to trust it."""
    def span(split: Any) -> list[str]:
        return [str(split.end_dates[0]), str(split.end_dates[-1])]

    return {
        "symbol": symbol,
        "run_id": run_id,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config.model_dump(mode="json"),
        "feature_names": list(windows.feature_names),
        "scaler": windows.scaler.to_dict(),
        "horizons": [int(h) for h in windows.horizons],
        "quantiles": list(config.model.quantiles),
        "seq_len": int(windows.seq_len),
        "splits": {"train": span(windows.train), "val": span(windows.val), "test": span(windows.test)},
        "windows": {"train": len(windows.train), "val": len(windows.val), "test": len(windows.test)},
        "data_fingerprint": fingerprint,
        "threads": trainer_threads(config),  # the weights depend on it (tasks.plan)
        "quality": report.to_dict(),
        "versions": package_versions(),
        "trained_on": {"host": socket.gethostname(), "pid": os.getpid()},  # which machine and process (executors)
        "metrics": {
            "best_val_loss": trained.best_val_loss,
            "baseline_val_loss": trained.baseline_val_loss,
            "best_epoch": trained.best_epoch,
            # no epoch beat the untrained head (zero median, training spread): it is what was saved
            "no_skill": trained.no_skill,
            "zero_median_horizons": trained.zero_median_horizons,
            "baseline_head_horizons": trained.baseline_head_horizons,
            "epochs": trained.epochs,
            "resumed_from_epoch": trained.resumed_from_epoch,
            "target_scale": trained.target_scale,
            "parameters": trained.parameters,
            "test": evaluation,
        },
    }


LEARNING_CURVE, FORECAST_VS_ACTUAL = "learning_curve.png", "forecast_vs_actual.png"  # names in the store


@task(name="render_plots", task_run_name="render-plots-{symbol}", cache_policy=NO_CACHE)
def render_plots(symbol: str, trained: TrainResult, windows: Windows, q: np.ndarray,
                 quantiles: list[float]) -> dict[str, bytes]:
    """The learning curve and the test split's forecast vs actual prices (the
    median, and the central interval between the outer quantiles of q (n, h, k)),
    as PNG bytes by file name."""
    median = q[..., quantiles.index(0.5)]  # (n, h)
    return {
        LEARNING_CURVE: learning_curve_png(trained.epoch_metrics),
        FORECAST_VS_ACTUAL: forecast_vs_actual_png(windows.test.end_dates, windows.test.y, median, windows.horizons,
                                                   close=windows.test.close, band=(q[..., 0], q[..., -1])),
    }


@task(name="gate_model", task_run_name="gate-{symbol}", cache_policy=NO_CACHE)
def gate_model(champ: registry.Champion | None, symbol: str, evaluation: list[dict], config: Config,
               windows: Windows, frame: pl.DataFrame, baselines: BaselineForecasts) -> registry.Decision:
    """The promotion gate (``tasks.registry.decide``): the new model's mean
    ``promotion.metric`` on its test windows against ``promotion.min_skill``
    and against the champion this run started with (``registry.load_champion``),
    scored on the same windows."""
    metric, n = config.promotion.metric, len(windows.test)
    score = registry.mean_metric(evaluation, metric)
    if champ is None:
        return registry.decide(score, metric, config.promotion.min_skill, n_windows=n)
    saw = registry.champion_saw(champ.row, _day(windows.test.end_dates[0]))
    rows = None if saw else registry.champion_on_windows(champ.state, champ.meta, frame, windows, baselines,
                                                         config.model.quantiles, config.windows.stride)
    return registry.decide(score, metric, config.promotion.min_skill, champ.row,
                           None if rows is None else registry.mean_metric(rows, metric), saw, n)


def _day(d: Any) -> dt.date:
    return dt.date.fromisoformat(str(d)[:10])


@task(name="save_run", task_run_name="save-{symbol}", cache_policy=NO_CACHE)
def save_run(store: ResultsStore, symbol: str, run_id: str, trained: TrainResult, metadata: dict[str, Any],
             evaluation: list[dict], plots: dict[str, bytes], rows: int, seconds: float,
             decision: registry.Decision, bars: pl.DataFrame, metric: str) -> str:
    """The model (weights, metadata, plots), its rows (epochs, evaluation,
    the completed symbol_run) and its registry row with the gate's decision
    (the previous champion retired when it is promoted) in one transaction:
    every reader sees all of them or none. Returns the model's key,
    ``store:SYMBOL/RUN_ID``."""
    with store.transaction():
        key = save_trained_model(  # with the bars it trained on, for the next run's restatement check
            store, symbol, run_id, trained.state_dict, metadata,
            plots | {registry.BARS_FILE: bars_bytes(bars)}, trained.epoch_metrics, evaluation,
            rows=rows, windows=sum(metadata["windows"].values()), parameters=trained.parameters,
            epochs=trained.epochs, best_val_loss=trained.best_val_loss, no_skill=trained.no_skill, seconds=seconds,
            data_fingerprint=metadata["data_fingerprint"])
        test = metadata["splits"]["test"]
        registry.record_model(store, {
            "symbol": symbol, "run_id": run_id, "data_start": bars["date"][0], "data_end": bars["date"][-1],
            "test_start": _day(test[0]), "test_end": _day(test[1]), "status": decision.status,
            "reason": decision.reason, "metric": metric, "score": decision.score,
            "init_from": metadata.get("init_from")})
    return key


class ModelNotFoundError(LookupError):
    """No completed model for a symbol in the results store."""


@task(name="load_model", task_run_name="load-model-{symbol}", cache_policy=NO_CACHE)
def load_serving_model(store: ResultsStore, symbol: str, run_id: str | None = None
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights, metadata) of the model predict uses: run ``run_id``'s when
    given, else the symbol's champion in the registry (``tasks.registry``).
    ModelNotFoundError, naming the rejected runs and their scores, when there
    is no champion."""
    if run_id is not None:
        registry.model_row(store, symbol, run_id)  # RegistryError when the store has no such model
        return load_model(store, model_key(symbol, run_id))
    champ = registry.champion(store, symbol)
    if champ is not None:
        return load_model(store, model_key(symbol, champ["run_id"]))
    where = f"--store-url {store.url}" if store.engine.dialect.name != "sqlite" else f"--results {store.results_dir}"
    others = registry.models(store, [symbol])
    if not others:
        raise ModelNotFoundError(f"{symbol}: no trained model in {store.url}; train one first: "
                                 f"python -m flows.train --symbols {symbol} {where}")
    listed = "; ".join(f"{m['run_id']} {m['status']} ({m['metric']} {m['score']:+.4f})" for m in others[-5:])
    raise ModelNotFoundError(
        f"{symbol}: no champion (no model passed the promotion gate): {listed}. Not forecast; use --run RUN_ID "
        f"for one of them, --fallback naive for the random walk, or python -m flows.models promote {symbol} RUN_ID")


@task(name="forecast", task_run_name="forecast-{symbol}", cache_policy=NO_CACHE)
def forecast(state: dict[str, Any], meta: dict[str, Any], frame: pl.DataFrame, symbol: str) -> list[dict[str, Any]]:
    net = load_forecaster(state, len(meta["feature_names"]), meta["horizons"], model_config(meta).model)
    return forecast_rows(net, meta, frame)


@task(name="save_forecasts", task_run_name="save-forecasts-{symbol}", cache_policy=NO_CACHE)
def save_forecasts(store: ResultsStore, rows: list[dict[str, Any]], symbol: str) -> None:
    store.record_predictions(rows)


def artifact_key(prefix: str, symbol: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return f"{prefix}-" + re.sub(r"[^a-z0-9]+", "-", symbol.lower()).strip("-")


@task(name="publish_plots", task_run_name="plots-{symbol}", cache_policy=NO_CACHE)
def publish_plots(symbol: str, plots: dict[str, bytes], evaluation: list[dict]) -> None:
    """The metrics table and the plots (the PNG bytes stored with the model) as Prefect artifacts."""
    create_table_artifact(
        key=artifact_key("metrics", symbol), table=_round_rows(evaluation),
        description=f"{symbol}: test-split metrics per horizon; skill = 1 - MAE/MAE(naive)")
    create_markdown_artifact(
        key=artifact_key("plots", symbol),
        markdown=png_to_markdown(plots[LEARNING_CURVE], f"{symbol}: learning curve") + "\n\n"
        + png_to_markdown(plots[FORECAST_VS_ACTUAL], f"{symbol}: test split, forecast vs actual"),
        description=f"{symbol}: learning curve and test-split forecasts")


def _round_rows(rows: list[dict[str, Any]], digits: int = 5) -> list[dict[str, Any]]:
    """Rounded, with the skill columns first (the UI's table scrolls sideways)."""
    first = ("horizon", "skill_zero", "skill_drift")
    return [{k: round(r[k], digits) if isinstance(r[k], float) else r[k]
             for k in [*[f for f in first if f in r], *[k for k in r if k not in first]]} for r in rows]


# ---------------------------------------------------------------- walk-forward backtest (flows.backtest)

@task(name="fold_windows", task_run_name="windows-{symbol}-{fold.index}", cache_policy=NO_CACHE)
def fold_windows(frame: pl.DataFrame, cfg: WindowConfig, fold: Fold, symbol: str) -> Windows:
    return _fold_windows(frame, cfg, fold, symbol)


@task(name="save_backtest", task_run_name="save-{symbol}-{fold}", cache_policy=NO_CACHE)
def save_backtest(store: ResultsStore, backtest_id: str, symbol: str, fold: int, rows: list[dict]) -> None:
    store.record_backtest(backtest_id, symbol, fold, rows)


@task(name="publish_backtest", cache_policy=NO_CACHE)
def publish_backtest(backtest_id: str, summary: list[dict[str, Any]], rows: list[dict[str, Any]],
                     horizons: list[int], path: Path) -> Path:
    """The skill-per-fold PNG at ``path``; the fold rows, the summary and the plot as artifacts."""
    # the spread is where the model can earn its keep: pinball skill against GARCH(1,1)
    png = backtest_skill_png(rows, horizons, path, key="pinball_skill_garch")
    create_table_artifact(key="backtest-folds", table=_round_rows([{k: str(v) if isinstance(v, dt.date) else v
                                                                    for k, v in r.items()} for r in rows]),
                          description=f"backtest {backtest_id}: test metrics per symbol, fold and horizon")
    create_table_artifact(key="backtest-summary", table=_round_rows(summary),
                          description=f"backtest {backtest_id}: skill across folds per symbol and horizon, "
                                      f"pooled Diebold-Mariano p-value vs the random walk")
    create_markdown_artifact(key="backtest-skill", markdown=png_to_markdown(png.read_bytes(), f"backtest "
                                                                                  f"{backtest_id}: skill per fold"),
                             description=f"backtest {backtest_id}: pinball skill vs GARCH(1,1) per fold and horizon")
    return png

"""Nightly retrain then predict, and the deployments the Prefect UI runs.

    python -m deployments.nightly     # serve: the nightly schedule + on-demand train and predict

serves three deployments from this one process (no work pool):

- ``nightly-retrain/nightly``: ``nightly_retrain`` at 17:30 New York time,
  Monday to Friday, with the parameters of ``configs/nightly.yaml``;
- ``train-universe/on-demand`` and ``predict-universe/on-demand``: no
  schedule, run from the UI form ("Run" > "Custom run").

For a process work pool instead, ``prefect.yaml`` at the repository root
declares the same deployments: ``prefect deploy --all``, then
``prefect worker start --pool mambaflow``.
"""

from __future__ import annotations

# flows/__init__.py sets the Prefect env defaults (Lightning's log lines in the
# run logs) before prefect loads; the runs this process serves inherit them.
import flows  # noqa: F401  (first, for that reason)

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL

from configs.load import ConfigError, load_config
from flows.predict import predict_universe
from flows.train import train_universe

# 17:30 in New York, Monday to Friday: an hour and a half after the 16:00
# close, once the day's bar is final. The time zone keeps it there through DST.
NIGHTLY_CRON = "30 17 * * 1-5"
NIGHTLY_TIMEZONE = "America/New_York"
NIGHTLY_CONFIG = "configs/nightly.yaml"
REPO_ROOT = Path(__file__).resolve().parent.parent


class NightlyError(RuntimeError):
    """Some symbols failed to train or forecast (the others were stored)."""


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


def nightly_overrides(symbols: list[str] | None = None, source: str | None = None, days: int | None = None,
                      epochs: int | None = None, results_dir: str | None = None) -> dict[str, dict[str, Any]]:
    """The run form's fields as ``load_config`` overrides; an empty field keeps the file's value."""
    fields = {("run", "symbols"): symbols, ("data", "source"): source, ("data", "days"): days,
              ("training", "epochs"): epochs, ("run", "results_dir"): results_dir}
    out: dict[str, dict[str, Any]] = {}
    for (section, key), value in fields.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


@flow(name="nightly-retrain")
def nightly_retrain(config_path: str = NIGHTLY_CONFIG, symbols: list[str] | None = None,
                    source: str | None = None, days: int | None = None, epochs: int | None = None,
                    results_dir: str | None = None) -> dict[str, Any]:
    """Retrain every symbol of the config on fresh bars, then forecast the ones that trained.

    Fails (after storing everything that succeeded) if any symbol failed to
    train or forecast, so the UI shows the run as Failed with the reasons.

    Args:
        config_path: YAML config, relative to the working directory or the repository.
        symbols: tickers or universe names (SAMPLE, TEST, TIER_1); empty: the config's.
        source: sample | synthetic | yfinance | files:DIR; empty: the config's.
        days: last N trading days of history; empty: the config's.
        epochs: training epochs per symbol; empty: the config's.
        results_dir: results directory (models, store.db); empty: the config's.
    """
    log = get_run_logger()
    path = resolve_config_path(config_path)
    config = load_config(path, nightly_overrides(symbols, source, days, epochs, results_dir))
    log.info("config %s: symbols %s, source %s, %d epochs, results in %s", path, config.run.symbols,
             config.data.source, config.training.epochs, Path(config.run.results_dir).resolve())

    outcomes = train_universe(config)
    trained = [o["symbol"] for o in outcomes if o["status"] == "completed"]
    failures = {o["symbol"]: f"train: {o['error']}" for o in outcomes if o["status"] != "completed"}
    forecasts: list[dict[str, Any]] = []
    if trained:
        out = predict_universe(trained, config.data.source, config.run.results_dir, config.run.store_url)
        forecasts = out["predictions"]
        failures |= {s: f"predict: {e}" for s, e in out["failures"].items()}
    if failures:
        raise NightlyError(f"{len(failures)} of {len(outcomes)} symbols failed: "
                           + "; ".join(f"{s}: {e}" for s, e in failures.items()))
    log.info("%d symbols retrained and forecast (%d forecasts)", len(trained), len(forecasts))
    return {"trained": trained, "forecasts": len(forecasts)}


def deployments() -> list[RunnerDeployment]:
    """The nightly schedule plus unscheduled train and predict deployments for the UI form."""
    tags = ["mambaflow"]
    return [
        nightly_retrain.to_deployment(
            name="nightly", schedules=[Cron(NIGHTLY_CRON, timezone=NIGHTLY_TIMEZONE)], tags=tags,
            description="Retrain every symbol of configs/nightly.yaml after the US close, then forecast."),
        train_universe.to_deployment(
            name="on-demand", tags=tags,
            description="Train the symbols of the form's config (defaults: configs/schema.py)."),
        predict_universe.to_deployment(
            name="on-demand", tags=tags, parameters={"symbols": ["SAMPLE"]},
            description="Forecast every horizon from each symbol's latest trained model."),
    ]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m deployments.nightly",
                            description="Serve the nightly, train and predict deployments "
                                        "(needs PREFECT_API_URL pointing at a running server).").parse_args(argv)
    # Without a server, Prefect would serve against a temporary one that dies
    # with this process: no UI to see, no schedule kept.
    if not PREFECT_API_URL.value():
        print("error: PREFECT_API_URL is not set, so there is no server to serve to; start one with "
              "`prefect server start`, then `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`",
              file=sys.stderr)
        return 2
    serve(*deployments())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The deployments against a real ``prefect server start`` on a free loopback port.

One server for the module, in its own temporary ``PREFECT_HOME``; the
deployments are served by ``python -m deployments.serve`` as a child process
(the one command the README gives), and the nightly deployment is run with a
tiny config. Both processes are stopped at the end, whatever happens.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId, LogFilter,
                                            LogFilterFlowRunId)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.server.schemas.schedules import CronSchedule
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.serve import deployment_specs
from tests.flows.servers import REPO, start, stop, tail, wait_until
from tasks.store import ResultsStore

pytestmark = pytest.mark.server

SYMBOLS = ["AAA", "BBB"]
HORIZONS = [1, 5, 10, 30]


@pytest.fixture(scope="module")
def prefect_server(real_prefect_server) -> dict:
    """The session's real server (tests/flows/conftest.py). Named like that
    file's autouse harness on purpose: in this module it replaces that
    in-process test server, which these tests would not use."""
    return real_prefect_server



@pytest.fixture(scope="module")
def served(prefect_server) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``python -m deployments.serve`` with the environment pointing at the server."""
    log = prefect_server["home"] / "serve.log"
    proc = start([sys.executable, "-m", "deployments.serve"], prefect_server["env"], log)

    def registered() -> bool:
        with temporary_settings({PREFECT_API_URL: prefect_server["url"]}):
            with get_client(sync_client=True) as c:
                names = {f"{c.read_flow(d.flow_id).name}/{d.name}" for d in c.read_deployments()}
        return {"nightly-retrain/nightly", "train-universe/on-demand", "predict-universe/on-demand"} <= names

    try:
        wait_until(registered, 120, "python -m deployments.serve", log, proc, step=1)
        yield proc, log
    finally:
        stop(proc, signal.SIGINT, 20)  # Ctrl-C, as a user stops it


def _tiny(results: Path, symbols: list[str] = SYMBOLS, epochs: int = 3) -> dict:
    """A config (as the YAML file or the form holds it) that trains in about a second a symbol."""
    return {
        "data": {"source": "synthetic", "days": 420},
        "windows": {"seq_len": 20, "horizons": HORIZONS},
        "model": {"d_model": 8, "n_layers": 1, "d_state": 4},
        "training": {"epochs": epochs, "batch_size": 32, "patience": 5, "seed": 7},
        "run": {"symbols": symbols, "parallel": 1, "results_dir": str(results)},
    }


def _tiny_config(path: Path, results: Path) -> Path:
    path.write_text(yaml.safe_dump(_tiny(results)))
    return path


def _run_tree(client: SyncPrefectClient, root: UUID) -> dict[UUID, tuple[str, FlowRun]]:
    """The flow run ``root`` and every subflow run below it, by id: (flow name, flow run)."""
    tree = {root: client.read_flow_run(root)}
    frontier = [root]
    while frontier:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)), limit=200)
        frontier = [fr.id for fr in children if fr.id not in tree]
        tree |= {fr.id: fr for fr in children}
    return {i: (client.read_flow(fr.flow_id).name, fr) for i, fr in tree.items()}


def _run_deployment(client: SyncPrefectClient, served: tuple[subprocess.Popen, Path], name: str,
                    parameters: dict) -> tuple[State, dict[UUID, tuple[str, FlowRun]]]:
    """Trigger deployment ``name`` as the UI's Custom run does; wait for the served process to finish it."""
    proc, log = served
    deployment = client.read_deployment_by_name(name)
    run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)

    def finished() -> State | None:
        state = client.read_flow_run(run.id).state
        return state if state is not None and state.is_final() else None

    state = wait_until(finished, 240, f"{name} flow run {run.id}", log, proc, step=1)
    return state, _run_tree(client, run.id)


def test_nightly_deployment_runs_and_stores_models_forecasts_and_artifacts(served, client, tmp_path):
    deployment = client.read_deployment_by_name("nightly-retrain/nightly")
    [schedule] = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (
        "30 17 * * 1-5", "America/New_York", True)
    # 17:30 New York time on weekdays, through the end of DST (2 Nov 2025):
    # 21:30 UTC before, 22:30 after; Saturday and Sunday skipped
    dates = asyncio.run(CronSchedule(cron=schedule.schedule.cron, timezone=schedule.schedule.timezone).get_dates(
        n=4, start=dt.datetime(2025, 10, 30, 12, tzinfo=dt.timezone.utc)))
    utc = dt.timezone.utc
    assert list(dates) == [  # aware datetimes compare as instants
        dt.datetime(2025, 10, 30, 21, 30, tzinfo=utc), dt.datetime(2025, 10, 31, 21, 30, tzinfo=utc),
        dt.datetime(2025, 11, 3, 22, 30, tzinfo=utc), dt.datetime(2025, 11, 4, 22, 30, tzinfo=utc)]
    for name in ("train-universe/on-demand", "predict-universe/on-demand"):
        assert client.read_deployment_by_name(name).schedules == []

    results = tmp_path / "results"
    config = _tiny_config(tmp_path / "nightly.yaml", results)
    # epochs from the run form beat the file's 3, as a UI "Custom run" would
    state, tree = _run_deployment(client, served, "nightly-retrain/nightly",
                                  {"config_path": str(config), "epochs": 2})
    assert state.type == StateType.COMPLETED, f"{state.type}: {state.message}\n{tail(served[1])}"

    with ResultsStore(results) as store:
        runs = {r["symbol"]: r for r in store.symbol_runs()}
        predictions = store.predictions()
    assert sorted(runs) == SYMBOLS
    assert all(r["status"] == "completed" and r["epochs"] == 2 for r in runs.values())
    assert sorted((p["symbol"], p["horizon"]) for p in predictions) == [
        (s, h) for s in SYMBOLS for h in HORIZONS]
    for p in predictions:
        assert p["model_run_id"] == runs[p["symbol"]]["run_id"]
        assert p["predicted_price"] == pytest.approx(p["last_close"] * math.exp(p["predicted_return"]), rel=1e-9)

    # one nightly-symbol subflow per symbol, each training then forecasting as subflows, all completed
    assert sorted(name for name, _ in tree.values()) == sorted(
        ["nightly-retrain", "score-forecasts"]
        + ["nightly-symbol", "train-symbol", "forecast-symbol"] * len(SYMBOLS))
    assert all(fr.state.type == StateType.COMPLETED for _, fr in tree.values())

    artifacts = {a.key: a for a in client.read_artifacts() if a.key and a.flow_run_id in tree}
    expected = {"train-summary": "table", "forecasts": "table", "metrics-aaa": "table", "metrics-bbb": "table",
                "plots-aaa": "markdown", "plots-bbb": "markdown"}
    assert {k: artifacts[k].type for k in expected if k in artifacts} == expected
    assert tree[artifacts["train-summary"].flow_run_id][0] == "nightly-retrain"
    assert tree[artifacts["forecasts"].flow_run_id][0] == "nightly-retrain"

    # Lightning's own log lines reach the run logs of each symbol (PREFECT_LOGGING_EXTRA_LOGGERS)
    for i, (name, fr) in tree.items():
        if name == "train-symbol":
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[i])), limit=200)
            assert any(log.name.startswith("pytorch_lightning") for log in logs), f"{fr.name}: no Lightning logs"


def test_nightly_run_fails_naming_the_symbol_after_forecasting_the_others(served, client, tmp_path):
    results = tmp_path / "results"
    config = _tiny_config(tmp_path / "nightly.yaml", results)
    state, tree = _run_deployment(client, served, "nightly-retrain/nightly",
                                  {"config_path": str(config), "symbols": ["AAA", "../etc"], "epochs": 1})
    assert state.type == StateType.FAILED
    assert "NightlyError: 1 of 2 symbols failed: ../ETC: ValueError: invalid symbol '../ETC'" in state.message
    # the good symbol was trained and forecast before the run failed
    with ResultsStore(results) as store:
        assert sorted((r["symbol"], r["status"]) for r in store.symbol_runs()) == [
            ("../ETC", "failed"), ("AAA", "completed")]
        assert sorted(p["horizon"] for p in store.predictions("AAA")) == HORIZONS
    assert sorted((fr.name, fr.state.type) for name, fr in tree.values() if name == "forecast-symbol") == [
        ("forecast-AAA", StateType.COMPLETED)]


def test_on_demand_deployments_train_and_predict_from_form_parameters(served, client, tmp_path):
    results = tmp_path / "results"
    # the Config parameter arrives as JSON, as the UI form sends it
    state, _ = _run_deployment(client, served, "train-universe/on-demand",
                               {"config": _tiny(results, ["CCC"], epochs=1)})
    assert state.type == StateType.COMPLETED, f"{state.type}: {state.message}"
    with ResultsStore(results) as store:
        [trained] = store.symbol_runs()
    assert (trained["symbol"], trained["status"], trained["epochs"]) == ("CCC", "completed", 1)

    state, tree = _run_deployment(client, served, "predict-universe/on-demand",
                                  {"symbols": ["CCC"], "results_dir": str(results)})
    assert state.type == StateType.COMPLETED, f"{state.type}: {state.message}"
    with ResultsStore(results) as store:
        forecasts = store.predictions("CCC")
    assert sorted(p["horizon"] for p in forecasts) == HORIZONS
    assert {p["model_run_id"] for p in forecasts} == {trained["run_id"]}
    [artifact] = [a for a in client.read_artifacts() if a.key == "forecasts" and a.flow_run_id in tree]
    assert artifact.type == "table"


def test_prefect_yaml_declares_the_same_deployments_on_a_process_pool(prefect_server, client):
    env = prefect_server["env"]
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    for cmd in (["work-pool", "create", "mambaflow", "--type", "process"], ["deploy", "--all"]):
        done = subprocess.run(prefect + cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"prefect {' '.join(cmd)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    nightly = client.read_deployment_by_name("nightly-retrain/nightly")
    [schedule] = nightly.schedules
    [spec] = [s["schedules"][0] for s in deployment_specs() if s["name"] == "nightly"]
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (spec["cron"], spec["timezone"])
    for name, entrypoint in [("nightly-retrain/nightly", "flows/nightly.py:nightly_retrain"),
                             ("train-universe/on-demand", "flows/train.py:train_universe"),
                             ("predict-universe/on-demand", "flows/predict.py:predict_universe")]:
        d = client.read_deployment_by_name(name)
        assert (d.entrypoint, d.work_pool_name) == (entrypoint, "mambaflow")
        assert d.job_variables["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"] == "pytorch_lightning"
        # the worker runs the flow in the directory `prefect deploy` ran in
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    assert client.read_work_pool("mambaflow").type == "process"

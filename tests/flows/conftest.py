"""Prefect servers, each started once per session: the in-process test
harness (autouse; entering it costs 10-25 s), and a real ``prefect server
start`` on PostgreSQL for the tests that need other processes (workers,
serving, Dask) to reach it."""

from __future__ import annotations

import os
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from configs.load import load_config
from configs.schema import Config
from tests.flows.servers import api_healthy, free_port, start, stop, wait_until


@pytest.fixture(autouse=True, scope="session")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def real_prefect_server(postgres, tmp_path_factory) -> Iterator[dict]:
    """``prefect server start`` on a free loopback port, its own PREFECT_HOME,
    its database a fresh one on the session's PostgreSQL server (SQLite locks
    when many processes create flow runs at once). Yields url, env (for
    child processes: only this server's PREFECT_ settings) and home."""
    home = tmp_path_factory.mktemp("prefect-home")
    database = f"prefect_{secrets.token_hex(4)}"
    admin = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url.set(drivername="postgresql+asyncpg", database=database)
                                                           .render_as_string(hide_password=False),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # no runs from the cron schedules themselves: the tests trigger their own
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    log = home / "server.log"
    proc = start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                 env, log)

    try:
        wait_until(lambda: api_healthy(url), 120, "prefect server start", log, proc)
        yield {"url": url, "env": env, "home": home}
    finally:
        stop(proc, signal.SIGTERM, 15)
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture()
def client(real_prefect_server) -> Iterator[SyncPrefectClient]:
    """A client of the session's real Prefect server."""
    with temporary_settings({PREFECT_API_URL: real_prefect_server["url"]}):
        with get_client(sync_client=True) as c:
            yield c


def tiny_yaml(folder: Path, epochs: int) -> Path:
    """A config file for the command lines: a model small enough to train in about a second."""
    path = folder / "tiny.yaml"
    path.write_text("windows: {seq_len: 20}\n"
                    "model: {d_model: 8, n_layers: 1, d_state: 4}\n"
                    f"training: {{epochs: {epochs}, seed: 7}}\n")
    return path


def tiny_config(results: Path, symbols: list[str], source: str = "synthetic", **training) -> Config:
    """A model and history small enough to train in about a second."""
    return load_config(overrides={
        "data": {"source": source, "days": 420},
        "windows": {"seq_len": 20},
        "model": {"d_model": 8, "n_layers": 1, "d_state": 4},
        "training": {"epochs": 3, "batch_size": 32, "patience": 5, "seed": 7, **training},
        "run": {"symbols": symbols, "parallel": 2, "results_dir": str(results)},
    })

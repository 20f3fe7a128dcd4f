"""``--executor`` mistakes end the run before any work, exit 2, within 30 s,
with a message that names the pool, URL or address and the fix; nothing is
written. (The executors themselves: test_cluster.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.nightly import main as nightly_main
from flows.predict import main as predict_main
from flows.train import main as train_main
from tests.flows.servers import free_port

SHORT = ["--source", "synthetic", "--days", "420", "--symbols", "AAA", "--epochs", "1"]


def _exit_2(main, argv: list[str], results: Path, capsys) -> str:
    t0 = time.monotonic()
    assert main([*argv, "--results", str(results)]) == 2
    assert time.monotonic() - t0 < 30
    assert not results.exists()  # nothing written: no store, no cache
    return capsys.readouterr().err


def test_a_work_pool_that_does_not_exist_is_named_with_the_fix(tmp_path, capsys):
    err = _exit_2(train_main, [*SHORT, "--executor", "workers", "--work-pool", "no-such-pool"], tmp_path / "r", capsys)
    assert "--work-pool 'no-such-pool': no such work pool on the Prefect server http" in err
    assert "python -m deployments.workers --pool no-such-pool" in err


def test_a_pool_without_the_per_symbol_deployment_is_named_with_the_fix(tmp_path, capsys):
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="empty-pool", type="process"))
    err = _exit_2(nightly_main, [*SHORT, "--executor", "workers", "--work-pool", "empty-pool"], tmp_path / "r", capsys)
    assert "no deployment 'nightly-symbol/worker' on the Prefect server" in err
    assert "python -m deployments.workers --pool empty-pool" in err


def test_workers_without_a_shared_server_say_how_to_start_one(tmp_path, capsys):
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        err = _exit_2(train_main, [*SHORT, "--executor", "workers"], tmp_path / "r", capsys)
    assert "PREFECT_API_URL is not set" in err and "prefect server start" in err


def test_a_prefect_server_that_does_not_answer_is_named(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings({PREFECT_API_URL: url}):
        err = _exit_2(predict_main, ["--symbols", "AAA", "--executor", "workers"], tmp_path / "r", capsys)
    assert f"the Prefect server at PREFECT_API_URL={url} does not answer" in err


def test_a_dask_scheduler_that_does_not_answer_is_named_with_the_fix(tmp_path, capsys):
    address = f"tcp://127.0.0.1:{free_port()}"
    err = _exit_2(train_main, [*SHORT, "--executor", "dask", "--dask-address", address], tmp_path / "r", capsys)
    assert f"--dask-address {address}: no Dask scheduler answered within 10 s" in err
    assert "dask scheduler" in err


def test_an_unknown_executor_names_the_key_and_the_choices(tmp_path, capsys):
    err = _exit_2(train_main, [*SHORT, "--executor", "ray"], tmp_path / "r", capsys)
    assert "run.executor" in err and "'threads', 'workers' or 'dask'" in err and "'ray'" in err


@pytest.mark.parametrize("kind", ["threads", "dask"])
def test_an_executor_without_a_server_of_its_own_needs_no_prefect_api_url(kind, tmp_path):
    """threads and a local Dask cluster run on Prefect's temporary server: no check fails."""
    from configs.load import load_config
    from flows.cli import check_executor

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        check_executor(load_config(overrides={"run": {"executor": kind}}), "train-symbol")

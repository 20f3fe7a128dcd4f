"""Many machines, simulated with processes: every symbol of a run trains in
another process that shares nothing with the run but the Prefect server and
the results store (PostgreSQL), through ``--executor workers`` (two
``prefect worker start`` processes, each in a directory of its own) and
``--executor dask`` (a local cluster of two processes); a third directory
forecasts from the models in the store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import FlowRun

from tasks.store import METADATA_FILE, ResultsStore, read_model_files
from tests.flows.conftest import tiny_yaml
from tests.flows.servers import REPO, start, stop, tail, wait_until

pytestmark = [pytest.mark.server, pytest.mark.cluster]

SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]
POOL = "mambaflow-test"


@pytest.fixture(scope="module")
def prefect_server(real_prefect_server) -> dict:
    """The session's real server: replaces tests/flows/conftest.py's in-process harness here."""
    return real_prefect_server



def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, int]:
    """Exit code, output and pid of ``python -m ...cmd`` run to its end in ``cwd``."""
    proc = subprocess.Popen([sys.executable, "-m", *cmd], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out, proc.pid


def _trained(store_url: str, reader: Path) -> dict[str, dict]:
    """Each symbol's newest model's metadata, read from the store only (``reader`` stays empty)."""
    with ResultsStore(reader, store_url) as store:
        runs = store.runs()
        assert len(runs) == 1 and runs[0]["status"] == "completed"
        rows = store.symbol_runs(runs[0]["run_id"])
        assert [(r["symbol"], r["status"]) for r in rows] == [(s, "completed") for s in SYMBOLS]
        assert all(store.evaluations(r["run_id"], r["symbol"]) for r in rows)
        return {r["symbol"]: json.loads(read_model_files(store, r["model_path"])[METADATA_FILE]) for r in rows}


def _subflow_runs(client: SyncPrefectClient, store_url: str) -> list[FlowRun]:
    """The train-symbol flow runs of this test (the server is the session's: others' runs are there too)."""
    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["train-symbol"])))
    return [r for r in runs if r.parameters["config"]["run"]["store_url"] == store_url]


def _under_one_universe_run(client: SyncPrefectClient, runs: list[FlowRun]) -> None:
    """Each per-symbol flow run is a subflow of the same universe flow run (the UI shows them under it)."""
    assert len(runs) == len(SYMBOLS) and all(r.state.is_completed() for r in runs)
    parents = {client.read_task_run(r.parent_task_run_id).flow_run_id for r in runs}
    assert len(parents) == 1
    assert client.read_flow(client.read_flow_run(parents.pop()).flow_id).name == "train-universe"


def _forecast_from_a_third_directory(tmp_path: Path, env: dict[str, str], store_url: str, *executor: str) -> None:
    third = tmp_path / "machine-c"
    third.mkdir()
    code, out, _ = _run(["flows.predict", "--symbols", ",".join(SYMBOLS), "--store-url", store_url,
                         "--results", str(third / "results"), *executor], env, third)
    assert code == 0, out[-3000:]
    with ResultsStore(tmp_path / "reader", store_url) as store:
        rows = store.predictions()
    assert sorted({(r["symbol"], r["horizon"]) for r in rows}) == [(s, h) for s in SYMBOLS for h in (1, 5, 10, 30)]
    assert not (third / "results" / "store.db").exists()


def test_workers_on_two_directories_train_every_symbol_and_a_third_forecasts(tmp_path, prefect_server, postgres_url,
                                                                            client):
    env = prefect_server["env"]
    code, out, _ = _run(["deployments.workers", "--pool", POOL], env, REPO)
    assert code == 0, out
    workers = []
    try:
        for i in (1, 2):
            home = tmp_path / f"worker-{i}"
            home.mkdir()
            workers.append(start([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name",
                                  f"worker-{i}"],
                                 env | {"MAMBAFLOW_RESULTS_DIR": str(home / "results"),
                                        "PREFECT_HOME": str(home / ".prefect")},
                                 home / "worker.log", cwd=home))
        wait_until(lambda: len([w for w in client.read_workers_for_work_pool(POOL) if w.status == "ONLINE"]) == 2,
                   90, "two workers online", tmp_path / "worker-1" / "worker.log", workers[0], step=1)

        parent = tmp_path / "machine-a"
        parent.mkdir()
        code, out, pid = _run(["flows.train", "--config", str(tiny_yaml(tmp_path, epochs=1)), "--source", "synthetic",
                               "--days", "420", "--symbols", ",".join(SYMBOLS), "--executor", "workers",
                               "--work-pool", POOL, "--parallel", "2", "--store-url", postgres_url,
                               "--results", str(parent / "results")], env, parent)
        logs = "\n".join(tail(tmp_path / f"worker-{i}" / "worker.log") for i in (1, 2))
        assert code == 0, out[-3000:] + logs
        assert "4 of 4 symbols trained" in out

        meta = _trained(postgres_url, tmp_path / "reader")
        runs = _subflow_runs(client, postgres_url)
        _under_one_universe_run(client, runs)
        # each symbol trained in a flow run's process started by a worker: not in the run's process
        assert len({r.work_queue_name for r in runs}) == 1  # the run's own queue of the pool
        assert runs[0].work_queue_name.startswith("run-train-symbol-")
        # --parallel 2: never more than two of them running at once (the run's work queue), and the queue is gone
        spans = [(r.start_time, r.end_time) for r in runs]
        assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) <= 2
        assert [q.name for q in client.read_work_queues(work_pool_name=POOL)] == ["default"]
        infra = {int(r.infrastructure_pid.rsplit(":", 1)[-1]) for r in runs}
        assert {m["trained_on"]["pid"] for m in meta.values()} == infra and pid not in infra
        # the run's own directory got no caches or work dirs: the workers' did
        assert not (parent / "results" / "work").exists() and not (parent / "results" / "prefect").exists()
        assert any((tmp_path / f"worker-{i}" / "results" / "prefect").exists() for i in (1, 2))
        # the summary table was rebuilt from the store: the 1-day skill the store holds
        assert all(f"{s}     champion  1 " in out for s in SYMBOLS)

        _forecast_from_a_third_directory(tmp_path, env, postgres_url, "--executor", "workers", "--work-pool", POOL)
    finally:
        for w in workers:
            stop(w, signal.SIGTERM, 20)


def test_dask_local_cluster_trains_every_symbol_in_its_processes(tmp_path, prefect_server, postgres_url, client):
    env = prefect_server["env"]
    parent = tmp_path / "machine-a"
    parent.mkdir()
    code, out, pid = _run(["flows.train", "--config", str(tiny_yaml(tmp_path, epochs=1)), "--source", "synthetic",
                           "--days", "420", "--symbols", ",".join(SYMBOLS), "--executor", "dask", "--parallel", "2",
                           "--store-url", postgres_url, "--results", str(parent / "results")], env, parent)
    assert code == 0, out[-3000:]
    assert "4 of 4 symbols trained" in out
    meta = _trained(postgres_url, tmp_path / "reader")
    pids = {m["trained_on"]["pid"] for m in meta.values()}
    assert pid not in pids and 1 <= len(pids) <= 2  # the cluster's two worker processes, not the run's
    runs = _subflow_runs(client, postgres_url)
    _under_one_universe_run(client, runs)
    assert all(r.work_pool_name is None for r in runs)

    _forecast_from_a_third_directory(tmp_path, env, postgres_url, "--executor", "dask", "--parallel", "2")
    assert not (tmp_path / "reader").exists()  # the store was read through its URL only


def test_dask_on_prefects_temporary_server_reports_to_that_one_server(tmp_path):
    """Without PREFECT_API_URL the run starts Prefect's temporary server, and its URL travels with each
    task to the Dask workers: without that, each worker process would start a temporary server of
    its own, and the symbols' subflows would be recorded there, not under the run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    code, out, _ = _run(["flows.train", "--config", str(tiny_yaml(tmp_path, epochs=1)), "--source", "synthetic",
                         "--days", "420", "--symbols", "AAA,BBB", "--executor", "dask", "--parallel", "2",
                         "--results", str(tmp_path / "results")], env, tmp_path)
    assert code == 0, out[-3000:]
    assert "2 of 2 symbols trained" in out
    assert out.count("Starting temporary server") == 1, out[-3000:]
    # the subflows ran in the cluster's processes and logged to the run's server
    assert "Beginning subflow run 'train-AAA'" in out and "Beginning subflow run 'train-BBB'" in out

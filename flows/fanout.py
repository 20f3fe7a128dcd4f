"""One subflow per item, a few at a time: the shape every universe flow shares.

Each item (a symbol, or a backtest's symbol and fold) is a task that calls
the subflow; the UI shows every subflow under the universe run. An item's
failure is its result (the exception), never the run's: the others go on.
Where the subflows run (``run.executor``) is an existing engine's choice,
never a scheduler of ours:

- ``threads``: Prefect's ``ThreadPoolTaskRunner(max_workers=parallel)``, in this process;
- ``dask``: prefect-dask's ``DaskTaskRunner``, on the scheduler at
  ``run.dask_address`` or on a ``LocalCluster`` of ``parallel`` processes;
- ``workers``: each item is a flow run of the subflow's ``worker`` deployment
  (``run_deployment``, a subflow of the universe run), picked up by any
  ``prefect worker start --pool POOL``; a work queue of the pool made for the
  run, with a concurrency limit of ``parallel``, caps the items in flight. The subflow's
  return value stays on the worker: ``for_each`` returns a ``WorkerRun``,
  and the caller reads what the subflow stored from the results store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from configs.schema import Config, RunConfig

WORKER_DEPLOYMENT = "worker"  # the name of each per-symbol flow's deployment for --executor workers
SUBMITTERS = 32  # threads waiting on worker flow runs: at least `parallel`; the run's work queue caps the rest


RESULTS_ENV = "MAMBAFLOW_RESULTS_DIR"  # on a worker machine: its local results directory (caches, work dirs)


def for_executor(config: Config) -> Config:
    """The config the subflows get. Under ``dask`` and ``workers`` they run in
    other processes, maybe on other machines: the default store (SQLite in the
    results directory) becomes its explicit absolute URL, so that every
    process on this machine writes to the same one (give ``--store-url`` for
    other machines)."""
    if config.run.executor == "threads" or config.run.store_url is not None:
        return config
    store = Path(config.run.results_dir).resolve() / "store.db"
    return config.model_copy(update={"run": config.run.model_copy(update={"store_url": f"sqlite:///{store}"})})


def local_results(results_dir: str) -> Path:
    """A per-symbol flow's results directory for caches and work dirs:
    ``$MAMBAFLOW_RESULTS_DIR`` where the worker machine sets it, else ``results_dir``."""
    return Path(os.environ.get(RESULTS_ENV) or results_dir).resolve()


class SubflowRunError(RuntimeError):
    """A flow run on a worker that did not complete: its name, state and message."""


@task(name="subflow", task_run_name="{label}", cache_policy=NO_CACHE)
def _run_item(subflow: Flow, label: str, kwargs: dict[str, Any]) -> Any:
    return subflow(**kwargs)


@dataclass(frozen=True)
class WorkerRun:
    """What ``for_each`` returns for an item that completed on a worker: its
    flow run, and when it was submitted (rows it stored are no older)."""
    flow_run_id: str
    flow_run_name: str
    submitted: dt.datetime


@task(name="subflow", task_run_name="{label}", cache_policy=NO_CACHE)
def _run_deployment_item(deployment: str, label: str, kwargs: dict[str, Any], queue: str) -> WorkerRun:
    from prefect.deployments import run_deployment

    submitted = dt.datetime.now(dt.timezone.utc)
    run = run_deployment(deployment, parameters=kwargs, as_subflow=True, poll_interval=1, work_queue_name=queue)
    if run.state is None or not run.state.is_completed():
        state = run.state.type.value if run.state is not None else "no state"
        message = run.state.message if run.state is not None else ""
        raise SubflowRunError(f"flow run {run.name} ({run.id}) on a worker ended {state}: {message}")
    return WorkerRun(str(run.id), run.name, submitted)


def _dask_runner(run: RunConfig) -> TaskRunner:
    from prefect_dask import DaskTaskRunner

    # Dask's INFO lines (workers starting and closing) would fill the run's log
    os.environ.setdefault("DASK_DISTRIBUTED__LOGGING__DISTRIBUTED", "warning")  # the local cluster's processes
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if run.dask_address:
        return DaskTaskRunner(address=run.dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": run.parallel, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def for_each(subflow: Flow, items: list[tuple[str, dict[str, Any]]], parallel: int | RunConfig,
             on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
    """``subflow(**kwargs)`` for every ``(label, kwargs)`` item, ``parallel`` at a time.

    Returns each item's result, or the exception it raised, in ``items``
    order (under ``workers``: a ``WorkerRun``); ``on_done(index, outcome)``
    is called as each one finishes. The label names the item's task in the UI.
    ``parallel`` is the run section (its executor, parallel, work_pool,
    dask_address), or an int: that many threads.
    """
    run = parallel if isinstance(parallel, RunConfig) else RunConfig(parallel=parallel)
    if run.executor == "workers":
        return _for_each_on_workers(subflow, items, run, on_done)
    if run.executor == "dask":
        path = flow_path(subflow)
        with _api_for_other_processes():
            return _collect(_dask_runner(run), _run_item_at,
                            [{"path": path, "label": label, "kwargs": kwargs} for label, kwargs in items], on_done)
    return _collect(ThreadPoolTaskRunner(max_workers=run.parallel), _run_item,
                    [{"subflow": subflow, "label": label, "kwargs": kwargs} for label, kwargs in items], on_done)


def flow_path(subflow: Flow) -> str:
    """``flows.train:train_symbol``: how another process finds the flow. A
    Flow object would travel by value, without the globals its annotations
    name (Config), and fail there to build its parameter model."""
    module, name = subflow.fn.__module__, subflow.fn.__name__
    if module == "__main__" or getattr(importlib.import_module(module), name, None) is not subflow:
        raise ValueError(f"flow {subflow.name!r} must be a module-level flow of an importable module to run on "
                         f"other processes (found {module}.{name})")
    return f"{module}:{name}"


@task(name="subflow", task_run_name="{label}", cache_policy=NO_CACHE)
def _run_item_at(path: str, label: str, kwargs: dict[str, Any]) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


def _api_for_other_processes() -> contextlib.AbstractContextManager:
    """Where this process runs on Prefect's temporary server (no
    PREFECT_API_URL), its URL in the settings that travel with each task to
    the Dask workers: otherwise each worker process would start a temporary
    server of its own, and the subflows would not appear under this run."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        return contextlib.nullcontext()
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the one this process's client started (one per process)
    server.start()  # returns at once when it runs
    return temporary_settings(updates={PREFECT_API_URL: server.api_url})


def _for_each_on_workers(subflow: Flow, items: list[tuple[str, dict[str, Any]]], run: RunConfig,
                         on_done: Callable[[int, Any], None] | None) -> list[Any]:
    from prefect.client.orchestration import get_client

    # This run's own work queue in the pool, with a concurrency limit of `parallel`:
    # the server hands the workers at most that many of its flow runs at a time.
    # (A global concurrency limit held around run_deployment was tried first: the
    # waiting submitters were told to retry after up to 30 s, so slots stood idle.)
    with get_client(sync_client=True) as client:
        queue = client.create_work_queue(name=f"run-{subflow.name}-{uuid.uuid4().hex[:12]}",
                                         work_pool_name=run.work_pool, concurrency_limit=run.parallel,
                                         description="the flow runs of one universe run; removed at its end")
        try:
            runner = ThreadPoolTaskRunner(max_workers=max(run.parallel, min(len(items), SUBMITTERS)))
            return _collect(runner, _run_deployment_item,
                            [{"deployment": f"{subflow.name}/{WORKER_DEPLOYMENT}", "label": label, "kwargs": kwargs,
                              "queue": queue.name} for label, kwargs in items], on_done)
        finally:
            client.delete_work_queue_by_id(queue.id)


def _collect(runner: TaskRunner, item_task: Any, parameters: list[dict[str, Any]],
             on_done: Callable[[int, Any], None] | None) -> list[Any]:
    outcomes: dict[int, Any] = {}
    with runner:
        futures = {runner.submit(item_task, p): i for i, p in enumerate(parameters)}
        for future in as_completed(list(futures)):
            i = futures[future]
            outcomes[i] = future.result(raise_on_failure=False)
            if on_done is not None:
                on_done(i, outcomes[i])
    return [outcomes[i] for i in range(len(parameters))]


def for_each_symbol(subflow: Flow, symbols: list[str], parallel: int | RunConfig, kwargs: dict[str, Any],
                    on_done: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
    """``subflow(symbol=s, **kwargs)`` for every symbol, ``parallel`` at a time.

    Returns {symbol: result, or the exception it raised}, in ``symbols``
    order; ``on_done(symbol, outcome)`` is called as each one finishes.
    """
    done = None if on_done is None else (lambda i, outcome: on_done(symbols[i], outcome))
    items = [(f"symbol-{s}", {"symbol": s, **kwargs}) for s in symbols]
    return dict(zip(symbols, for_each(subflow, items, parallel, done)))


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def split_outcomes(outcomes: dict[str, Any], log: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """``for_each_symbol``'s outcomes as (results, failures): {symbol: result}
    and {symbol: error text}, each failure logged as an error."""
    results, failures = {}, {}
    for symbol, result in outcomes.items():
        if isinstance(result, BaseException):
            failures[symbol] = error_text(result)
            log.error("%s: %s", symbol, failures[symbol])
        else:
            results[symbol] = result
    return results, failures

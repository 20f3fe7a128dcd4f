"""Results store under concurrent writers: threads, and two processes writing
runs into one store while a third reads. On SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
import zlib

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from tasks.evaluate import evaluate_forecasts
from tasks.store import (
    EPOCH_METRICS, EVALUATIONS, MODEL_FILES, SYMBOL_RUNS, ResultsStore, load_model, read_model_files, save_trained_model,
)

HORIZONS = [1, 5, 10, 30]


@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "store-per-thread"])
def test_concurrent_writes_from_threads_all_land(tmp_path, store_url, shared):
    symbols = ["AAPL", "MSFT", "GOOG", "NVDA"]
    # a timeout: a thread that fails before the barrier breaks it instead of hanging the others
    barrier, errors = threading.Barrier(len(symbols), timeout=60), []

    def work(main, rid, symbol):
        try:
            # the shared store stays open for the others: only a store of its own is closed
            with contextlib.nullcontext(main) if shared else ResultsStore(tmp_path, store_url) as s:
                barrier.wait()
                for e in range(25):          # one transaction per epoch, like a live logger
                    s.record_epochs(rid, symbol, [{"epoch": e, "val_loss": e / 10}])
                    s.symbol_runs(rid)        # interleaved reads
                s.record_evaluation(rid, symbol, evaluate_forecasts(
                    np.ones((3, 1)), np.ones((3, 1)), [1], np.zeros((2, 1))))
                s.record_symbol(rid, symbol, "completed", epochs=25)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    with ResultsStore(tmp_path, store_url) as main:
        rid = main.new_run_id()
        main.start_run(rid, {}, symbols)
        threads = [threading.Thread(target=work, args=(main, rid, sym)) for sym in symbols]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert [r["symbol"] for r in main.symbol_runs(rid)] == sorted(symbols)
        for sym in symbols:
            assert [(r["run_id"], r["symbol"]) for r in main.symbol_runs(rid, sym)] == [(rid, sym)]
            assert [r["val_loss"] for r in main.epoch_metrics(rid, sym)] == [e / 10 for e in range(25)]
            assert main.evaluations(rid, sym)[0]["skill_zero"] == 1.0


def test_threads_replacing_the_same_rows_never_collide(tmp_path, store_url):
    """Every thread rewrites the same symbol_runs, epoch and prediction rows.
    (A delete-then-insert fails here on PostgreSQL: two transactions delete
    the same missing row, both insert it, the second hits the primary key.)"""
    n_threads, rounds, errors = 4, 15, []
    barrier = threading.Barrier(n_threads, timeout=60)

    def work(store, rid, i):
        try:
            barrier.wait()
            for k in range(rounds):
                value = float(i * 1000 + k)
                store.record_symbol(rid, "AAPL", "completed", epochs=k, seconds=value)
                store.record_epochs(rid, "AAPL", [{"epoch": 0, "val_loss": value}])
                store.record_predictions([{
                    "model_run_id": rid, "symbol": "AAPL", "as_of": "2025-01-03", "horizon": 1,
                    "target_date": "2025-01-06", "predicted_return": value, "predicted_price": 1.0,
                    "last_close": 1.0}])
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    with ResultsStore(tmp_path, store_url) as store:
        rid = store.new_run_id()
        store.start_run(rid, {}, ["AAPL"])
        threads = [threading.Thread(target=work, args=(store, rid, i)) for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        [row] = store.symbol_runs()
        [epoch] = store.epoch_metrics(rid, "AAPL")
        [prediction] = store.predictions()
    # the last write of some thread won, whole
    last = {float(i * 1000 + rounds - 1) for i in range(n_threads)}
    assert row["seconds"] in last and row["epochs"] == rounds - 1
    assert epoch["val_loss"] in last and prediction["predicted_return"] in last


def test_a_transaction_commits_everything_or_nothing(store):
    rid = store.new_run_id()
    store.start_run(rid, {}, ["AAPL"])
    seen_inside = []
    with pytest.raises(RuntimeError, match="crash after the evaluations"):
        with store.transaction():
            store.record_epochs(rid, "AAPL", [{"epoch": 0, "val_loss": 1.0}])
            store.record_evaluation(rid, "AAPL", [{"horizon": 1, "n": 3}])
            # another thread (another connection) sees none of it before the commit
            reader = threading.Thread(target=lambda: seen_inside.append(store.epoch_metrics(rid, "AAPL")))
            reader.start()
            reader.join()
            raise RuntimeError("crash after the evaluations")
    assert seen_inside == [[]]
    assert store.epoch_metrics(rid, "AAPL") == [] and store.evaluations(rid, "AAPL") == []
    with store.transaction():
        store.record_epochs(rid, "AAPL", [{"epoch": 0, "val_loss": 1.0}])
        store.record_symbol(rid, "AAPL", "completed", epochs=1)
    assert [r["val_loss"] for r in store.epoch_metrics(rid, "AAPL")] == [1.0]
    assert [r["epochs"] for r in store.symbol_runs(rid)] == [1]


# ---------------------------------------------------------------- two processes

WRITERS = {"one": ["AAA", "SHARED"], "two": ["BBB", "SHARED"]}
RUNS_PER_WRITER = 3


def _weights(key: str) -> dict[str, torch.Tensor]:
    """The weights a writer saves for the model ``key``: a function of the key, so a reader can check them."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return {"layer.weight": torch.randn(16, 8, generator=g), "layer.bias": torch.randn(16, generator=g)}


def _write_runs(url: str | None, results_dir: str, writer: str, start: multiprocessing.Barrier) -> None:
    """One writer process: open the store when the other does (both may create
    its tables), then save RUNS_PER_WRITER runs, each symbol's model and rows
    through ``save_trained_model`` (what ``tasks.steps.save_run`` calls; this
    module imports no Prefect, so the process starts in seconds). Saving is
    slowed inside its transaction, between the model's rows and its
    symbol_run, to give the reader time to look."""
    record_symbol = ResultsStore.record_symbol

    def slow_record_symbol(self, *args, **kwargs):
        time.sleep(0.1)
        return record_symbol(self, *args, **kwargs)

    ResultsStore.record_symbol = slow_record_symbol
    start.wait()
    with ResultsStore(results_dir, url) as store:
        for _ in range(RUNS_PER_WRITER):
            rid = store.new_run_id()
            store.start_run(rid, {"writer": writer}, WRITERS[writer])
            for symbol in WRITERS[writer]:
                key = f"store:{symbol}/{rid}"
                save_trained_model(
                    store, symbol, rid, _weights(key), {"symbol": symbol, "run_id": rid, "writer": writer},
                    {"plot.png": rid.encode()}, [{"epoch": e, "val_loss": 1.0 - e / 4} for e in range(2)],
                    [{"horizon": h, "n": 10, "mae": 0.01 * h} for h in HORIZONS], epochs=2, seconds=1.0)
            store.finish_run(rid, "completed")


def _snapshot(engine: sa.Engine) -> dict[str, set]:
    """Which (run, symbol) pairs each table holds, all read in one snapshot."""
    def pairs(conn, table, *where):
        return set(conn.execute(sa.select(table.c.run_id, table.c.symbol).where(*where).distinct()).all())

    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():  # SQLite (WAL): a read transaction is one snapshot too
            return {
                "models": pairs(conn, MODEL_FILES),
                "completed": pairs(conn, SYMBOL_RUNS, SYMBOL_RUNS.c.status == "completed",
                                   SYMBOL_RUNS.c.model_path.is_not(None)),
                "epochs": pairs(conn, EPOCH_METRICS),
                "evaluations": pairs(conn, EVALUATIONS),
            }


def test_two_processes_write_runs_and_a_reader_never_sees_half_a_model(tmp_path, store_url):
    total = RUNS_PER_WRITER * sum(len(s) for s in WRITERS.values())
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: separate processes, not forks of this one
    start = ctx.Barrier(len(WRITERS), timeout=120)
    procs = [ctx.Process(target=_write_runs, args=(store_url, str(tmp_path), w, start)) for w in WRITERS]
    for p in procs:
        p.start()
    snapshots, checked = [], set()
    deadline = time.monotonic() + 300
    with ResultsStore(tmp_path, store_url) as reader:
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            snap = _snapshot(reader.engine)
            snapshots.append(snap)
            # a model is visible with its symbol_run, epochs and evaluations, or not at all
            assert snap["models"] == snap["completed"] == snap["epochs"] == snap["evaluations"], snap
            for rid, symbol in snap["models"] - checked:  # and each visible model loads whole
                key = f"store:{symbol}/{rid}"
                state, meta = load_model(reader, key)
                assert (meta["run_id"], meta["symbol"]) == (rid, symbol)
                assert all(torch.equal(state[k], v) for k, v in _weights(key).items())
                assert read_model_files(reader, key)["plot.png"] == rid.encode()
                checked.add((rid, symbol))
            time.sleep(0.01)
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0, 0]

        final = _snapshot(reader.engine)
        runs = reader.runs()
        # no row lost: every run and every symbol of every writer, whole
        assert len(final["models"]) == total and final["models"] == final["completed"] == final["epochs"]
        assert sorted(r["config"]["writer"] for r in runs) == sorted(list(WRITERS) * RUNS_PER_WRITER)
        assert {r["status"] for r in runs} == {"completed"}
        for rid, symbol in final["models"]:
            assert len(reader.evaluations(rid, symbol)) == len(HORIZONS)
            assert [e["val_loss"] for e in reader.epoch_metrics(rid, symbol)] == [1.0, 0.75]
        # the symbol both wrote: its latest model is that of the last run to save it
        shared = [r for r in reader.symbol_runs() if r["symbol"] == "SHARED"]
        assert len(shared) == 2 * RUNS_PER_WRITER
        assert reader.latest_model("SHARED") == max(shared, key=lambda r: (r["finished_at"], r["run_id"]))["model_path"]
    # the reader did look while the writers were half way
    assert {len(s["models"]) for s in snapshots} - {0, total}, [len(s["models"]) for s in snapshots]

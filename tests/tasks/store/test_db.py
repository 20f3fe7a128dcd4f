"""Results store, SQL side: table round trips, upserts, closing, schema changes.

Tests taking ``store`` or ``store_url`` run on SQLite and on PostgreSQL (conftest.py)."""

import contextlib
import datetime as dt
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from tasks.evaluate import EVALUATION_KEYS, QUANTILE_EVALUATION_KEYS, evaluate_forecasts
from tasks.store import SCHEMA, ResultsStore, to_json

UTC = dt.timezone.utc


# ---------------------------------------------------------------- SQL tables

def test_default_url_is_sqlite_in_results_dir_with_wal(tmp_path):
    with ResultsStore(tmp_path / "new" / "results") as s:
        assert (tmp_path / "new" / "results" / "store.db").is_file()
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60000
        assert set(sa.inspect(s.engine).get_table_names()) == {
            "runs", "symbol_runs", "epoch_metrics", "evaluations", "predictions", "model_files", "backtests", "models",
            "scores", "events"}


def test_any_url_is_used_and_shown_without_password(tmp_path):
    with ResultsStore(tmp_path / "results", url=f"sqlite:///{tmp_path / 'elsewhere.db'}") as s:
        s.start_run("r1", {}, [])
        assert (tmp_path / "elsewhere.db").is_file() and not (tmp_path / "results").exists()
        assert s.url == f"sqlite:///{tmp_path / 'elsewhere.db'}" and "elsewhere.db" in repr(s)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_leaving_the_with_block_closes_every_connection(tmp_path):
    with ResultsStore(tmp_path) as s:
        s.start_run("r1", {}, ["AAPL"])
        assert [r["run_id"] for r in s.runs()] == ["r1"]
        # an open connection to a WAL database keeps its -wal and -shm files
        assert _files(tmp_path) == ["store.db", "store.db-shm", "store.db-wal"]
        assert s.engine.pool.checkedin() == 1
    # the last connection to close checkpoints the WAL into store.db and deletes both
    assert _files(tmp_path) == ["store.db"]
    assert s.closed and s.engine.pool.checkedin() == 0
    with contextlib.closing(sqlite3.connect(tmp_path / "store.db")) as db:
        assert db.execute("SELECT run_id, status FROM runs").fetchall() == [("r1", "running")]


def test_a_closed_store_refuses_use_and_closes_again_quietly(tmp_path):
    with pytest.raises(KeyError, match="boom"):            # the block's error propagates
        with ResultsStore(tmp_path) as s:
            s.start_run("r1", {}, [])
            raise KeyError("boom")
    assert s.closed and _files(tmp_path) == ["store.db"]   # closed on the way out
    s.close()
    s.close()
    with pytest.raises(RuntimeError, match=r"ResultsStore\(.*\) is closed; open a new one"):
        s.runs()
    with pytest.raises(RuntimeError, match="is closed"):
        s.finish_run("r1", "completed")
    assert _files(tmp_path) == ["store.db"]                # no connection was reopened
    with ResultsStore(tmp_path) as again:
        assert [(r["run_id"], r["status"]) for r in again.runs()] == [("r1", "running")]


def test_run_ids_sort_by_time_and_are_unique():
    ids = [ResultsStore.new_run_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert sorted(ids, key=lambda i: i.split("-")[0]) == ids   # timestamp part is monotone
    stamp = dt.datetime.strptime(ids[0].split("-")[0], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    assert abs((dt.datetime.now(UTC) - stamp).total_seconds()) < 60


def test_runs_round_trip(store):
    rid = store.new_run_id()
    config = {"training": {"epochs": 3, "lr": 1e-3}, "data": {"start": dt.date(2020, 1, 2)}}
    before = dt.datetime.now(UTC)
    store.start_run(rid, config, ["AAPL", "BRK-B"])
    (run,) = store.runs()
    assert run["status"] == "running" and run["finished_at"] is None
    assert run["config"] == {"training": {"epochs": 3, "lr": 1e-3}, "data": {"start": "2020-01-02"}}
    assert run["symbols"] == ["AAPL", "BRK-B"]
    assert before <= run["started_at"] <= dt.datetime.now(UTC)
    store.finish_run(rid, "partial")
    (run,) = store.runs(rid)
    assert run["status"] == "partial" and run["finished_at"] >= run["started_at"]
    with pytest.raises(ValueError, match="already exists"):
        store.start_run(rid, {}, [])
    with pytest.raises(ValueError, match="not in the store"):
        store.finish_run("nope", "completed")
    with pytest.raises(ValueError, match="must be one of"):
        store.finish_run(rid, "done")


def test_symbol_runs_round_trip_and_upsert(store, tmp_path):
    rid = store.new_run_id()
    store.start_run(rid, {}, ["AAPL", "MSFT"])
    store.record_symbol(rid, "AAPL", "failed", error="first try: boom", seconds=1.0)
    store.record_symbol(
        rid, "AAPL", "completed", rows=np.int64(2500), windows=870, parameters=123_456,
        epochs=12, best_val_loss=torch.tensor(0.25), no_skill=True, seconds=np.float32(42.5),
        model_path=f"store:AAPL/{rid}", data_fingerprint="abc123",
        finished_at=dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    store.record_symbol(rid, "MSFT", "failed", error="MSFT: 212 rows after validation, need >= 400")
    aapl, msft = store.symbol_runs(rid)
    assert aapl == {
        "run_id": rid, "symbol": "AAPL", "status": "completed", "error": None,
        "rows": 2500, "windows": 870, "parameters": 123_456, "epochs": 12,
        "best_val_loss": 0.25, "no_skill": True, "seconds": 42.5, "model_path": f"store:AAPL/{rid}",
        "data_fingerprint": "abc123",
        "started_at": dt.datetime(2025, 1, 2, 3, 3, 22, 500000, tzinfo=UTC),
        "finished_at": dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    assert msft["status"] == "failed" and msft["error"].startswith("MSFT: 212 rows")
    assert len(store.symbol_runs()) == 2            # the upsert replaced, did not add
    with store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT model_path FROM symbol_runs WHERE symbol='AAPL'").scalar()
    assert stored == f"store:AAPL/{rid}"
    # on PostgreSQL the session's zone is New York (conftest): the store still reads UTC
    assert aapl["finished_at"].tzinfo is UTC and aapl["started_at"].tzinfo is UTC


def test_record_symbol_refuses_bad_input(store):
    rid = store.new_run_id()
    store.start_run(rid, {}, ["AAPL"])
    with pytest.raises(ValueError, match="needs its reason"):
        store.record_symbol(rid, "AAPL", "failed")
    with pytest.raises(ValueError, match="must be one of"):
        store.record_symbol(rid, "AAPL", "running")
    with pytest.raises(ValueError, match="call start_run first"):
        store.record_symbol("unknown-run", "AAPL", "completed")
    assert store.symbol_runs() == []
    # a symbol that is not even a valid name is still recorded as failed, with its reason
    store.record_symbol(rid, "../etc", "failed", error="ValueError: invalid symbol '../etc'")
    assert [(r["symbol"], r["status"]) for r in store.symbol_runs()] == [("../etc", "failed")]
    assert store.latest_model("../etc") is None


def test_epoch_metrics_round_trip_and_replace(store):
    rid = store.new_run_id()
    store.start_run(rid, {}, ["AAPL"])
    rows = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 2.0 / (e + 1), "train_mae": 0.1,
             "val_mae": 0.2, "lr": 1e-3, "seconds": 1.5} for e in range(3)]
    store.record_epochs(rid, "AAPL", rows)
    store.record_epochs(rid, "AAPL", [{"epoch": 2, "val_loss": 0.125}])   # resumed epoch 2
    got = store.epoch_metrics(rid, "AAPL")
    assert [r["epoch"] for r in got] == [0, 1, 2]
    assert got[0] == {"run_id": rid, "symbol": "AAPL", **rows[0]}
    assert got[2]["val_loss"] == 0.125 and got[2]["train_loss"] is None
    assert store.epoch_metrics(rid, "MSFT") == []
    with pytest.raises(ValueError, match=r"unknown keys \['val_los'\]"):
        store.record_epochs(rid, "AAPL", [{"epoch": 3, "val_los": 1.0}])
    with pytest.raises(ValueError, match=r"missing \['epoch'\]"):
        store.record_epochs(rid, "AAPL", [{"val_loss": 1.0}])
    assert len(store.epoch_metrics(rid, "AAPL")) == 3


def test_evaluations_round_trip(store):
    rid = store.new_run_id()
    store.start_run(rid, {}, ["AAPL"])
    rng = np.random.default_rng(1)
    rows = evaluate_forecasts(rng.normal(size=(20, 4)), rng.normal(size=(20, 4)),
                              [1, 5, 10, 30], rng.normal(size=(50, 4)))
    store.record_evaluation(rid, "AAPL", rows)
    store.record_evaluation(rid, "AAPL", rows[:1])                       # idempotent
    got = store.evaluations(rid, "AAPL")
    # columns the rows do not fill (the quantile metrics) read None
    blank = {k: None for k in QUANTILE_EVALUATION_KEYS}
    assert got == [{"run_id": rid, "symbol": "AAPL", **blank, **r} for r in rows]


def test_backtests_round_trip_and_a_fold_replaced(store):
    rng = np.random.default_rng(2)
    days = {"train_start": dt.date(2001, 1, 2), "train_end": dt.date(2004, 5, 6),
            "test_start": dt.date(2005, 1, 3), "test_end": dt.date(2006, 1, 3)}

    def fold(k: int) -> list[dict]:
        ev = evaluate_forecasts(rng.normal(size=(9, 2)), rng.normal(size=(9, 2)), [1, 5], rng.normal(size=(30, 2)))
        return [days | {"test_start": days["test_start"] + dt.timedelta(days=k)} | r for r in ev]

    rows = {k: fold(k) for k in (1, 0)}
    for k, r in rows.items():
        store.record_backtest("bt1", "AAPL", k, r)
    store.record_backtest("bt2", "AAPL", 0, fold(0))          # another backtest stays apart
    store.record_backtest("bt1", "AAPL", 1, rows[1][:1])      # a fold recorded again is replaced whole
    got = store.backtests("bt1")
    assert [(r["fold"], r["horizon"]) for r in got] == [(0, 1), (0, 5), (1, 1)]
    blank = {k: None for k in QUANTILE_EVALUATION_KEYS}  # metrics the rows do not fill
    assert got[0] == {"backtest_id": "bt1", "symbol": "AAPL", "fold": 0, **blank, **rows[0][0]}
    assert got[2]["test_start"] == dt.date(2005, 1, 4)
    with pytest.raises(ValueError, match=r"missing \['test_end'\]"):
        store.record_backtest("bt1", "AAPL", 2, [{k: v for k, v in rows[0][0].items() if k != "test_end"}])
    with pytest.raises(ValueError, match="bad run id"):
        store.record_backtest("../x", "AAPL", 0, rows[0])


def test_predictions_round_trip_and_replace(store):
    rows = [{"model_run_id": "r1", "symbol": "AAPL", "as_of": dt.date(2025, 1, 3), "horizon": h,
             "target_date": dt.date(2025, 1, 3) + dt.timedelta(days=h), "predicted_return": 0.01 * h,
             "predicted_price": 100 * np.exp(0.01 * h), "last_close": 100.0} for h in (1, 5)]
    store.record_predictions(rows)
    store.record_predictions([{**rows[0], "as_of": "2025-01-03", "predicted_return": -0.5,
                               "symbol": "AAPL"}, {**rows[0], "symbol": "MSFT"}])
    aapl = store.predictions("AAPL")
    assert [(r["horizon"], r["predicted_return"]) for r in aapl] == [(1, -0.5), (5, 0.05)]
    assert aapl[1]["predicted_price"] == pytest.approx(100 * np.exp(0.05))
    assert aapl[1]["target_date"] == dt.date(2025, 1, 8) and aapl[1]["as_of"] == dt.date(2025, 1, 3)
    assert aapl[0]["created_at"].tzinfo is UTC
    assert len(store.predictions()) == 3


def test_latest_model_picks_latest_completed(store):
    assert store.latest_model("AAPL") is None
    t0 = dt.datetime(2025, 1, 1, tzinfo=UTC)
    for i, (status, has_model) in enumerate([("completed", True), ("completed", True),
                                             ("failed", True), ("completed", False)]):
        rid = f"run{i}"
        store.start_run(rid, {}, ["AAPL"])
        store.record_symbol(rid, "AAPL", status, error="x" if status == "failed" else None,
                            model_path=f"store:AAPL/{rid}" if has_model else None,
                            finished_at=t0 + dt.timedelta(days=i))
    store.record_symbol("run0", "MSFT", "completed", model_path="store:MSFT/run0")
    # run3 has no model, run2 failed: run1 is the latest usable
    assert store.latest_model("AAPL") == "store:AAPL/run1"
    assert store.latest_model("MSFT") == "store:MSFT/run0"
    assert store.latest_model("GOOG") is None


def test_latest_completed_one_query_latest_completed_row_per_symbol(store):
    t0 = dt.datetime(2025, 1, 1, tzinfo=UTC)
    outcomes = [  # (run, symbol, status, day finished)
        ("r1", "AAPL", "completed", 1), ("r2", "AAPL", "completed", 3), ("r3", "AAPL", "failed", 5),
        ("r1", "MSFT", "completed", 2), ("r2", "MSFT", "failed", 4),
        ("r1", "GOOG", "completed", 2), ("r2", "GOOG", "completed", 2),   # a tie: the larger run id
        ("r3", "NVDA", "failed", 5),
        ("r3", "IBM", "completed", 9),                                    # not asked for
    ]
    for rid in ("r1", "r2", "r3"):
        store.start_run(rid, {}, [])
    for rid, sym, status, day in outcomes:
        store.record_symbol(rid, sym, status, error="boom" if status == "failed" else None,
                            model_path=f"store:{sym}/{rid}",
                            finished_at=t0 + dt.timedelta(days=day))
    selects = []
    sa.event.listen(store.engine, "before_cursor_execute",
                    lambda conn, cursor, sql, *a: selects.append(sql) if sql.lstrip().startswith("SELECT") else None)
    got = store.latest_completed(["AAPL", "MSFT", "GOOG", "NVDA", "TSLA"])
    assert len(selects) == 1
    assert {s: r["run_id"] for s, r in got.items()} == {"AAPL": "r2", "MSFT": "r1", "GOOG": "r2"}
    # the rows are symbol_runs' rows
    every = {(r["run_id"], r["symbol"]): r for r in store.symbol_runs()}
    assert got == {s: every[(r["run_id"], s)] for s, r in got.items()}
    assert got["AAPL"]["model_path"] == "store:AAPL/r2"
    assert store.latest_completed([]) == {}


def test_the_tables_on_a_real_postgresql(postgres_url, tmp_path):
    """The column types PostgreSQL made: times keep their zone, metrics are
    double precision, model files bytea; keys and foreign keys as declared."""
    with ResultsStore(tmp_path, postgres_url) as store:
        with store.engine.connect() as conn:
            types = {(t, c): kind for t, c, kind in conn.exec_driver_sql(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema()")}
        tables = sa.inspect(store.engine)
        keys = {t: tables.get_pk_constraint(t)["constrained_columns"] for t in SCHEMA.tables}
        references = {t: {(tuple(f["constrained_columns"]), f["referred_table"]) for f in tables.get_foreign_keys(t)}
                      for t in SCHEMA.tables}
    assert {k: v for k, v in types.items() if v.startswith("timestamp")} == {
        (t, c): "timestamp with time zone" for t, c in [
            ("runs", "started_at"), ("runs", "finished_at"), ("symbol_runs", "started_at"),
            ("symbol_runs", "finished_at"), ("predictions", "created_at"), ("models", "created_at"),
            ("models", "promoted_at"), ("scores", "scored_at"), ("events", "created_at")]}
    assert {types[("epoch_metrics", c)] for c in ("train_loss", "val_loss", "lr")} == {"double precision"}
    assert {types[("evaluations", k)] for k in EVALUATION_KEYS[2:]} == {"double precision"}
    assert types[("model_files", "content")] == "bytea" and types[("model_files", "size")] == "integer"
    assert keys == {"runs": ["run_id"], "symbol_runs": ["run_id", "symbol"],
                    "epoch_metrics": ["run_id", "symbol", "epoch"], "evaluations": ["run_id", "symbol", "horizon"],
                    "predictions": ["model_run_id", "symbol", "as_of", "horizon"],
                    "model_files": ["run_id", "symbol", "name"],
                    "backtests": ["backtest_id", "symbol", "fold", "horizon"], "models": ["symbol", "run_id"],
                    "scores": ["model_run_id", "symbol", "as_of", "horizon"], "events": ["run_id", "symbol", "kind"]}
    for t in ("symbol_runs", "epoch_metrics", "evaluations", "model_files", "models"):
        assert references[t] == {(("run_id",), "runs")}, t


def test_to_json_takes_dates_and_numpy_and_refuses_the_rest():
    value = {"b": [dt.date(2020, 1, 2), dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)],
             "a": {"n": np.int64(3), "x": np.float32(0.5), "v": np.arange(3.0), "ok": np.bool_(True)}}
    text = to_json(value)
    assert json.loads(text) == {"a": {"n": 3, "x": 0.5, "v": [0.0, 1.0, 2.0], "ok": True},
                                "b": ["2020-01-02", "2020-01-02T03:04:05+00:00"]}
    assert text.index('"a"') < text.index('"b"')                 # keys sorted
    for bad in (Path("x"), {1, 2}, torch.tensor(1.0)):
        with pytest.raises(TypeError, match=f"{type(bad).__name__} is not JSON"):
            to_json({"k": bad})


def test_a_store_of_an_earlier_version_gains_the_new_columns_and_keeps_its_rows(tmp_path, store_url):
    """Tables made before a column existed get it added (nullable) when the store opens."""
    old = sa.create_engine(store_url or f"sqlite:///{tmp_path / 'store.db'}")
    with old.begin() as db:  # the evaluations table as an old version made it
        db.exec_driver_sql("create table evaluations (run_id varchar(64) not null, symbol varchar not null, "
                           "horizon integer not null, n integer not null, mae float, "
                           "primary key (run_id, symbol, horizon))")
        db.exec_driver_sql("insert into evaluations values ('old', 'AAPL', 1, 10, 0.5)")
    old.dispose()
    with ResultsStore(tmp_path, store_url) as store:
        columns = {c["name"] for c in sa.inspect(store.engine).get_columns("evaluations")}
        assert columns == {c.name for c in SCHEMA.tables["evaluations"].columns}
        [old] = store.evaluations("old", "AAPL")
        assert (old["n"], old["mae"], old["rmse"]) == (10, 0.5, None)
    with ResultsStore(tmp_path, store_url) as store:  # opening again changes nothing
        assert len(store.evaluations("old", "AAPL")) == 1

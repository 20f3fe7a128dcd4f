"""The SQL side of the results store: ``ResultsStore`` and its queries.

The database (SQLAlchemy Core; SQLite ``RESULTS/store.db`` by default, or
PostgreSQL for several machines: ``tasks.store.engine``) has these tables,
defined in ``tasks.store.tables``:

    runs           one row per train_universe run: config, symbols, status
    symbol_runs    one row per (run, symbol): completed | failed, the reason,
                   sizes, best val loss, seconds, the model ("store:SYMBOL/RUN_ID"),
                   data fingerprint
    epoch_metrics  one row per (run, symbol, epoch)
    evaluations    one row per (run, symbol, horizon): tasks.evaluate's keys
    predictions    one row per (model run, symbol, as-of date, horizon)
    model_files    one row per file of a trained model (``tasks.store.model_files``)
    backtests      one row per (backtest, symbol, fold, horizon): dates, evaluations' metrics

Every write method runs in one transaction and replaces the rows it names
(re-recording an epoch, a horizon or a symbol outcome overwrites it: an
upsert), so a retried task never duplicates rows. ``transaction()`` puts
several write calls into one transaction: a model, its epochs, evaluations
and symbol_runs row commit together or not at all. Symbols in rows are stored
as given (a symbol that failed validation is still recorded, with its
reason); only ``save_model`` validates it.

Run ids and ``to_json`` live here too: the store mints the ids and keeps
configs as JSON; ``model_files`` uses both for a model's key and metadata.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import secrets
import threading
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator

import numpy as np
import torch
from sqlalchemy import Connection, Table, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tasks.store.engine import open_engine
from tasks.store.tables import BACKTESTS, EPOCH_METRICS, EVALUATIONS, PREDICTIONS, RUNS, SYMBOL_RUNS, create_schema

RUN_STATUSES = ("running", "completed", "partial", "failed")
SYMBOL_STATUSES = ("completed", "failed")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def check_run_id(run_id: str) -> str:
    """``run_id`` itself if it is a valid run id: short, plain characters, so
    that it is safe in a key, a file name and a command line."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"bad run id {run_id!r}: use up to 64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit (ResultsStore.new_run_id() makes one)"
        )
    return run_id


# ---------------------------------------------------------------- value helpers

def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    # naive datetimes are taken as local time (Python's convention)
    return None if t is None else t.astimezone(dt.timezone.utc)


def _plain(v: Any) -> Any:
    """numpy / 0-d torch scalars -> Python numbers (sqlite3 cannot bind np.int64)."""
    if isinstance(v, (np.generic, torch.Tensor)):
        if getattr(v, "ndim", 0) != 0:
            raise ValueError(f"expected a scalar, got an array of shape {tuple(v.shape)}")
        return v.item()
    return v


def _as_date(v: Any, key: str) -> dt.date:
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    if isinstance(v, str):
        return dt.date.fromisoformat(v)
    raise ValueError(f"{key} must be a date or an ISO date string, got {v!r}")


def _json_default(o: Any) -> Any:
    """Dates (and datetimes) as ISO strings, numpy values as numbers or lists:
    what the callers' configs and metadata hold besides JSON itself. Anything
    else raises."""
    if isinstance(o, dt.date):
        return o.isoformat()
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()
    raise TypeError(
        f"{type(o).__name__} is not JSON ({o!r:.80}); convert it to str, number, list or dict"
    )


def to_json(obj: Any) -> str:
    """JSON text of a config or metadata dict: dates as ISO strings, keys sorted."""
    return json.dumps(obj, default=_json_default, sort_keys=True, indent=1)


def _rows_for(table: Table, rows: list[dict], fixed: dict, required: tuple[str, ...]) -> list[dict]:
    """Rows checked against the table's columns, with ``fixed`` values added."""
    allowed = set(table.c.keys()) - set(fixed)
    out = []
    for row in rows:
        unknown = set(row) - allowed
        missing = [k for k in required if row.get(k) is None]
        if unknown or missing:
            raise ValueError(
                f"{table.name} row {row!r}: unknown keys {sorted(unknown)}, missing {missing}; "
                f"allowed keys are {sorted(allowed)}"
            )
        out.append({**{k: _plain(v) for k, v in row.items()}, **fixed})
    return out


# ---------------------------------------------------------------- the store

class ResultsStore:
    """The SQL side of the results store. Safe to share between threads.

    Open it in a ``with`` block, or call ``close()`` when done: that closes
    its pooled connections. (On SQLite, once no connection from any store is
    left, SQLite folds the WAL back into ``store.db`` and deletes the ``-wal``
    and ``-shm`` files.)
    """

    def __init__(self, results_dir: str | Path, url: str | None = None):
        self.results_dir = Path(results_dir).resolve()
        if url is None:
            self.results_dir.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{self.results_dir / 'store.db'}"
        self.engine = open_engine(url)  # StoreConnectionError naming the URL if it cannot connect
        self.closed = False
        self.url = self.engine.url.render_as_string(hide_password=True)  # for messages
        self._transaction = threading.local()  # the open transaction() of each thread
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                # Processes opening a new store at once would all find no
                # tables and all CREATE them; all but one then fail on
                # PostgreSQL's catalog (duplicate key ... pg_type_typname_nsp_index).
                # This lock, held until commit, makes the others wait, then find them.
                conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
            create_schema(conn)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.results_dir)!r}, url={self.url!r})"

    def close(self) -> None:
        """Close the pooled connections; closing again does nothing."""
        self.closed = True
        self.engine.dispose()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()  # an exception from the block propagates

    def _connect(self) -> Connection:
        # A disposed engine would quietly open a new pool, and that pool's
        # connections would never be closed: refuse instead.
        if self.closed:
            raise RuntimeError(f"{self!r} is closed; open a new one: with ResultsStore(...) as store")
        return self.engine.connect()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        joined = getattr(self._transaction, "conn", None)
        if joined is not None:  # inside transaction(): its connection, its commit
            yield joined
            return
        with self._connect() as conn:
            conn.execution_options(mambaflow_write=True)  # -> BEGIN IMMEDIATE on SQLite
            with conn.begin():
                self._transaction.conn = conn
                try:
                    yield conn
                finally:
                    self._transaction.conn = None

    def transaction(self) -> contextlib.AbstractContextManager[Connection]:
        """One write transaction around several calls: every write method of
        this store called inside the block, in this thread, joins it, so their
        rows commit together at the end of the block, or not at all if it
        raises. Yields the connection (for ``tasks.store.model_files``)."""
        return self._write()

    def read(self, query) -> list[dict]:
        """The rows of a SELECT as dicts, timestamps in UTC."""
        with self._connect() as conn:
            return [_from_db(dict(r._mapping)) for r in conn.execute(query)]

    _read = read  # the name the queries below (and older callers) use

    @staticmethod
    def new_run_id() -> str:
        """``20250102T030405123456Z-1a2b3c``: sorts by UTC start time, unique by suffix."""
        return f"{_now():%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"

    # ------------------------------------------------------------ runs

    def start_run(self, run_id: str, config: dict, symbols: list[str]) -> None:
        row = {
            "run_id": check_run_id(run_id), "started_at": _now(), "status": "running",
            "config": to_json(config), "symbols": json.dumps(list(symbols)),
        }
        with self._write() as conn:
            if conn.execute(select(RUNS.c.run_id).where(RUNS.c.run_id == run_id)).first():
                raise ValueError(f"run {run_id} already exists; start a new one with new_run_id()")
            conn.execute(RUNS.insert(), row)

    def finish_run(self, run_id: str, status: str) -> None:
        if status not in RUN_STATUSES[1:]:
            raise ValueError(f"run status {status!r} must be one of {RUN_STATUSES[1:]}")
        with self._write() as conn:
            done = conn.execute(
                update(RUNS).where(RUNS.c.run_id == run_id).values(status=status, finished_at=_now())
            )
            if done.rowcount != 1:
                raise ValueError(f"run {run_id!r} is not in the store; call start_run first")

    def runs(self, run_id: str | None = None) -> list[dict]:
        """Runs (config and symbols decoded from JSON), oldest first."""
        q = select(RUNS).order_by(RUNS.c.started_at, RUNS.c.run_id)
        rows = self._read(q if run_id is None else q.where(RUNS.c.run_id == run_id))
        return [{**r, "config": json.loads(r["config"]), "symbols": json.loads(r["symbols"])} for r in rows]

    # ------------------------------------------------------------ per symbol

    def _require_run(self, conn: Connection, run_id: str, symbol: str) -> None:
        if conn.execute(select(RUNS.c.run_id).where(RUNS.c.run_id == run_id)).first() is None:
            raise ValueError(f"{symbol}: run {run_id!r} is not in the store; call start_run first")

    def record_symbol(
        self, run_id: str, symbol: str, status: str, *,
        error: str | None = None, rows: int | None = None, windows: int | None = None,
        parameters: int | None = None, epochs: int | None = None,
        best_val_loss: float | None = None, no_skill: bool | None = None, seconds: float | None = None,
        model_path: str | None = None, data_fingerprint: str | None = None,
        started_at: dt.datetime | None = None, finished_at: dt.datetime | None = None,
    ) -> None:
        """Insert or replace the outcome of one symbol in one run.

        A failed symbol must say why (``error``). ``finished_at`` defaults to
        now and ``started_at`` to ``finished_at - seconds``. ``model_path``
        is the model's key in the store, ``store:SYMBOL/RUN_ID``
        (``tasks.store.model_files.save_model`` returns it).
        """
        if status not in SYMBOL_STATUSES:
            raise ValueError(f"{symbol}: status {status!r} must be one of {SYMBOL_STATUSES}")
        if status == "failed" and not error:
            raise ValueError(f"{symbol}: a failed symbol needs its reason in error=")
        finished_at = _utc(finished_at) or _now()
        if started_at is None:
            started_at = finished_at - dt.timedelta(seconds=float(seconds or 0))
        row = {k: _plain(v) for k, v in dict(
            run_id=run_id, symbol=symbol, status=status, error=error, rows=rows,
            windows=windows, parameters=parameters, epochs=epochs,
            best_val_loss=best_val_loss, no_skill=no_skill, seconds=seconds,
            model_path=None if model_path is None else str(model_path),
            data_fingerprint=data_fingerprint, started_at=_utc(started_at), finished_at=finished_at,
        ).items()}
        with self._write() as conn:
            self._require_run(conn, run_id, symbol)
            _upsert(conn, SYMBOL_RUNS, [row])

    def record_epochs(self, run_id: str, symbol: str, rows: list[dict]) -> None:
        """Rows with ``epoch`` and any of train_loss, val_loss, train_mae, val_mae, lr, seconds."""
        self._replace(EPOCH_METRICS, run_id, symbol, rows, "epoch")

    def record_evaluation(self, run_id: str, symbol: str, rows: list[dict]) -> None:
        """Rows as returned by ``tasks.evaluate.evaluate_forecasts``."""
        self._replace(EVALUATIONS, run_id, symbol, rows, "horizon", "n")

    def _replace(self, table: Table, run_id: str, symbol: str, rows: list[dict], key: str, *required: str) -> None:
        rows = _rows_for(table, rows, {"run_id": run_id, "symbol": symbol}, (key, *required))
        with self._write() as conn:
            self._require_run(conn, run_id, symbol)
            _upsert(conn, table, rows)

    def record_predictions(self, rows: list[dict]) -> None:
        """Rows with model_run_id, symbol, as_of, horizon, target_date,
        predicted_return, predicted_price, last_close (created_at: now)."""
        key = ("model_run_id", "symbol", "as_of", "horizon")
        rows = _rows_for(PREDICTIONS, rows, {}, (*key, "target_date", "predicted_return",
                                                  "predicted_price", "last_close"))
        for r in rows:
            r["as_of"] = _as_date(r["as_of"], "as_of")
            r["target_date"] = _as_date(r["target_date"], "target_date")
            r["created_at"] = _utc(r.get("created_at")) or _now()
        with self._write() as conn:
            _upsert(conn, PREDICTIONS, rows)

    def record_backtest(self, backtest_id: str, symbol: str, fold: int, rows: list[dict]) -> None:
        """One fold's rows (``tasks.backtest.fold_rows``); recording a fold again replaces them."""
        t = BACKTESTS
        rows = _rows_for(t, rows, {"backtest_id": check_run_id(backtest_id), "symbol": symbol, "fold": fold},
                         ("horizon", "n", "train_start", "train_end", "test_start", "test_end"))
        with self._write() as conn:  # one writer per fold: the delete drops horizons a retry no longer has
            conn.execute(delete(t).where(t.c.backtest_id == backtest_id, t.c.symbol == symbol, t.c.fold == fold))
            _upsert(conn, t, rows)

    # ------------------------------------------------------------ reads

    def backtests(self, backtest_id: str) -> list[dict]:
        t = BACKTESTS
        return self._read(select(t).where(t.c.backtest_id == backtest_id).order_by(t.c.symbol, t.c.fold, t.c.horizon))

    def symbol_runs(self, run_id: str | None = None, symbol: str | None = None) -> list[dict]:
        t = SYMBOL_RUNS
        q = select(t).order_by(t.c.run_id, t.c.symbol)
        q = q if run_id is None else q.where(t.c.run_id == run_id)
        return self._read(q if symbol is None else q.where(t.c.symbol == symbol))

    def epoch_metrics(self, run_id: str, symbol: str) -> list[dict]:
        t = EPOCH_METRICS
        return self._read(select(t).where(t.c.run_id == run_id, t.c.symbol == symbol).order_by(t.c.epoch))

    def evaluations(self, run_id: str, symbol: str) -> list[dict]:
        t = EVALUATIONS
        return self._read(select(t).where(t.c.run_id == run_id, t.c.symbol == symbol).order_by(t.c.horizon))

    def predictions(self, symbol: str | None = None) -> list[dict]:
        t = PREDICTIONS
        q = select(t).order_by(t.c.as_of, t.c.symbol, t.c.horizon, t.c.model_run_id)
        return self._read(q if symbol is None else q.where(t.c.symbol == symbol))

    def latest_completed(self, symbols: list[str]) -> dict[str, dict]:
        """For each of ``symbols`` that has one, its most recently finished
        completed symbol_run with a model (ties: the larger run id), as
        ``symbol_runs`` returns rows. One query."""
        t = SYMBOL_RUNS
        rank = func.row_number().over(partition_by=t.c.symbol,
                                      order_by=(t.c.finished_at.desc(), t.c.run_id.desc()))
        ranked = (select(t, rank.label("rank"))
                  .where(t.c.symbol.in_(list(symbols)), t.c.status == "completed", t.c.model_path.is_not(None))
                  .subquery())
        q = select(*(ranked.c[c.name] for c in t.c)).where(ranked.c["rank"] == 1).order_by(ranked.c.symbol)
        return {r["symbol"]: r for r in self._read(q)}

    def latest_model(self, symbol: str) -> str | None:
        """The model (``store:SYMBOL/RUN_ID``) of the symbol's most recently
        finished completed run with a model, if any."""
        row = self.latest_completed([symbol]).get(symbol)
        return row["model_path"] if row else None


def _from_db(row: dict) -> dict:
    # SQLite drops the zone of the stored UTC timestamps (naive: put UTC back);
    # PostgreSQL returns them in the session's TimeZone (convert to UTC).
    return {k: (v.astimezone(dt.timezone.utc) if v.tzinfo else v.replace(tzinfo=dt.timezone.utc))
            if isinstance(v, dt.datetime) else v for k, v in row.items()}


_SCHEMA_LOCK = 0x6D616D6261666C6F  # "mambaflo": the advisory lock key of schema changes


def _upsert(conn: Connection, table: Table, rows: list[dict]) -> None:
    """Insert ``rows``, each replacing the row with its primary key, whole (a
    column it leaves out becomes NULL): one INSERT ... ON CONFLICT DO UPDATE.

    Not a delete then an insert, which is safe only while writers take turns
    (SQLite's BEGIN IMMEDIATE): on PostgreSQL two transactions that delete
    the same missing key both go on to insert it, and the second fails with a
    unique violation. Rows repeating a key in one call: the last one wins.
    """
    key = [c.name for c in table.primary_key]
    rows = list({tuple(r[k] for k in key): {c.name: r.get(c.name) for c in table.columns} for r in rows}.values())
    if not rows:
        return
    insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[conn.dialect.name](table)
    replace = {c.name: insert.excluded[c.name] for c in table.columns if c.name not in key}
    conn.execute(insert.on_conflict_do_update(index_elements=key, set_=replace), rows)

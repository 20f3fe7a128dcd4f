"""Results store: what every run learned, in SQL, and the model files on disk.

The database (SQLAlchemy Core; SQLite ``RESULTS/store.db`` by default, any
URL such as PostgreSQL for several machines) has five tables:

    runs           one row per train_universe run: config, symbols, status
    symbol_runs    one row per (run, symbol): completed | failed, the reason,
                   sizes, best val loss, seconds, model path, data fingerprint
    epoch_metrics  one row per (run, symbol, epoch)
    evaluations    one row per (run, symbol, horizon): tasks.evaluate's keys
    predictions    one row per (model run, symbol, as-of date, horizon)

Every write method runs in one transaction and replaces the rows it names
(re-recording an epoch, a horizon or a symbol outcome overwrites it), so a
retried task never duplicates rows. Symbols in rows are stored as given (a
symbol that failed validation is still recorded, with its reason); only
``save_model``, where a symbol becomes a path, validates it. On SQLite the store turns on WAL and a
busy timeout and starts write transactions with ``BEGIN IMMEDIATE``: writers
queue for the lock instead of failing with "database is locked" when the flow
trains several symbols in threads. (WAL needs a local disk, not NFS; use
PostgreSQL to share a store between machines.)

A model lives at ``RESULTS/models/SYMBOL/RUN_ID/`` as ``weights.safetensors``
and ``metadata.json``. ``save_model`` writes both into a hidden sibling
directory, fsyncs, and renames it into place, so a crash leaves either the
whole model or nothing; ``load_model`` reads them with safetensors and json
only, never pickle.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import re
import secrets
import shutil
import sys
from contextlib import contextmanager
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from sqlalchemy import (
    Column, Connection, Date, DateTime, Float, ForeignKey, Integer, MetaData,
    String, Table, Text, create_engine, delete, event, func, select, update,
)

from tasks.evaluate import EVALUATION_KEYS
from tasks.bars import validate_symbol

WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "metadata.json"
RUN_STATUSES = ("running", "completed", "partial", "failed")
SYMBOL_STATUSES = ("completed", "failed")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


def _check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"bad run id {run_id!r}: use up to 64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit (ResultsStore.new_run_id() makes one)"
        )
    return run_id


# ---------------------------------------------------------------- tables

_meta = MetaData()
_ts = DateTime(timezone=True)  # written as UTC; SQLite keeps it naive, read back as UTC

RUNS = Table(
    "runs", _meta,
    Column("run_id", String(64), primary_key=True),
    Column("started_at", _ts, nullable=False),
    Column("finished_at", _ts),
    Column("status", String(16), nullable=False),
    Column("config", Text, nullable=False),       # JSON
    Column("symbols", Text, nullable=False),      # JSON list
)
SYMBOL_RUNS = Table(
    "symbol_runs", _meta,
    Column("run_id", String(64), ForeignKey("runs.run_id"), primary_key=True),
    Column("symbol", String, primary_key=True),
    Column("status", String(16), nullable=False),
    Column("error", Text),
    Column("rows", Integer),
    Column("windows", Integer),
    Column("parameters", Integer),
    Column("epochs", Integer),
    Column("best_val_loss", Float),
    Column("seconds", Float),
    Column("model_path", Text),
    Column("data_fingerprint", String),
    Column("started_at", _ts),
    Column("finished_at", _ts),
)
EPOCH_METRICS = Table(
    "epoch_metrics", _meta,
    Column("run_id", String(64), ForeignKey("runs.run_id"), primary_key=True),
    Column("symbol", String, primary_key=True),
    Column("epoch", Integer, primary_key=True),
    *(Column(c, Float) for c in ("train_loss", "val_loss", "train_mae", "val_mae", "lr", "seconds")),
)
EVALUATIONS = Table(
    "evaluations", _meta,
    Column("run_id", String(64), ForeignKey("runs.run_id"), primary_key=True),
    Column("symbol", String, primary_key=True),
    Column("horizon", Integer, primary_key=True),
    Column("n", Integer, nullable=False),
    *(Column(k, Float) for k in EVALUATION_KEYS[2:]),
)
PREDICTIONS = Table(
    "predictions", _meta,
    Column("model_run_id", String(64), primary_key=True),  # the run that trained the model
    Column("symbol", String, primary_key=True),
    Column("as_of", Date, primary_key=True),
    Column("horizon", Integer, primary_key=True),
    Column("target_date", Date, nullable=False),
    Column("predicted_return", Float, nullable=False),
    Column("predicted_price", Float, nullable=False),
    Column("last_close", Float, nullable=False),
    Column("created_at", _ts, nullable=False),
)


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
    """The SQL side of the results store. Safe to share between threads."""

    def __init__(self, results_dir: str | Path, url: str | None = None):
        self.results_dir = Path(results_dir).resolve()
        if url is None:
            self.results_dir.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{self.results_dir / 'store.db'}"
        self.engine = create_engine(url)
        self.url = self.engine.url.render_as_string(hide_password=True)  # for messages
        if self.engine.dialect.name == "sqlite":
            _sqlite_setup(self.engine)
        with self._write() as conn:
            _meta.create_all(conn)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.results_dir)!r}, url={self.url!r})"

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(mambaflow_write=True)  # -> BEGIN IMMEDIATE on SQLite
            with conn.begin():
                yield conn

    def _read(self, query) -> list[dict]:
        with self.engine.connect() as conn:
            return [_from_db(dict(r._mapping)) for r in conn.execute(query)]

    @staticmethod
    def new_run_id() -> str:
        """``20250102T030405123456Z-1a2b3c``: sorts by UTC start time, unique by suffix."""
        return f"{_now():%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"

    # ------------------------------------------------------------ runs

    def start_run(self, run_id: str, config: dict, symbols: list[str]) -> None:
        row = {
            "run_id": _check_run_id(run_id), "started_at": _now(), "status": "running",
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
        best_val_loss: float | None = None, seconds: float | None = None,
        model_path: str | Path | None = None, data_fingerprint: str | None = None,
        started_at: dt.datetime | None = None, finished_at: dt.datetime | None = None,
    ) -> None:
        """Insert or replace the outcome of one symbol in one run.

        A failed symbol must say why (``error``). ``finished_at`` defaults to
        now and ``started_at`` to ``finished_at - seconds``. A model path
        inside the results directory is stored relative to it, so the store
        stays valid when the directory moves; reads return it absolute.
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
            best_val_loss=best_val_loss, seconds=seconds,
            model_path=None if model_path is None else self._relative(model_path),
            data_fingerprint=data_fingerprint, started_at=_utc(started_at), finished_at=finished_at,
        ).items()}
        with self._write() as conn:
            self._require_run(conn, run_id, symbol)
            conn.execute(delete(SYMBOL_RUNS).where(
                SYMBOL_RUNS.c.run_id == run_id, SYMBOL_RUNS.c.symbol == symbol))
            conn.execute(SYMBOL_RUNS.insert(), row)

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
            if rows:
                conn.execute(delete(table).where(
                    table.c.run_id == run_id, table.c.symbol == symbol,
                    table.c[key].in_([r[key] for r in rows])))
                conn.execute(table.insert(), rows)

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
            for r in rows:
                conn.execute(delete(PREDICTIONS).where(*(PREDICTIONS.c[k] == r[k] for k in key)))
            if rows:
                conn.execute(PREDICTIONS.insert(), rows)

    # ------------------------------------------------------------ reads

    def symbol_runs(self, run_id: str | None = None) -> list[dict]:
        q = select(SYMBOL_RUNS).order_by(SYMBOL_RUNS.c.run_id, SYMBOL_RUNS.c.symbol)
        rows = self._read(q if run_id is None else q.where(SYMBOL_RUNS.c.run_id == run_id))
        return self._with_absolute_paths(rows)

    def _with_absolute_paths(self, rows: list[dict]) -> list[dict]:
        for r in rows:
            r["model_path"] = r["model_path"] and str(self.results_dir / r["model_path"])
        return rows

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
        ``symbol_runs`` returns rows (model_path absolute). One query."""
        t = SYMBOL_RUNS
        rank = func.row_number().over(partition_by=t.c.symbol,
                                      order_by=(t.c.finished_at.desc(), t.c.run_id.desc()))
        ranked = (select(t, rank.label("rank"))
                  .where(t.c.symbol.in_(list(symbols)), t.c.status == "completed", t.c.model_path.is_not(None))
                  .subquery())
        q = select(*(ranked.c[c.name] for c in t.c)).where(ranked.c["rank"] == 1).order_by(ranked.c.symbol)
        return {r["symbol"]: r for r in self._with_absolute_paths(self._read(q))}

    def latest_model(self, symbol: str) -> Path | None:
        """Model directory of the symbol's most recently finished completed run with a model, if any."""
        row = self.latest_completed([symbol]).get(symbol)
        return Path(row["model_path"]) if row else None

    def _relative(self, path: str | Path) -> str:
        p = Path(path).resolve()
        return p.relative_to(self.results_dir).as_posix() if p.is_relative_to(self.results_dir) else str(p)


def _from_db(row: dict) -> dict:
    # SQLite drops the time zone of stored UTC timestamps: put it back.
    return {k: v.replace(tzinfo=dt.timezone.utc) if isinstance(v, dt.datetime) and v.tzinfo is None else v
            for k, v in row.items()}


def _sqlite_setup(engine) -> None:
    """WAL, a busy timeout, and BEGIN IMMEDIATE for writes.

    Following SQLAlchemy's "Transactions with SQLite" recipe, sqlite3's own
    implicit BEGIN is turned off and the store emits BEGIN itself. Write
    transactions take the write lock up front (IMMEDIATE): a deferred
    transaction that reads and then writes fails with "database is locked"
    when another writer committed in between, whatever the busy timeout.
    """
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):
        write = conn.get_execution_options().get("mambaflow_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# ---------------------------------------------------------------- model files

class ModelFileError(ValueError):
    """A model directory that cannot be loaded safely."""


def save_model(
    results_dir: str | Path, symbol: str, run_id: str,
    state_dict: dict[str, torch.Tensor], metadata: dict,
) -> Path:
    """Write ``RESULTS/models/SYMBOL/RUN_ID/{weights.safetensors,metadata.json}`` atomically.

    Both files go into a hidden temporary sibling, are fsynced, and the
    directory is renamed into place. A crash before the rename leaves no
    model directory (only the hidden temp directory, removed by the next save
    of the same run); after it, the whole model. An existing model directory
    is never replaced: FileExistsError (run ids are unique, so this means the
    run was already saved). Returns the model directory.
    """
    symbol = validate_symbol(symbol)  # it becomes a path: checked, canonical case
    _check_run_id(run_id)
    if not isinstance(metadata, dict):
        raise TypeError(f"{symbol}: metadata must be a dict, got {type(metadata).__name__}")
    text = to_json(metadata)  # fails before anything touches the disk
    # own, contiguous CPU copies: safetensors refuses views and shared storage
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    parent = Path(results_dir) / "models" / symbol
    final = parent / run_id
    if final.exists():
        raise FileExistsError(f"{symbol}: model {final} already exists; save under a new run id")
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".{run_id}.*.tmp"):  # left by a crashed save of this run
        shutil.rmtree(stale)
    tmp = parent / f".{run_id}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        save_file(tensors, tmp / WEIGHTS_FILE)
        _fsync_file(tmp / WEIGHTS_FILE)
        with open(tmp / METADATA_FILE, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(f"{symbol}: model {final} appeared while saving") from e
            raise
        _fsync_dir(parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def load_model(model_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state_dict on CPU, metadata) of a model directory; never unpickles."""
    model_dir = Path(model_dir)
    weights, meta = model_dir / WEIGHTS_FILE, model_dir / METADATA_FILE
    for f in (weights, meta):
        if not f.is_file():
            raise ModelFileError(f"{f} is missing: a model directory holds {WEIGHTS_FILE} and {METADATA_FILE}")
    try:
        state = load_file(weights, device="cpu")
    except SafetensorError as e:
        raise ModelFileError(
            f"{weights} is not a safetensors file ({e}); refusing it: models are never unpickled. "
            "Retrain, or convert it yourself with safetensors.torch.save_file"
        ) from e
    try:
        metadata = json.loads(meta.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{meta} is not JSON: {e}") from e
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{meta} holds a {type(metadata).__name__}, expected a JSON object")
    return state, metadata


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # makes a rename / new entry durable; directories cannot be opened on Windows
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def package_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape a model, for its metadata."""
    def version(*dists: str) -> str | None:
        for d in dists:
            try:
                return importlib_metadata.version(d)
            except importlib_metadata.PackageNotFoundError:
                continue
        return None

    return {
        "python": sys.version.split()[0],
        "torch": version("torch"),
        "lightning": version("lightning", "pytorch-lightning"),
        "polars": version("polars"),
        "prefect": version("prefect"),
        "numpy": version("numpy"),
        "safetensors": version("safetensors"),
        "mambaflow": version("mambaflow"),
    }

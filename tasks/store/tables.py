"""The six tables of the results store (what each holds: ``tasks.store.db``).

One definition for every database: SQLite creates these tables, and the
tests compile them for PostgreSQL. Timestamps are written as UTC; SQLite drops
their zone and ``tasks.store.db`` puts it back on reading.
"""

from __future__ import annotations

from sqlalchemy import Column, Date, DateTime, Float, ForeignKey, Integer, MetaData, String, Table, Text

from tasks.evaluate import EVALUATION_KEYS

SCHEMA = MetaData()  # the six tables; SCHEMA.create_all makes them
_ts = DateTime(timezone=True)  # written as UTC; SQLite keeps it naive, read back as UTC

RUNS = Table(
    "runs", SCHEMA,
    Column("run_id", String(64), primary_key=True),
    Column("started_at", _ts, nullable=False),
    Column("finished_at", _ts),
    Column("status", String(16), nullable=False),
    Column("config", Text, nullable=False),       # JSON
    Column("symbols", Text, nullable=False),      # JSON list
)
SYMBOL_RUNS = Table(
    "symbol_runs", SCHEMA,
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
    "epoch_metrics", SCHEMA,
    Column("run_id", String(64), ForeignKey("runs.run_id"), primary_key=True),
    Column("symbol", String, primary_key=True),
    Column("epoch", Integer, primary_key=True),
    *(Column(c, Float) for c in ("train_loss", "val_loss", "train_mae", "val_mae", "lr", "seconds")),
)
EVALUATIONS = Table(
    "evaluations", SCHEMA,
    Column("run_id", String(64), ForeignKey("runs.run_id"), primary_key=True),
    Column("symbol", String, primary_key=True),
    Column("horizon", Integer, primary_key=True),
    Column("n", Integer, nullable=False),
    *(Column(k, Float) for k in EVALUATION_KEYS[2:]),
)
PREDICTIONS = Table(
    "predictions", SCHEMA,
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
BACKTESTS = Table(
    "backtests", SCHEMA,
    Column("backtest_id", String(64), primary_key=True),
    Column("symbol", String, primary_key=True),
    Column("fold", Integer, primary_key=True),
    Column("horizon", Integer, primary_key=True),
    *(Column(k, Date, nullable=False) for k in ("train_start", "train_end", "test_start", "test_end")),
    # n and the metrics: copies of the evaluations columns, so they follow its key list
    *(Column(c.name, c.type, nullable=c.nullable) for c in EVALUATIONS.columns if not c.primary_key),
)

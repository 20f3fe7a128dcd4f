"""The tables of the results store (what each holds: ``tasks.store.db``).

One definition for every database: the tests create these tables on SQLite
and on a real PostgreSQL server. Timestamps are written as UTC; SQLite drops
their zone, PostgreSQL returns them in the session's zone, and
``tasks.store.db`` turns both back into UTC on reading.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean, Column, Connection, Date, DateTime, Float, ForeignKey, Integer, LargeBinary, MetaData, String, Table,
    Text, inspect,
)

from tasks.evaluate import QUANTILE_EVALUATION_KEYS as EVALUATION_KEYS

SCHEMA = MetaData()  # every table; SCHEMA.create_all makes them
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
    Column("no_skill", Boolean),  # no epoch beat the untrained head (zero median, training spread)
    Column("seconds", Float),
    Column("model_path", Text),  # "store:SYMBOL/RUN_ID": the run whose model_files rows hold the model
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
    # the central interval (outer quantiles) and every quantile {"0.05": r, ...}, as log returns and prices
    *(Column(c, Float) for c in ("lower_return", "upper_return", "lower_price", "upper_price")),
    Column("quantiles", Text),  # JSON
    Column("flag", String(16)),  # "no_skill": the model is its untrained baseline head
    Column("created_at", _ts, nullable=False),
)
MODEL_FILES = Table(
    # A trained model's files (weights.safetensors, metadata.json, the PNG
    # plots), written in the transaction that writes its symbol_runs row, so
    # that every machine that reaches the database reaches the model too.
    "model_files", SCHEMA,
    Column("run_id", String(64), ForeignKey("runs.run_id"), primary_key=True),  # the run that trained it
    Column("symbol", String, primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("content", LargeBinary, nullable=False),  # BYTEA on PostgreSQL, BLOB on SQLite
    Column("sha256", String(64), nullable=False),    # hex digest of content, checked on every read
    Column("size", Integer, nullable=False),         # bytes; models are well under 1 MB
)
MODELS = Table(
    # The registry: every trained model of a symbol and what was decided about
    # it (tasks.registry). At most one row per symbol is "champion".
    "models", SCHEMA,
    Column("symbol", String, primary_key=True),
    Column("run_id", String(64), ForeignKey("runs.run_id"), primary_key=True),  # the run that trained it
    Column("created_at", _ts, nullable=False),
    Column("data_start", Date), Column("data_end", Date),  # first and last bar it was trained on
    Column("test_start", Date), Column("test_end", Date),  # as-of dates of its first and last test window
    Column("status", String(16), nullable=False),  # champion | challenger | rejected | retired
    Column("reason", Text, nullable=False),  # one sentence: the numbers that decided it
    Column("metric", String(32)), Column("score", Float),  # the gate's metric and its value on its test windows
    Column("promoted_at", _ts),
    Column("init_from", String(64)),  # warm start: the champion run it started from
)
SCORES = Table(
    # A stored forecast scored once its target date has arrived (flows.score):
    # one row per predictions row, same key.
    "scores", SCHEMA,
    # model_run_id, symbol, as_of, horizon (the key), target_date: as in predictions
    *(Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable) for c in PREDICTIONS.columns
      if c.primary_key or c.name == "target_date"),
    Column("realised_return", Float, nullable=False),  # ln(close[target_date] / close[as_of]) from the bars
    Column("error", Float, nullable=False),            # predicted_return - realised_return
    Column("rw_error", Float, nullable=False),         # the random walk's: 0 - realised_return
    Column("inside", Boolean),                         # realised inside the stored interval; None: no interval
    Column("scored_at", _ts, nullable=False),
)
EVENTS = Table(
    # Things a run noticed about a symbol's data: "restated" (bars the champion
    # trained on changed since), with the first differing date and the size.
    "events", SCHEMA,
    Column("run_id", String(64), primary_key=True),
    Column("symbol", String, primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("first_date", Date),
    Column("size", Float),  # largest relative change of a close, |new / old - 1|
    Column("detail", Text, nullable=False),
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


def create_schema(conn: Connection) -> None:
    """Every table (``SCHEMA.create_all``). A store made by an earlier version
    lacks the columns added since: add
    them (``ALTER TABLE ... ADD COLUMN``, the same on SQLite and PostgreSQL),
    so an old ``store.db`` keeps working and keeps its rows. Columns are only
    ever added, and every added column is nullable; old rows read None there."""
    SCHEMA.create_all(conn)
    quote = conn.dialect.identifier_preparer.quote
    tables = inspect(conn)
    for table in SCHEMA.sorted_tables:
        have = {c["name"] for c in tables.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            assert column.nullable, f"{table.name}.{column.name}: a column added later must be nullable"
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}")

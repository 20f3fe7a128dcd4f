"""Opening the results database: one engine per URL, set up for its dialect,
and a connection tried before any work so that a wrong URL fails at once.

    engine = open_engine("postgresql+psycopg://user:pw@host/db")   # or sqlite:///PATH
    check_store(url)                                                # the CLI's up-front check

SQLite gets WAL, a busy timeout and ``BEGIN IMMEDIATE`` for writes
(``_sqlite_setup``): writers queue for the lock instead of failing with
"database is locked" when a flow trains several symbols in threads (WAL needs
a local disk, not NFS; PostgreSQL is the store for several machines). PostgreSQL gets a ``connect_timeout`` unless the URL sets
one: libpq's default is to wait forever on a host that drops packets.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

CONNECT_TIMEOUT_S = 10  # seconds libpq waits for a PostgreSQL server to answer
URL_EXAMPLES = "postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE or sqlite:///PATH/store.db"


class StoreConnectionError(ValueError):
    """The results database URL is malformed, its driver missing, or the
    database cannot be reached or refuses the login. (A ValueError: the
    command lines exit 2 on it, before any work.)"""


def shown(url: str | URL) -> str:
    """The URL with its password replaced by ``***``, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", str(url))  # not parseable: mask by shape


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (nothing connects yet), set up for its dialect."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreConnectionError(f"store URL {shown(url)} is not a database URL ({e}); use {URL_EXAMPLES}") from e
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreConnectionError(f"store URL {shown(parsed)}: the results store runs on SQLite or PostgreSQL, "
                                   f"not {parsed.get_backend_name()}; use {URL_EXAMPLES}")
    connect_args = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        engine = create_engine(parsed, connect_args=connect_args)
    except (NoSuchModuleError, ModuleNotFoundError) as e:
        raise StoreConnectionError(
            f"store URL {shown(parsed)}: no database driver for it ({e}); for PostgreSQL install the "
            "'postgres' extra (pip install -e '.[postgres]', which brings psycopg) and use "
            f"postgresql+psycopg://...; URLs look like {URL_EXAMPLES}") from e
    if engine.dialect.name == "sqlite":
        _sqlite_setup(engine)
    return engine


def open_engine(url: str) -> Engine:
    """``make_engine(url)`` after one connection succeeded: a server that is
    down, a closed port, a wrong password or an unknown database raise
    StoreConnectionError naming the URL (password hidden) and the fix."""
    engine = make_engine(url)
    try:
        _connect_once(engine)
    except StoreConnectionError:
        engine.dispose()
        raise
    return engine


def check_store(url: str | None) -> None:
    """Fail now if the results database at ``url`` cannot be reached: used
    before any work. The default store (None: SQLite in the results
    directory) and SQLite files are made on first use, so for SQLite only a
    missing directory is an error; nothing is created here."""
    if url is None:
        return
    engine = make_engine(url)
    try:
        path = engine.url.database
        if engine.dialect.name != "sqlite":
            _connect_once(engine)
        elif path and path != ":memory:" and not Path(path).expanduser().parent.is_dir():
            raise StoreConnectionError(f"results store {shown(url)}: directory {Path(path).parent} does not "
                                       "exist; create it or point --store-url elsewhere")
    finally:
        engine.dispose()


def _connect_once(engine: Engine) -> None:
    try:
        engine.connect().close()
    except OperationalError as e:
        reason = " ".join(str(e.orig).split())  # libpq's lines, on one line
        fix = ("check the host, port, user, password and database in --store-url (store_url in a "
               "config), and that the server runs and accepts connections from this machine"
               if engine.dialect.name != "sqlite" else "check that the directory exists and is writable")
        raise StoreConnectionError(f"results store {shown(engine.url)} cannot be opened: {reason}; {fix}") from e


def _sqlite_setup(engine: Engine) -> None:
    """WAL, a busy timeout, and BEGIN IMMEDIATE for writes.

    Following SQLAlchemy's "Transactions with SQLite" recipe, sqlite3's own
    implicit BEGIN is turned off and the store emits BEGIN itself. Write
    transactions take the write lock up front (IMMEDIATE): a deferred
    transaction that reads and then writes fails with "database is locked"
    when another writer committed in between, whatever the busy timeout.
    (PostgreSQL needs none of this: its writers wait on row locks, not on
    the database.)
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

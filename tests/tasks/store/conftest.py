"""Every store test that takes ``store`` or ``store_url`` runs twice: on
SQLite (the default store in the results directory) and on PostgreSQL (a
fresh schema on the session's server, tests/conftest.py)."""

from __future__ import annotations

import pytest

from tasks.store import ResultsStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request) -> str | None:
    """None (SQLite in the results directory) or the URL of an empty PostgreSQL schema."""
    return None if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def store(tmp_path, store_url):
    with ResultsStore(tmp_path / "results", store_url) as s:
        yield s

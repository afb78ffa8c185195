"""Run a test once per test pass: in the SQLite pass, and again (marked pg) in the PostgreSQL
pass, where the "done when" invariants of the capacity issue must be proven."""

from __future__ import annotations

import pytest
from django.db import connection

EACH_DATABASE = pytest.mark.parametrize(
    "database",
    [
        pytest.param("default", id="default-db"),
        pytest.param("postgresql", marks=pytest.mark.pg, id="postgresql"),
    ],
)


def check_database(database: str) -> None:
    """The pg copy really ran on PostgreSQL (not on a silently configured SQLite)."""
    if database == "postgresql":
        assert connection.vendor == "postgresql"

"""The suite's PostgreSQL databases are handed from test to test emptied: a later test sees no row
of an earlier one and fresh sequences, and a database whose schema a test changed is never reused."""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import _pg_url

pytestmark = pytest.mark.postgres

REJECTED = "INSERT INTO rejected_bars (timeframe, provider, reason, rejected_at) VALUES ('m15', 'alpaca', 'high below low', now())"


def test_a_database_handed_back_is_emptied_and_reused(pg_databases):
    name = pg_databases.take()
    with psycopg.connect(_pg_url(name), autocommit=True) as conn:
        conn.execute("INSERT INTO watchlist (symbol) VALUES ('AAPL'), ('MSFT')")
        conn.execute(REJECTED)
        left_open = psycopg.connect(_pg_url(name))  # a connection a test forgot, inside a transaction
        left_open.execute("SELECT count(*) FROM watchlist")
        pg_databases.give_back(name)
    assert left_open.closed or left_open.broken or _is_gone(left_open)
    assert pg_databases.take() == name
    with psycopg.connect(_pg_url(name), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM watchlist").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM rejected_bars").fetchone() == (0,)
        assert conn.execute(REJECTED + " RETURNING id").fetchone() == (1,)  # the sequence starts again
    pg_databases.give_back(name)


def test_a_database_whose_schema_a_test_changed_is_dropped(pg_databases):
    name = pg_databases.take()
    with psycopg.connect(_pg_url(name), autocommit=True) as conn:
        conn.execute("ALTER TABLE watchlist ADD COLUMN note text")
    pg_databases.give_back(name)
    assert name not in pg_databases.free and name not in pg_databases.made
    with psycopg.connect(_pg_url("postgres"), autocommit=True) as admin:
        assert admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (0,)


def _is_gone(conn) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False

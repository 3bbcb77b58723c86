"""sql/schema.sql (PostgreSQL's source of truth) and the SQLAlchemy tables agree; applying is
idempotent; URLs are checked with clear errors."""

import pytest
import sqlalchemy as sa

from backfill_dagster.store import StoreConfigError, StoreUnavailableError, create_engine, parse_database_url, shared_engine
from backfill_dagster.store.database import apply_schema
from backfill_dagster.store.schema import metadata


def _shape(engine):
    inspector = sa.inspect(engine)
    out = {}
    for table in sorted(metadata.tables):
        columns = {
            c["name"]: (c["type"]._type_affinity.__name__ if hasattr(c["type"], "_type_affinity") else type(c["type"]).__name__, c["nullable"])
            for c in inspector.get_columns(table)
        }
        pk = inspector.get_pk_constraint(table)["constrained_columns"]
        indexes = sorted(i["name"] for i in inspector.get_indexes(table))
        out[table] = (columns, pk, indexes)
    return out


@pytest.mark.postgres
def test_postgres_schema_file_matches_sqlalchemy_tables(pg_url, sqlite_url):
    pg, lite = _shape(shared_engine(pg_url)), _shape(shared_engine(sqlite_url))
    assert set(pg) == set(lite) == {
        "watchlist", "ohlc_bars", "bar_coverage", "rejected_bars", "provider_budget", "provider_requests"
    }
    for table in pg:
        pg_cols, pg_pk, pg_idx = pg[table]
        lite_cols, lite_pk, lite_idx = lite[table]
        assert list(pg_cols) == list(lite_cols), table
        assert {k: v[1] for k, v in pg_cols.items()} == {k: v[1] for k, v in lite_cols.items()}, table
        assert pg_pk == lite_pk and pg_idx == lite_idx, table
        for name, (pg_type, _) in pg_cols.items():
            assert _family(pg_type) == _family(lite_cols[name][0]), (table, name, pg_type, lite_cols[name][0])


def _family(type_name: str) -> str:
    return {"Integer": "int", "BigInteger": "int", "INTEGER": "int", "BIGINT": "int", "Float": "float", "Double": "float",
            "DOUBLE_PRECISION": "float", "REAL": "float", "FLOAT": "float", "Text": "text", "String": "text", "TEXT": "text",
            "DateTime": "datetime", "TIMESTAMP": "datetime", "DATETIME": "datetime", "Date": "date", "DATE": "date",
            "Boolean": "bool", "BOOLEAN": "bool"}.get(type_name, type_name)


def test_schema_applies_idempotently(store_url):
    engine = shared_engine(store_url)
    apply_schema(engine)
    apply_schema(engine)
    assert {"watchlist", "ohlc_bars", "bar_coverage", "rejected_bars"} <= set(sa.inspect(engine).get_table_names())


@pytest.mark.parametrize(
    "url, message",
    [
        ("", "database URL is empty"),
        ("not a url", "malformed"),
        ("mysql://root@localhost/db", "not supported"),
        ("postgresql+asyncpg://u@h/db", "not supported"),
        ("sqlite://", "in-memory SQLite"),
        ("sqlite:///:memory:", "in-memory SQLite"),
    ],
)
def test_bad_database_urls_are_refused(url, message):
    with pytest.raises(StoreConfigError, match=message):
        parse_database_url(url)


def test_postgres_urls_use_psycopg3():
    assert parse_database_url("postgres://u:p@h:5/db").drivername == "postgresql+psycopg"
    assert parse_database_url("postgresql+psycopg2://u@h/db").drivername == "postgresql+psycopg"


def test_unreachable_database_is_a_clear_error_without_the_password():
    with pytest.raises(StoreUnavailableError) as info:
        create_engine("postgresql://user:s3cret@127.0.0.1:1/nowhere")
    assert "cannot reach the database postgresql+psycopg://user:***@127.0.0.1:1/nowhere" in str(info.value)
    assert "s3cret" not in str(info.value)

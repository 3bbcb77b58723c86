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
        "watchlist", "ohlc_bars", "bar_coverage", "rejected_bars", "provider_budget", "provider_requests",
        "corporate_actions", "corporate_action_sources", "corporate_action_checks",
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


OLD_LEDGER = {
    # bar_coverage as the first release made it: no 'empty' status, no source_fetched_at, no rewrite_reason.
    "sqlite": """CREATE TABLE bar_coverage (symbol TEXT NOT NULL, timeframe TEXT NOT NULL, session DATE NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('complete', 'partial', 'failed')), bars INTEGER DEFAULT '0' NOT NULL,
        expected INTEGER DEFAULT '0' NOT NULL, provider TEXT, fetched_at DATETIME, session_closed BOOLEAN DEFAULT 0 NOT NULL,
        attempts INTEGER DEFAULT '1' NOT NULL, error TEXT, run_id TEXT, updated_at DATETIME NOT NULL,
        PRIMARY KEY (symbol, timeframe, session))""",
    "postgresql": """CREATE TABLE bar_coverage (symbol text NOT NULL, timeframe text NOT NULL, session date NOT NULL,
        status text NOT NULL CHECK (status IN ('complete', 'partial', 'failed')), bars integer NOT NULL DEFAULT 0,
        expected integer NOT NULL DEFAULT 0, provider text, fetched_at timestamptz, session_closed boolean NOT NULL DEFAULT false,
        attempts integer NOT NULL DEFAULT 1, error text, run_id text, updated_at timestamptz NOT NULL,
        PRIMARY KEY (symbol, timeframe, session))""",
}


def test_a_ledger_made_before_the_empty_status_is_migrated_with_its_rows(store_url):
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE bar_coverage")
        conn.exec_driver_sql(OLD_LEDGER[engine.dialect.name])
        conn.exec_driver_sql("INSERT INTO bar_coverage (symbol, timeframe, session, status, bars, updated_at) "
                             "VALUES ('AAPL', 'm15', '2024-11-26', 'complete', 26, '2024-11-27 00:00:00+00')")
    apply_schema(engine)
    apply_schema(engine)  # idempotent
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO bar_coverage (symbol, timeframe, session, status, updated_at, source_fetched_at, "
                             "rewrite_reason) VALUES ('AAPL', 'm15', '2024-11-27', 'empty', '2024-11-28 00:00:00+00', NULL, NULL)")
        rows = conn.exec_driver_sql("SELECT session, status, bars FROM bar_coverage ORDER BY session").all()
    assert [(str(r[0])[:10], r[1], r[2]) for r in rows] == [("2024-11-26", "complete", 26), ("2024-11-27", "empty", 0)]
    engine.dispose()

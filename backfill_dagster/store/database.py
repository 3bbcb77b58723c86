"""Connecting to the store: URL rules, engines, and applying the schema idempotently.

PostgreSQL (psycopg 3) in production; SQLite, a file in the data directory, as the embedded default.
"""

from __future__ import annotations

import importlib.resources
import threading
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from backfill_dagster.store.schema import bar_coverage, metadata


class StoreConfigError(ValueError):
    """A database URL that cannot be used."""


class StoreUnavailableError(RuntimeError):
    """A database that cannot be reached."""


SUPPORTED = "postgresql://user:password@host:5432/dbname or sqlite:///path/to/file.sqlite"

# One advisory lock key for schema changes (arbitrary constant: 'bfdg' in ASCII).
_SCHEMA_LOCK = 0x62666467


def parse_database_url(url: str) -> URL:
    """Parse and normalise a database URL: postgres(ql):// means psycopg 3."""
    if not isinstance(url, str) or not url.strip():
        raise StoreConfigError(f"database URL is empty: use {SUPPORTED}")
    try:
        parsed = sa.engine.make_url(url.strip())
    except Exception:
        raise StoreConfigError(f"database URL is malformed: use {SUPPORTED}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        if driver not in ("", "psycopg", "psycopg2"):
            raise StoreConfigError(
                f"database driver {parsed.drivername!r} is not supported: use postgresql:// (psycopg 3)"
            )
        # COPY goes through psycopg 3; dagster-postgres' psycopg2 URLs are accepted and upgraded.
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise StoreConfigError(f"database driver {parsed.drivername!r} is not supported")
        if not parsed.database or parsed.database == ":memory:":
            raise StoreConfigError(
                "an in-memory SQLite database cannot be shared by Dagster's run processes: "
                "give a file, e.g. sqlite:///data/backfill.sqlite"
            )
        return parsed.set(drivername="sqlite")
    raise StoreConfigError(f"database {parsed.drivername!r} is not supported: use {SUPPORTED}")


def url_without_password(url: URL | str) -> str:
    url = url if isinstance(url, URL) else sa.engine.make_url(url)
    return url.render_as_string(hide_password=True)


def schema_sql() -> str:
    """sql/schema.sql: inside the package when installed from a wheel, else the source tree's."""
    packaged = importlib.resources.files("backfill_dagster").joinpath("sql/schema.sql")
    if packaged.is_file():
        return packaged.read_text()
    return (Path(__file__).resolve().parents[2] / "sql" / "schema.sql").read_text()


def create_engine(url: str | URL) -> Engine:
    """An engine for the store, checked reachable, with the schema applied."""
    parsed = parse_database_url(str(url) if isinstance(url, str) else url.render_as_string(False))
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": 60})
        _configure_sqlite(engine)
    else:
        engine = sa.create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=4,
            connect_args={"connect_timeout": 10, "application_name": "backfill_dagster"},
        )
    try:
        apply_schema(engine)
    except sa.exc.OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise StoreUnavailableError(f"cannot reach the database {url_without_password(parsed)}: {reason}") from None
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy's "begin" below own transactions (pysqlite's own handling defers them).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection):
        # Take the write lock up front: concurrent run processes then queue on busy_timeout instead
        # of failing with "database is locked" when a reader tries to become a writer.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


_schema_lock = threading.Lock()


def apply_schema(engine: Engine) -> None:
    """Create missing tables and indexes; safe to run any number of times, concurrently."""
    with _schema_lock:
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
                conn.exec_driver_sql(schema_sql())
        else:
            with engine.begin() as conn:
                metadata.create_all(conn, checkfirst=True)
                _add_missing_columns(conn)
                _allow_empty_status(conn)


def _add_missing_columns(conn: sa.Connection) -> None:
    """SQLite: give tables created by an earlier version the columns added since (create_all only
    creates missing tables; sql/schema.sql does the same on PostgreSQL with ALTER TABLE)."""
    for table in metadata.sorted_tables:
        present = {row[1] for row in conn.exec_driver_sql(f'PRAGMA table_info("{table.name}")')}
        for column in table.columns:
            if column.name not in present:
                spec = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
                conn.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN {spec}')


def _allow_empty_status(conn: sa.Connection) -> None:
    """SQLite: a ledger made before the 'empty' status has a CHECK constraint without it, and SQLite
    cannot alter a constraint: copy the rows into a table made anew."""
    table_sql = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'bar_coverage'"
    ).scalar_one()
    if "'empty'" in table_sql:
        return
    conn.exec_driver_sql("ALTER TABLE bar_coverage RENAME TO bar_coverage_old")
    conn.exec_driver_sql("DROP INDEX IF EXISTS bar_coverage_open_idx")
    bar_coverage.create(conn)  # with its indexes
    names = ", ".join(c.name for c in bar_coverage.columns)
    conn.exec_driver_sql(f"INSERT INTO bar_coverage ({names}) SELECT {names} FROM bar_coverage_old")
    conn.exec_driver_sql("DROP TABLE bar_coverage_old")


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def shared_engine(url: str) -> Engine:
    """One engine per URL per process (an engine holds the connection pool), schema applied."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = create_engine(url)
        return engine


def dispose_engine(url: str) -> None:
    """Close the pooled connections of a URL's shared engine (before dropping its database)."""
    with _engines_lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


def result_frame(result: sa.CursorResult) -> pd.DataFrame:
    """A query's rows as a frame, one column per selected column.

    The rows go to pandas as plain tuples: handed SQLAlchemy `Row`s, pandas asks each one whether
    it is a named tuple (`hasattr(row, "_fields")`), and a Row answers by raising and catching an
    error inside SQLAlchemy, ~5 us a row: most of the time of reading a box run's bars back."""
    columns = list(result.keys())
    return pd.DataFrame([tuple(row) for row in result.fetchall()], columns=columns)


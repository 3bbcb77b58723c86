"""Shared fixtures: the calendar, stores on SQLite and on a real PostgreSQL, Dagster instances.

PostgreSQL: BACKFILL_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres, trust
auth). Each test gets a database of its own, cloned from a template that already holds the schema
(and emptied for a later test of the same process, see _TestDatabases). If the
server cannot be reached the PostgreSQL tests fail, unless BACKFILL_SKIP_POSTGRES=1 says to skip
them on purpose (CI never sets it).
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from datetime import date

import pandas as pd
import psycopg
import pytest

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.store import BarStore, create_engine, dispose_engine, shared_engine

warnings.filterwarnings("ignore", message=".*is currently in beta.*")


def _scratch_in_memory() -> None:
    """Put the tests' scratch files (pytest's tmp_path, Dagster's test instances, the SQLite stores,
    the DAGSTER_HOME of every subprocess) on tmpfs when the machine has one and TMPDIR names no
    other place. SQLite syncs to disk on every commit and on closing a WAL connection, and Dagster's
    SQLite storages open a connection per operation: on a disk shared with other work that was half
    the time of an in-process run. What the tests check does not depend on the disk."""
    shm = "/dev/shm"
    if os.environ.get("TMPDIR") or not (os.path.isdir(shm) and os.access(shm, os.W_OK)):
        return
    scratch = os.path.join(shm, "backfill-dagster-tests")
    os.makedirs(scratch, exist_ok=True)
    os.environ["TMPDIR"] = scratch  # inherited by every subprocess the tests start
    tempfile.tempdir = scratch  # this process may have asked tempfile already


_scratch_in_memory()


def _compile_the_package() -> None:
    """Write the project's bytecode once, before any test starts a process. The suite starts ~150
    Python processes that import the project (run workers, code servers, daemons, the CLI); where
    PYTHONDONTWRITEBYTECODE is set (as on CI machines here) none of them keeps what it compiled, and
    each compiled the whole package again (~0.3 CPU s a process). pip compiles the installed
    dependencies as it installs them; an editable install leaves the project's own uncompiled."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the controller did it before starting the workers
    import compileall
    import pathlib

    import backfill_dagster

    compileall.compile_dir(pathlib.Path(backfill_dagster.__file__).parent, quiet=1, workers=1)


_compile_the_package()

PG_ADMIN_URL = os.environ.get(
    "BACKFILL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEMPLATE_DB = f"bfd_template_{os.getpid()}"


def _pg_url(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def _admin():
    return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)


def no_commit_wait(conn, dbname: str) -> None:
    """A test database's commits do not wait for the WAL to reach the disk (it would survive only a
    server crash, which no test makes); atomicity and what other connections see are unchanged.
    Set per database, so the server and other databases keep their settings."""
    conn.execute(f'ALTER DATABASE "{dbname}" SET synchronous_commit = off')


# End-to-end modules whose tests each build their own deployment: spread over the workers like any
# other test (each is a whole cycle of backfill, split and repair).
E2E_MODULES_OF_INDEPENDENT_TESTS = {"tests/e2e/test_split_repair.py"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (`--dist loadscope`, pyproject.toml): each module under tests/e2e runs in
    one worker, as its tests share one deployment (a module-scoped fixture) and some build on what
    an earlier one left; every other test is a unit of its own, handed to whichever worker is free.
    (xdist's own `loadgroup` marks no longer take effect with pytest 9.2.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class EndToEndModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            together = module.startswith("tests/e2e/") and module not in E2E_MODULES_OF_INDEPENDENT_TESTS
            return module if together else nodeid

    return EndToEndModulesTogether(config, log)


@pytest.fixture(scope="session")
def calendar():
    return xnys()


@pytest.fixture(scope="session")
def pg_template():
    """A database holding the schema, to clone per test (CREATE DATABASE ... TEMPLATE)."""
    if os.environ.get("BACKFILL_SKIP_POSTGRES") == "1":
        pytest.skip("BACKFILL_SKIP_POSTGRES=1: PostgreSQL tests skipped on purpose")
    try:
        conn = _admin()
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}). Start it, point "
            "BACKFILL_TEST_POSTGRES_URL at one, or set BACKFILL_SKIP_POSTGRES=1 to skip those tests."
        )
    with conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
        no_commit_wait(conn, TEMPLATE_DB)
    engine = create_engine(_pg_url(TEMPLATE_DB))
    engine.dispose()
    yield TEMPLATE_DB
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')


# What a test may change in its database besides rows: if any of it differs from the template's
# after the test, the database is dropped instead of emptied and handed on.
_SCHEMA_FINGERPRINT = """
SELECT md5(coalesce(string_agg(item, ';' ORDER BY item), '')) FROM (
    SELECT 'column ' || table_schema || '.' || table_name || '.' || column_name || ' ' || data_type || ' '
           || is_nullable || ' ' || coalesce(column_default, '') AS item
      FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
    UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname <> 'pg_catalog'
    UNION ALL SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
      WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
    UNION ALL SELECT 'schema ' || nspname FROM pg_namespace
    UNION ALL SELECT 'function ' || oid::regprocedure::text FROM pg_proc WHERE pronamespace = 'public'::regnamespace
    UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT 'view ' || schemaname || '.' || viewname FROM pg_views
      WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL SELECT 'setting ' || array_to_string(setconfig, ',') FROM pg_db_role_setting
      WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
) AS schema_items
"""


def _fingerprint(conn) -> str:
    return conn.execute(_SCHEMA_FINGERPRINT).fetchone()[0]


class _TestDatabases:
    """This process's test databases: each cloned from the template once, then emptied after every
    test and handed to the next one. Cloning and dropping a database is ~0.2 CPU seconds of the
    server's (it copies and then deletes the template's files); deleting a test's few rows and
    restarting the sequences is ~1 ms. A database whose schema or settings a test changed, or that
    cannot be emptied, is dropped, as every one was before."""

    def __init__(self, template: str):
        self.template = template
        self.free: list[str] = []
        self.made: set[str] = set()
        with psycopg.connect(_pg_url(template), autocommit=True) as conn:
            self.expected = _fingerprint(conn)

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        name = f"bfd_test_{uuid.uuid4().hex[:12]}"
        with _admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            no_commit_wait(conn, name)
        self.made.add(name)
        return name

    def give_back(self, name: str) -> None:
        if self._emptied(name):
            self.free.append(name)
        else:
            self.drop(name)

    def _emptied(self, name: str) -> bool:
        try:
            with psycopg.connect(_pg_url(name), autocommit=True, connect_timeout=5) as conn:
                # What the test left connected (a subprocess's pool, an idle transaction) goes, as
                # DROP DATABASE ... WITH (FORCE) would have made it go.
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                if _fingerprint(conn) != self.expected:
                    return False
                conn.execute("SET lock_timeout = '5s'")
                with conn.transaction():
                    conn.execute("SET LOCAL session_replication_role = replica")  # no foreign-key order
                    tables = conn.execute("SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) "
                                          "FROM pg_tables WHERE schemaname = 'public'").fetchall()
                    for (table,) in tables:
                        conn.execute(f"DELETE FROM {table}")
                    conn.execute("SELECT setval(quote_ident(schemaname) || '.' || quote_ident(sequencename), "
                                 "coalesce(start_value, 1), false) FROM pg_sequences WHERE schemaname = 'public'")
            return True
        except psycopg.Error:
            return False

    def drop(self, name: str) -> None:
        self.made.discard(name)
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_all(self) -> None:
        for name in list(self.made):
            self.drop(name)
        self.free.clear()


@pytest.fixture(scope="session")
def pg_databases(pg_template):
    databases = _TestDatabases(pg_template)
    yield databases
    databases.drop_all()


@pytest.fixture
def pg_url(pg_databases):
    """A PostgreSQL database of this test's own: the store's schema, no rows."""
    name = pg_databases.take()
    url = _pg_url(name)
    yield url
    dispose_engine(url)
    pg_databases.give_back(name)


@pytest.fixture
def sqlite_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'bars.sqlite'}"
    yield url
    dispose_engine(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request):
    """Every store test runs on both backends."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def store(store_url, calendar) -> BarStore:
    return BarStore(shared_engine(store_url), calendar)


@pytest.fixture(scope="session")
def empty_instance_home(tmp_path_factory):
    """A Dagster test instance's home with its SQLite storages created and empty, made once per
    process: creating them (schemas, migrations' stamps) is ~0.6 CPU seconds, copying them ~0.05."""
    import dagster as dg

    home = tmp_path_factory.mktemp("empty_dagster_home")
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        inst.get_runs()
    return home


@pytest.fixture
def instance(empty_instance_home, tmp_path):
    """A fresh, empty Dagster test instance (dg.instance_for_test) of its own, on SQLite storages
    copied from an empty one rather than created anew."""
    import shutil

    import dagster as dg

    home = tmp_path / "dagster_home"
    shutil.copytree(empty_instance_home, home)
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC") if "+" in text or text.endswith("Z") else pd.Timestamp(text, tz="UTC")


def fixed_clock(text: str):
    now = utc(text)
    return lambda: now


# A week of sessions with a holiday and an early close (Thanksgiving 2024).
THANKSGIVING_WEEK = [date(2024, 11, 25), date(2024, 11, 26), date(2024, 11, 27), date(2024, 11, 29)]


def aggregate_day(m15: pd.DataFrame, symbol: str, label: pd.Timestamp) -> pd.DataFrame:
    """The d1 bar of a session's m15 bars, written the plain pandas way: the tests' reference for
    the numpy d1 rows the demo provider and the fake servers build (`synthetic.day_values`)."""
    from backfill_dagster.domain.bars import bars_frame, empty_bars

    if m15.empty:
        return empty_bars()
    volume = m15["volume"].sum()
    return bars_frame(
        {
            "symbol": [symbol],
            "ts": [label],
            "open": [m15["open"].iloc[0]],
            "high": [m15["high"].max()],
            "low": [m15["low"].min()],
            "close": [m15["close"].iloc[-1]],
            "volume": [volume],
            "vwap": [round(float((m15["vwap"] * m15["volume"]).sum() / volume), 4) if volume else float("nan")],
            "trade_count": [int(m15["trade_count"].sum())],
        }
    )

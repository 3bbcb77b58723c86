"""Persistent Dagster instances on fresh PostgreSQL databases, for the benchmarks.

`event_log="bulk"` is what the project's dagster.yaml deploys (BulkPostgresEventLogStorage);
`"stock"` is dagster-postgres's own storage, the baseline the bulk one is measured against.
"""

from __future__ import annotations

import atexit
import os
import sys
import uuid
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' deployment harness
from tests.deploy import create_database, drop_database, storage_yaml  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"
PG_ADMIN = f"{PG}/postgres"
EVENT_LOGS = ("bulk", "stock")


def fresh_pg_database(prefix: str) -> str:
    """A new, empty database, dropped when the benchmark's process exits (its name starts with
    $BENCH_DB_PREFIX, if set: benchmarks sharing a server tell their databases apart)."""
    name = f"{os.environ.get('BENCH_DB_PREFIX', '')}{prefix}_{uuid.uuid4().hex[:8]}"
    create_database(PG_ADMIN, name)
    atexit.register(drop_database, PG_ADMIN, name)
    return name


def pg_instance(home: Path, event_log: str = "bulk", synchronous_commit: str = "on") -> dg.DagsterInstance:
    """A Dagster instance at `home` whose storages live in a new database; `synchronous_commit`
    is that setting for the instance's connections (off: commits do not wait for the WAL flush)."""
    assert event_log in EVENT_LOGS, event_log
    home.mkdir(parents=True, exist_ok=True)
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{fresh_pg_database('bench_dagster')}"
    if synchronous_commit != "on":
        url += f"?options=-c%20synchronous_commit%3D{synchronous_commit}"
    (home / "dagster.yaml").write_text(storage_yaml(url, event_log, home) + "telemetry:\n  enabled: false\n")
    return dg.DagsterInstance.from_config(str(home))


# Runs executed in-process log every event to the console at DEBUG; a benchmark prints its figures.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

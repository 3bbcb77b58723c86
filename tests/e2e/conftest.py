"""A real deployment for end-to-end tests: PostgreSQL for the store and the Dagster instance (the
project's own dagster.yaml), dagster-webserver and dagster-daemon as processes on free loopback
ports, started and stopped by the fixture within bounded time (the harness in tests/deploy.py,
which the benchmarks use too)."""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL, no_commit_wait
from tests.deploy import BIN, ROOT, Services, create_database, drop_database

__all__ = ["BIN", "ROOT", "Deployment", "deployment"]


def _pg(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


@dataclass
class Deployment(Services):
    home: Path
    env: dict[str, str]
    store_url: str
    databases: list[str]
    logs: Path
    code_root: Path = ROOT
    webserver_url: str = ""
    processes: dict = field(default_factory=dict)

    def start_daemon(self, workspace_reload_s: float = 600):
        """`dagster-daemon run`, its backfill loop and run queue polled faster and its workspace
        (the code server it starts) reloaded every `workspace_reload_s` (quick_daemon.py)."""
        return self.start("daemon", [sys.executable, Path(__file__).with_name("quick_daemon.py"),
                                     "--workspace-reload-s", workspace_reload_s, "run", "-w", "workspace.yaml"])

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 1.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}\n--- daemon log ---\n{self.log('daemon')}"
        )


@pytest.fixture(scope="module")
def instance_yaml() -> Path:
    """The dagster.yaml a module's deployment copies into its DAGSTER_HOME: the project's production
    instance, unless the module overrides this fixture (e.g. with deploy/dagster-stock.yaml)."""
    return ROOT / "dagster.yaml"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, instance_yaml) -> Iterator[Deployment]:
    """PostgreSQL-backed store and instance, with the project's dagster.yaml (or the module's
    `instance_yaml`); no processes yet."""
    tag = uuid.uuid4().hex[:8]
    dagster_db, store_db = f"bfd_e2e_dagster_{tag}", f"bfd_e2e_store_{tag}"
    for name in (dagster_db, store_db):
        create_database(PG_ADMIN_URL, name)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        for name in (dagster_db, store_db):
            no_commit_wait(admin, name)
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(instance_yaml, home / "dagster.yaml")
    logs = tmp_path_factory.mktemp("logs")
    pg = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_URL)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": pg.get("host", "127.0.0.1"),
        "DAGSTER_PG_PORT": str(pg.get("port", 5432)),
        "DAGSTER_PG_DB": dagster_db,
        "DAGSTER_PG_USER": pg.get("user", "postgres"),
        "DAGSTER_PG_PASSWORD": pg.get("password", ""),
        "BACKFILL_DATABASE_URL": _pg(store_db),
        "BACKFILL_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "BACKFILL_HISTORY_START": "2024-01-01",
        "PYTHONUNBUFFERED": "1",
    }
    deployment = Deployment(home=home, env=env, store_url=_pg(store_db), databases=[dagster_db, store_db], logs=logs)
    try:
        yield deployment
    finally:
        deployment.stop()
        for name in deployment.databases:
            drop_database(PG_ADMIN_URL, name)

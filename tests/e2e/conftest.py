"""A real deployment for end-to-end tests: PostgreSQL for the store and the Dagster instance (the
project's own dagster.yaml), dagster-webserver and dagster-daemon as processes on free loopback
ports, started and stopped by the fixture within bounded time."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL, no_commit_wait

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


@dataclass
class Deployment:
    home: Path
    env: dict[str, str]
    store_url: str
    databases: list[str]
    logs: Path
    webserver_url: str = ""
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    # ------------------------------------------------------------------ processes
    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(
            args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes[name] = proc
        return proc

    def start_webserver(self) -> None:
        port = free_port()
        self.webserver_url = f"http://127.0.0.1:{port}"
        self.start("webserver", [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-p", str(port)])
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.processes["webserver"].poll() is not None:
                raise RuntimeError(f"dagster-webserver exited:\n{self.log('webserver')}")
            try:
                if httpx.get(f"{self.webserver_url}/server_info", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"dagster-webserver did not answer within {START_TIMEOUT_S}s:\n{self.log('webserver')}")

    def start_daemon(self) -> None:
        """`dagster-daemon run`, its backfill loop and run queue polled faster (quick_daemon.py)."""
        self.start("daemon", [sys.executable, str(Path(__file__).with_name("quick_daemon.py")), "run", "-w",
                              "workspace.yaml"])

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    # ------------------------------------------------------------------ clients
    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = httpx.post(f"{self.webserver_url}/graphql", json={"query": query, "variables": variables or {}},
                              timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

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
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    """PostgreSQL-backed store and instance, with the project's dagster.yaml; no processes yet."""
    tag = uuid.uuid4().hex[:8]
    dagster_db, store_db = f"bfd_e2e_dagster_{tag}", f"bfd_e2e_store_{tag}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dagster_db}"')
        admin.execute(f'CREATE DATABASE "{store_db}"')
        no_commit_wait(admin, dagster_db)
        no_commit_wait(admin, store_db)
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
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
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            for name in deployment.databases:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

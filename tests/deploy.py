"""One harness for real deployments, shared by the end-to-end tests (tests/e2e/conftest.py) and the
benchmarks (bench/scale_deploy.py, bench/pg_instance.py): PostgreSQL databases made and dropped, a
Dagster instance's storage sections, dagster-webserver and dagster-daemon as processes on loopback
started and stopped within bounded time, and the GraphQL texts the UI sends to launch and follow a
backfill. Nothing here is imported by the package: it only serves tests and benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# What the UI's launch dialog sends, and what its backfill page asks while one runs.
LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on PartitionSetNotFoundError { message }
  }
}
"""
BACKFILL_STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      numPartitions
      assetBackfillData {
        assetBackfillStatuses {
          ... on AssetPartitionsStatusCounts {
            assetKey { path } numPartitionsTargeted numPartitionsMaterialized numPartitionsFailed
          }
        }
      }
    }
  }
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------- databases
def database_exists(admin_url: str, name: str) -> bool:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def create_database(admin_url: str, name: str) -> None:
    """A new, empty database `name` (one of that name is dropped first)."""
    drop_database(admin_url, name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


@contextlib.contextmanager
def scratch_storage_database(admin_url: str, prefix: str):
    """A new database for a Dagster instance's storages (its psycopg2 URL), dropped afterwards."""
    import uuid

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    create_database(admin_url, name)
    try:
        yield f"{admin_url.rpartition('/')[0]}/{name}".replace("postgresql://", "postgresql+psycopg2://")
    finally:
        drop_database(admin_url, name)


def storage_yaml(postgres_url: str, event_log: str = "bulk", home: str | os.PathLike | None = None) -> str:
    """The storage sections of a `dagster.yaml` keeping everything in one PostgreSQL database: the
    project's event log, pooled run storage and threaded compute logs (`bulk`, as the project's
    dagster.yaml deploys them; compute logs under `home`/storage, Dagster's default place), or
    dagster-postgres's own storage and Dagster's compute logs (`stock`, the baseline)."""
    if event_log == "stock":
        return f"storage:\n  postgres:\n    postgres_url: {postgres_url}\n"
    if event_log != "bulk":
        raise ValueError(f"event_log is 'bulk' or 'stock', not {event_log!r}")
    compute_logs = "" if home is None else (
        "compute_logs:\n  module: backfill_dagster.instance.compute_logs\n  class: TeeComputeLogManager\n"
        f"  config:\n    base_dir: {os.path.join(os.fspath(home), 'storage')}\n"
    )
    return compute_logs + "".join(
        f"{kind}:\n  module: {module}\n  class: {cls}\n  config:\n    postgres_url: {postgres_url}\n"
        for kind, module, cls in [
            ("run_storage", "backfill_dagster.instance.run_storage", "PooledPostgresRunStorage"),
            ("event_log_storage", "backfill_dagster.instance.event_log", "BulkPostgresEventLogStorage"),
            ("schedule_storage", "dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
        ]
    )


# ---------------------------------------------------------------------------------------- threads
def in_thread(name: str, fn):
    """fn() run in a thread called `name`; its result, or its exception raised here."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (handed back to the caller)
            out["error"] = e

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


# ---------------------------------------------------------------------------------------- processes
def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, theirs, ...), read from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class Services:
    """Dagster's processes of one deployment. The class using it provides `env` (the processes'
    environment), `logs` (a folder for their output), `code_root` (the checkout they run from:
    its workspace.yaml), `processes` (a dict) and `webserver_url`."""

    start_timeout_s: float = 120.0
    run_timeout_s: float = 300.0
    graphql_timeout_s: float = 60.0

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        Path(self.logs).mkdir(parents=True, exist_ok=True)
        log = open(Path(self.logs) / f"{name}.log", "ab")
        proc = subprocess.Popen([str(a) for a in args], cwd=self.code_root, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = proc
        return proc

    def start_webserver(self) -> float:
        """Start dagster-webserver on a free port; seconds until it answers."""
        port = free_port()
        self.webserver_url = f"http://127.0.0.1:{port}"
        began = time.monotonic()
        self.start("webserver", [BIN / "dagster-webserver", "-w", "workspace.yaml", "-p", str(port)])
        while time.monotonic() - began < self.start_timeout_s:
            if self.processes["webserver"].poll() is not None:
                raise RuntimeError(f"dagster-webserver exited:\n{self.log('webserver')}")
            try:
                if httpx.get(f"{self.webserver_url}/server_info", timeout=2).status_code == 200:
                    return time.monotonic() - began
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"dagster-webserver did not answer within {self.start_timeout_s:g}s:\n{self.log('webserver')}")

    def start_daemon(self) -> subprocess.Popen:
        return self.start("daemon", [BIN / "dagster-daemon", "run", "-w", "workspace.yaml"])

    def stop(self) -> None:
        """SIGTERM to each process group, SIGKILL to those still there 30 s later; then SIGKILL to
        their descendants in other sessions (the code servers the webserver and the daemon start
        in their own sessions, which could outlive them idle)."""
        children = {pid for proc in self.processes.values() if proc.poll() is None for pid in descendants(proc.pid)}
        for proc in self.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.processes.clear()

    def log(self, name: str, chars: int = 6000) -> str:
        path = Path(self.logs) / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], cwd=self.code_root, env=self.env, capture_output=True,
                              text=True, timeout=timeout or self.run_timeout_s)

    def graphql(self, query: str, variables: dict | None = None, timeout: float | None = None) -> dict:
        response = httpx.post(f"{self.webserver_url}/graphql", json={"query": query, "variables": variables or {}},
                              timeout=timeout or self.graphql_timeout_s)
        response.raise_for_status()
        body = response.json()
        if "errors" in body:
            raise RuntimeError(body["errors"])
        return body["data"]

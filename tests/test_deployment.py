"""The files an operator uses: dagster.yaml loads against PostgreSQL, workspace.yaml loads the code
location, the operator queries in sql/queries run, and the quickstart command works."""

import os
import signal
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.ingest import fetch_partitions
from backfill_dagster.providers.demo import DemoProvider
from backfill_dagster.providers.router import Router
from tests.conftest import PG_ADMIN_URL, THANKSGIVING_WEEK, fixed_clock, no_commit_wait

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.postgres
def test_production_dagster_yaml_loads_on_postgres(tmp_path, pg_template):
    name = f"bfd_dagster_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        no_commit_wait(admin, name)
    try:
        shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
        host = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_URL)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(tmp_path),
            "DAGSTER_PG_HOST": host.get("host", "127.0.0.1"),
            "DAGSTER_PG_PORT": str(host.get("port", 5432)),
            "DAGSTER_PG_DB": name,
            "DAGSTER_PG_USER": host.get("user", "postgres"),
            "DAGSTER_PG_PASSWORD": host.get("password", ""),
        }
        code = (
            "import dagster as dg; i = dg.DagsterInstance.get(); "
            "print(type(i.run_storage).__name__, type(i.event_log_storage).__name__, "
            "type(i.schedule_storage).__name__, type(i.run_coordinator).__name__, "
            "i.run_monitoring_enabled, i.run_retries_enabled, i.get_concurrency_config().run_queue_config.max_concurrent_runs); "
            # the daemon's tick retention, and its backfill log lines bounded once the instance is open
            "from dagster._core.definitions.run_request import InstigatorType; "
            "from dagster._core.execution import asset_backfill; "
            "r = i.get_tick_retention_settings(InstigatorType.SENSOR); "
            "print(*sorted(f'{k.value}={v}' for k, v in r.items()), asset_backfill._partition_subset_str.__module__); "
            # run output kept where Dagster keeps it by default, by the threaded manager
            "m = i.compute_log_manager; print(type(m).__name__, m._base_dir); "
            # provider pools: two steps at a time, one more run started while they wait for a slot
            "p = i.get_concurrency_config().pool_config; print(p.default_pool_limit, p.op_granularity_run_buffer); "
            # a run the queue could not hand to a (replaced) code server goes back to the queue
            "q = i.get_concurrency_config().run_queue_config; "
            "print(q.max_user_code_failure_retries, q.user_code_failure_retry_delay); "
            # a run whose worker is gone is failed by run monitoring, and its pool slots given back
            "print(type(i.run_launcher).__name__, i.run_launcher.supports_check_run_worker_health, "
            "i.run_monitoring_settings['free_slots_after_run_end_seconds'])"
        )
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [
            "PooledPostgresRunStorage", "BulkPostgresEventLogStorage", "PostgresScheduleStorage", "QueuedRunCoordinator",
            "True", "True", "8",
            "FAILURE=30", "SKIPPED=1", "STARTED=30", "SUCCESS=14", "backfill_dagster.instance.backfill_log",
            "TeeComputeLogManager", str(tmp_path / "storage"),
            "2", "1",
            "5", "10",
            "WorkerCheckingRunLauncher", "True", "30",
        ]
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_dagster_dev_in_the_checkout_without_the_production_variables_says_what_to_set_in_one_sentence():
    # The checkout's dagster.yaml is the production instance; `dagster dev` without DAGSTER_HOME
    # loads it from the working directory (into a temporary home).
    from backfill_dagster.instance.run_storage import unset_variables_message
    from tests.deploy import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "BACKFILL_"))}
    proc = subprocess.Popen([BIN / "dagster", "dev", "-p", str(free_port())], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # it served after all: stop it and fail below
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    variables = ["DAGSTER_PG_DB", "DAGSTER_PG_HOST", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_PORT", "DAGSTER_PG_USER"]
    assert f"Error: {unset_variables_message(variables)}\n" in out, out
    assert "Traceback" not in out and "PostProcessingError" not in out, out


def test_workspace_yaml_loads_the_code_location(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "BACKFILL_DATA_DIR": str(tmp_path)}
    out = subprocess.run([BIN / "dagster", "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "backfill_dagster" in out.stdout + out.stderr


@pytest.mark.postgres
@pytest.mark.parametrize("query", sorted(p.name for p in (ROOT / "sql" / "queries").glob("*.sql")))
def test_operator_queries_run(pg_url, calendar, query):
    if not shutil.which("psql"):
        pytest.fail("psql is needed to run the operator queries (it ships with PostgreSQL)")
    from backfill_dagster.store import BarStore, shared_engine

    store = BarStore(shared_engine(pg_url), calendar)
    fetch_partitions([("AAPL", d) for d in THANKSGIVING_WEEK], Timeframe.M15,
                     Router([DemoProvider(calendar, fixed_clock("2025-01-01 00:00"))], calendar), store,
                     clock=fixed_clock("2025-01-01 00:00"))
    out = subprocess.run(["psql", pg_url, "-v", "ON_ERROR_STOP=1", "-v", "symbol=AAPL",
                          "-v", "timeframe=m15", "-f", str(ROOT / "sql" / "queries" / query)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if query in ("coverage.sql", "recent_writes.sql", "bars_per_session.sql"):
        assert "AAPL" in out.stdout or "2024-11-2" in out.stdout


def test_quickstart_demo_runs_on_the_embedded_default(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKFILL_", "DAGSTER_"))}
    env["BACKFILL_DATA_DIR"] = str(tmp_path)
    out = subprocess.run([BIN / "backfill-dagster", "demo", "--symbols", "AAPL", "MSFT", "--sessions", "3"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert ": SUCCESS" in out.stdout
    lines = [line.split() for line in out.stdout.splitlines() if line.startswith(("AAPL", "MSFT"))]
    assert {(l[0], l[1], l[2]) for l in lines} == {(s, "active", t) for s in ("AAPL", "MSFT") for t in ("m15", "h1", "h4", "d1")}
    # columns: symbol watchlist tf horizon(complete/closed) older complete partial empty failed bars expected ...
    assert all(l[3].startswith("3/") and l[5] == "3" and l[9] == l[10] for l in lines), lines
    assert (tmp_path / "backfill.sqlite").exists() and (tmp_path / "dagster_home" / "dagster.yaml").exists()


def test_the_harness_finds_a_process_s_descendants_in_other_sessions():
    # The e2e deployments stop the code servers Dagster starts in their own sessions this way.
    from tests.deploy import descendants

    parent = subprocess.Popen(["sh", "-c", "setsid sleep 60 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (found := descendants(parent.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert found and all(Path(f"/proc/{pid}").exists() for pid in found)
        assert parent.pid not in found and descendants(os.getpid()) >= {parent.pid} | found
    finally:
        for pid in descendants(parent.pid):
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait(timeout=10)

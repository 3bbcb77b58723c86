"""A run whose worker is killed holds nothing, end to end on PostgreSQL with real processes:
`dagster asset materialize --partition-range` is SIGKILLed after it committed one symbol's
partitions (the fakes hold the other symbol's requests, so the moment is known), then
`dagster-daemon` starts against the instance. Its run monitoring must fail the run naming the dead
worker, and the coverage_gaps sensor must fetch the partitions the killed run never wrote, instead
of skipping them for ever as "being filled by an unfinished run"."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import timedelta

import psycopg
import pytest
import sqlalchemy as sa

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.clock import utcnow
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.store import shared_engine
from tests.e2e.conftest import BIN, ROOT

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SYMBOLS = ["AAPL", "MSFT"]
HELD = "MSFT"  # planned after AAPL (the planner goes symbol by symbol, in order)
HORIZON_DAYS = 12


@pytest.fixture(scope="module")
def fakes():
    with FakeProviders(FakeConfig()) as running:
        yield running


@pytest.fixture(scope="module")
def env(deployment, fakes):
    # Run monitoring polls every 60 s in the shipped dagster.yaml; the same instance, polled sooner.
    config = deployment.home / "dagster.yaml"
    text = config.read_text()
    assert "poll_interval_seconds: 60" in text
    config.write_text(text.replace("poll_interval_seconds: 60", "poll_interval_seconds: 5"))
    deployment.env.update({
        **fakes.env(),
        "BACKFILL_PROVIDERS": "polygon",  # one symbol a request: a held symbol holds only itself
        "POLYGON_RATE_LIMIT": "0",
        "BACKFILL_HTTP_BACKOFF_SECONDS": "0.05",
        **{f"BACKFILL_GAP_DAYS_{t}": str(HORIZON_DAYS) for t in ("M15", "H1", "H4", "D1")},
    })
    out = deployment.run(BIN / "backfill-dagster", "watchlist", "add", *SYMBOLS)
    assert out.returncode == 0, out.stderr
    return deployment


def m15_ledger(store_url, sessions):
    with shared_engine(store_url).connect() as conn:
        return {(s, d): (status, run_id) for s, d, status, run_id in conn.execute(sa.text(
            "SELECT symbol, session, status, run_id FROM bar_coverage WHERE timeframe = 'm15' "
            "AND session >= :lo AND session <= :hi"
        ), {"lo": sessions[0], "hi": sessions[-1]})}


def dagster_db(env) -> str:
    e = env.env
    return f"host={e['DAGSTER_PG_HOST']} port={e['DAGSTER_PG_PORT']} dbname={e['DAGSTER_PG_DB']} user={e['DAGSTER_PG_USER']}"


def run_status(env, run_id):
    with psycopg.connect(dagster_db(env)) as conn:
        return conn.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,)).fetchone()[0]


def failure_message(env, run_id):
    with psycopg.connect(dagster_db(env)) as conn:
        row = conn.execute(
            "SELECT event FROM event_logs WHERE run_id = %s AND dagster_event_type = 'PIPELINE_FAILURE' "
            "ORDER BY id DESC LIMIT 1", (run_id,)
        ).fetchone()
    return None if row is None else json.loads(row[0])["dagster_event"]["message"]


def test_a_killed_cli_run_is_failed_and_its_partitions_are_fetched_again(env, fakes):
    cal = xnys()
    today = utcnow().date()
    sessions = [d for d in cal.sessions(today - timedelta(days=HORIZON_DAYS - 3), today - timedelta(days=1))]
    assert len(sessions) >= 3, sessions
    fakes.config.held_symbols.add(HELD)
    proc = subprocess.Popen(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "backfill_dagster", "--select", "bars_m15",
         "--partition-range", f"{sessions[0].isoformat()}|{SYMBOLS[0]}...{sessions[-1].isoformat()}|{SYMBOLS[-1]}"],
        cwd=ROOT, env=env.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        def aapl_committed():
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            rows = m15_ledger(env.store_url, sessions)
            return [rows.get(("AAPL", d)) for d in sessions] if all(
                rows.get(("AAPL", d), ("",))[0] == "complete" for d in sessions) else None

        committed = env.wait_for(aapl_committed, 300, "the run to commit AAPL's partitions")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed_run = committed[0][1]
    assert not any(s == HELD for s, _ in m15_ledger(env.store_url, sessions)), "killed before MSFT was written"
    assert run_status(env, killed_run) == "STARTED"  # as SIGKILL leaves it: nothing reported its end
    fakes.config.held_symbols.clear()

    env.start_daemon()
    # Run monitoring fails the run, saying which worker is gone.
    env.wait_for(lambda: run_status(env, killed_run) == "FAILURE", 300, f"run {killed_run} to be failed")
    message = failure_message(env, killed_run)
    assert f"pid {proc.pid} on host" in message and "is gone" in message, message
    print(f"\nthe killed run's failure: {message}")
    # The gap sensor fetches what the killed run never wrote; what it wrote stays as it was.
    def filled():
        rows = m15_ledger(env.store_url, sessions)
        return rows if all(rows.get((s, d), ("",))[0] == "complete" for s in SYMBOLS for d in sessions) else None

    rows = env.wait_for(filled, 600, "the gap sensor to fill the partitions the killed run held")
    assert {rows[("MSFT", d)][1] for d in sessions}.isdisjoint({killed_run})
    assert [rows[("AAPL", d)] for d in sessions] == committed

"""Runs whose worker is killed, end to end on PostgreSQL with real processes; the fakes hold one
symbol's requests, so each worker is killed once it committed the other symbol's partitions.

- `dagster asset materialize --partition-range` is SIGKILLed, then `dagster-daemon` starts against
  the instance. Its run monitoring must fail the run naming the dead worker, and the coverage_gaps
  sensor must fetch the partitions the killed run never wrote, instead of skipping them for ever
  as "being filled by an unfinished run".
- A run the daemon launched has its worker SIGKILLed; Dagster fails it and the daemon retries it.
  The retry must not fetch again what the killed attempt committed, and still report every
  partition materialized.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

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


def pool_slots_of(env, run_id):
    with psycopg.connect(dagster_db(env)) as conn:
        return conn.execute("SELECT concurrency_key FROM concurrency_slots WHERE run_id = %s", (run_id,)).fetchall()


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
    # Its provider pool slot is given back: two killed runs would otherwise stall every fetch.
    env.wait_for(lambda: not pool_slots_of(env, killed_run), 300, f"run {killed_run}'s pool slots to be freed")
    # The gap sensor fetches what the killed run never wrote; what it wrote stays as it was.
    def filled():
        rows = m15_ledger(env.store_url, sessions)
        return rows if all(rows.get((s, d), ("",))[0] == "complete" for s in SYMBOLS for d in sessions) else None

    rows = env.wait_for(filled, 600, "the gap sensor to fill the partitions the killed run held")
    assert {rows[("MSFT", d)][1] for d in sessions}.isdisjoint({killed_run})
    assert [rows[("AAPL", d)] for d in sessions] == committed


UNFINISHED = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def unfinished_runs(env):
    with psycopg.connect(dagster_db(env)) as conn:
        return conn.execute("SELECT run_id FROM runs WHERE status = ANY(%s)", (list(UNFINISHED),)).fetchall()


def run_workers(daemon_pid: int) -> list[int]:
    """The run workers the daemon's code server started (multiprocessing spawn children in the
    daemon's session): found from the process table alone, whatever the run records."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[0] != "Z" and int(fields[3]) == daemon_pid and "spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def ledger_rows(store_url, symbol, sessions):
    with shared_engine(store_url).connect() as conn:
        return {(tf, d): (status, run_id) for tf, d, status, run_id in conn.execute(sa.text(
            "SELECT timeframe, session, status, run_id FROM bar_coverage WHERE symbol = :s "
            "AND session >= :lo AND session <= :hi"
        ), {"s": symbol, "lo": sessions[0], "hi": sessions[-1]})}


def test_a_retried_run_does_not_fetch_again_what_its_killed_attempt_committed(env, fakes):
    if "daemon" not in env.processes:
        env.start_daemon()
    # Older than every gap horizon: nothing but the runs under test fetches these sessions.
    cal = xnys()
    today = utcnow().date()
    sessions = cal.sessions(today - timedelta(days=HORIZON_DAYS + 30), today - timedelta(days=HORIZON_DAYS + 22))
    assert len(sessions) >= 3, sessions
    # The gap sensor off and its runs done: the run launched below is the daemon's only run worker.
    out = env.run(BIN / "dagster", "sensor", "stop", "-w", "workspace.yaml", "coverage_gaps")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    env.wait_for(lambda: not unfinished_runs(env), 600, "the gap sensor's runs to finish")
    fakes.config.held_symbols.add(HELD)
    box = {"dagster/asset_partition_range_start": f"{sessions[0].isoformat()}|{SYMBOLS[0]}",
           "dagster/asset_partition_range_end": f"{sessions[-1].isoformat()}|{SYMBOLS[-1]}"}
    out = env.run(BIN / "dagster", "job", "launch", "-w", "workspace.yaml", "-j", "all_bars", "--tags", json.dumps(box))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    # The first step the worker runs fetches AAPL, then waits on MSFT: kill it there.
    def aapl_committed():
        rows = ledger_rows(env.store_url, "AAPL", sessions)
        for timeframe in ("m15", "d1"):
            got = [rows.get((timeframe, d), ("", ""))[0] for d in sessions]
            if got == ["complete"] * len(sessions):
                return timeframe, rows[(timeframe, sessions[0])][1]
        return None

    timeframe, first_run = env.wait_for(aapl_committed, 300, "the launched run to commit AAPL's partitions")
    workers = run_workers(env.processes["daemon"].pid)
    assert len(workers) == 1, workers
    killed_at = time.time()
    os.kill(workers[0], signal.SIGKILL)
    fakes.config.held_symbols.clear()

    def retried():
        with psycopg.connect(dagster_db(env)) as conn:
            return conn.execute(
                "SELECT r.run_id, r.status FROM runs r JOIN run_tags t ON t.run_id = r.run_id "
                "WHERE t.key = 'dagster/root_run_id' AND t.value = %s AND r.status IN ('SUCCESS', 'FAILURE')",
                (first_run,),
            ).fetchone()

    retry, status = env.wait_for(retried, 600, f"a retry of run {first_run} to finish")
    assert status == "SUCCESS"
    assert run_status(env, first_run) == "FAILURE"
    env.wait_for(lambda: not pool_slots_of(env, first_run), 300, f"run {first_run}'s pool slots to be freed")
    # Not one request for what the killed attempt had committed ...
    kind = {"m15": "/range/15/minute/", "d1": "/range/1/day/"}[timeframe]
    again = [e.path for e in fakes.log if e.at >= killed_at and "/ticker/AAPL/" in e.path and kind in e.path]
    assert again == [], f"the retry fetched AAPL {timeframe} again: {again}"
    with psycopg.connect(dagster_db(env)) as conn:
        said = [json.loads(e)["user_message"] for (e,) in conn.execute(
            "SELECT event FROM event_logs WHERE run_id = %s AND event LIKE %s", (retry, "%by an earlier attempt%")
        )]
    assert f"{len(sessions)} partition(s) of {timeframe} were committed complete by an earlier attempt" in " ".join(said)
    print(f"\nretry {retry} of killed run {first_run}: {said}")
    # ... and every partition of the box is materialized in Dagster, those it carried over too.
    with psycopg.connect(dagster_db(env)) as conn:
        materialized = set(conn.execute(
            "SELECT asset_key, partition FROM event_logs WHERE run_id = %s "
            "AND dagster_event_type = 'ASSET_MATERIALIZATION'", (retry,)
        ).fetchall())
    want = {(json.dumps([f"bars_{tf}"]), f"{d.isoformat()}|{s}")
            for tf in ("m15", "h1", "h4", "d1") for s in SYMBOLS for d in sessions}
    assert want - materialized == set()
    rows = {s: ledger_rows(env.store_url, s, sessions) for s in SYMBOLS}
    assert all(rows[s][(tf, d)][0] == "complete" for s in SYMBOLS for tf in ("m15", "h1", "h4", "d1") for d in sessions)
    assert all(rows["AAPL"][(timeframe, d)][1] == first_run for d in sessions)  # kept, not rewritten

"""Reliability with real processes on PostgreSQL: concurrent overlapping runs, and a run killed with
SIGKILL in the middle of writing. Figures (timings) are printed for the README."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psycopg
import pytest
import sqlalchemy as sa

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.synthetic import synthetic_session_m15
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.store import shared_engine
from tests.conftest import PG_ADMIN_URL
from tests.deploy import BIN, ROOT

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SYMBOLS = ["AAPL", "MSFT", "NVDA", "AMD"]
ASSETS = "bars_m15,bars_h1,bars_h4,bars_d1"
PER_SESSION = {"m15": 26, "h1": 7, "h4": 2, "d1": 1}


@pytest.fixture(scope="module")
def watchlist(deployment):
    out = deployment.run(BIN / "backfill-dagster", "watchlist", "add", *SYMBOLS)
    assert out.returncode == 0, out.stderr
    return deployment


def materialize(deployment, first: str, last: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "backfill_dagster", "--select", ASSETS,
         "--partition-range", f"{first}...{last}"],
        cwd=ROOT, env=deployment.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def per_partition(store_url, timeframe, first, last):
    with shared_engine(store_url).connect() as conn:
        bars = dict(((s, d), n) for s, d, n in conn.execute(sa.text(
            "SELECT symbol, (ts AT TIME ZONE 'America/New_York')::date, count(*) FROM ohlc_bars "
            "WHERE timeframe = :tf AND ts >= :lo AND ts < :hi GROUP BY 1, 2"
        ), {"tf": timeframe, "lo": first, "hi": last}))
        ledger = {(s, d): (status, n) for s, d, status, n in conn.execute(sa.text(
            "SELECT symbol, session, status, bars FROM bar_coverage WHERE timeframe = :tf "
            "AND session >= :lo AND session < :hi"
        ), {"tf": timeframe, "lo": first, "hi": last})}
    return bars, ledger


def test_four_concurrent_overlapping_runs_leave_exactly_one_copy(watchlist):
    boxes = [
        ("2024-10-01|AAPL", "2024-10-25|NVDA"),
        ("2024-10-07|MSFT", "2024-10-31|AMD"),
        ("2024-10-01|AAPL", "2024-10-31|AMD"),
        ("2024-10-14|AAPL", "2024-10-18|AMD"),
    ]
    start = time.monotonic()
    procs = [materialize(watchlist, *box) for box in boxes]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    elapsed = time.monotonic() - start
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-4000:]
        assert "deadlock" not in out.lower()

    sessions = xnys().sessions("2024-10-01", "2024-10-31")
    for timeframe, n in PER_SESSION.items():
        bars, ledger = per_partition(watchlist.store_url, timeframe, "2024-10-01", "2024-11-01")
        want = {(s, d): n for s in SYMBOLS for d in sessions}
        assert bars == want, timeframe  # every partition once, none lost, none doubled
        assert {k: v for k, v in ledger.items()} == {k: ("complete", n) for k in want}, timeframe

    # identical rows to what one clean fetch produces (values, not just counts)
    with shared_engine(watchlist.store_url).connect() as conn:
        stored = conn.execute(sa.text(
            "SELECT ts, open, high, low, close, volume FROM ohlc_bars WHERE symbol = 'MSFT' "
            "AND timeframe = 'm15' AND ts >= '2024-10-15' AND ts < '2024-10-16' ORDER BY ts"
        )).all()
    clean = synthetic_session_m15("MSFT", sessions[10], xnys())
    lo, hi = xnys().window(sessions[10])
    clean = clean[(clean.ts >= lo) & (clean.ts < hi)]
    assert [tuple(r)[1:] for r in stored] == list(zip(clean.open, clean.high, clean.low, clean.close, clean.volume))
    sizes = [len(xnys().sessions(a[:10], b[:10])) for a, b in boxes]
    print(f"\n4 concurrent overlapping range runs of all four assets (sessions per box {sizes}): "
          f"{elapsed:.1f} s, no deadlock, every partition exactly once")


def test_a_run_killed_mid_write_leaves_old_or_new_complete_data(watchlist):
    first, last = "2024-01-02", "2024-12-31"
    box = ["--select", "bars_m15", "--partition-range", f"{first}|AAPL...{last}|AMD"]
    old = watchlist.run(BIN / "dagster", "asset", "materialize", "-m", "backfill_dagster", *box, timeout=900)
    assert old.returncode == 0, old.stdout[-3000:] + old.stderr[-3000:]
    sessions = xnys().sessions(first, last)
    everything = {(s, d) for s in SYMBOLS for d in sessions}
    with shared_engine(watchlist.store_url).connect() as conn:
        old_runs = set(conn.execute(sa.text("SELECT DISTINCT run_id FROM bar_coverage WHERE timeframe = 'm15'")).scalars())

    # Run it again and SIGKILL it while its transaction is writing ohlc_bars (seen in pg_stat_activity).
    proc = subprocess.Popen(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "backfill_dagster", *box],
        cwd=ROOT, env=watchlist.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    store_db = watchlist.store_url.rsplit("/", 1)[1]
    caught = None
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        deadline = time.monotonic() + 600
        while caught is None:
            assert proc.poll() is None, "the run finished before it could be killed mid-write"
            assert time.monotonic() < deadline
            caught = admin.execute(
                "SELECT left(query, 60) FROM pg_stat_activity WHERE datname = %s "
                "AND application_name = 'backfill_dagster' AND xact_start IS NOT NULL "
                "AND state IN ('active', 'idle in transaction') "
                # a write to the bars, not a read (a check reading them after the commit is no kill mid-write)
                r"AND query ~* '^\s*(DELETE FROM|COPY|INSERT INTO) ohlc_bars'",
                (store_db,),
            ).fetchone()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    grid = dict(zip(sessions, (int(n) for n in xnys().expected_counts(sessions, Timeframe.M15))))
    assert set(grid.values()) == {26, 14}  # early closes (2024-07-03, 11-29, 12-24) included
    bars, ledger = per_partition(watchlist.store_url, "m15", first, "2025-01-01")
    assert bars == {(s, d): grid[d] for s, d in everything}  # nothing half-deleted, nothing doubled
    assert ledger == {(s, d): ("complete", grid[d]) for s, d in everything}
    # every partition holds one run's complete data (above): the old run's, or the new run's where a
    # transaction of it committed before the one that was killed; the killed one left nothing
    with shared_engine(watchlist.store_url).connect() as conn:
        per_run = dict(conn.execute(sa.text(
            "SELECT run_id, count(*) FROM bar_coverage WHERE timeframe = 'm15' GROUP BY run_id"
        )).all())
    assert len(set(per_run) - old_runs) <= 1
    kept = sum(n for run, n in per_run.items() if run in old_runs)
    assert kept > 0, f"the killed transaction's partitions should still hold the old run's data: {per_run}"
    print(f"\nkilled during '{caught[0]}...': all {len(everything)} partitions hold complete data, "
          f"{kept} of them still the old run's")

"""Event ids become visible in the order they were taken (instance/event_log.py, "ids in commit
order"): a writer whose ids are lower than another's is never committed after it, so every reader
that remembers "the events up to id N" — the partition status the asset pages show, Dagster's
sensors and daemon cursors — never skips an event that committed late.

Two real writers (a run worker in its own process, and one in this process whose transaction is
held open after its ids are taken, as the write-behind group holds them until it commits), and the
asset pages' reader (an instance of its own, as the webserver's) reading between the commits; a
thread's transaction that must not wait for writes queued after it; two concurrent range runs while
the asset pages are read; and the embedded SQLite instance, which keeps ids in order by itself.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.loader import LoadingContextForTest

from backfill_dagster.instance.cached_status import is_current
from tests.instance.test_event_log import _event, dagster_pg  # noqa: F401  (fixture)

pytestmark = pytest.mark.postgres

ASSET = dg.AssetKey("bars_m15")
PARTITIONS = dg.StaticPartitionsDefinition(["P1", "P2", "P3", "P4"])
WAIT_S = 60  # generous: the machine may be loaded; nothing here is timed


def _materializations(run_id: str, partitions) -> list:
    return [_event(run_id, "materialized", ASSET.to_user_string(), p) for p in partitions]


def _run_worker(instance_ref, run_id: str, partitions) -> None:
    """A run worker storing its partitions' materializations (one batch, Dagster's handover) and exiting."""
    instance = dg.DagsterInstance.from_ref(instance_ref)
    instance.event_log_storage.store_event_batch(_materializations(run_id, partitions))
    instance.dispose()  # drains what was written behind


def _ui_status(instance) -> set[str]:
    """The materialized partitions the asset pages show: Dagster's `AssetStatusCacheValue` load,
    which asks the event log (the project's `get_asset_status_cache_values`) in a request's context."""
    [value] = instance.event_log_storage.get_asset_status_cache_values(
        [(ASSET, PARTITIONS)], LoadingContextForTest(instance)
    )
    return set() if value is None else set(value.deserialize_materialized_partition_subsets(PARTITIONS).get_partition_keys())


def _sensor_status(instance) -> set[str]:
    """What the `partition_status_cache` sensor and Dagster's public API read."""
    statuses = instance.get_status_by_partition(ASSET, PARTITIONS.get_partition_keys(), PARTITIONS)
    return {key for key, status in statuses.items() if status is not None and status.value == "MATERIALIZED"}


class HeldOpen:
    """Holds a storage's write-behind transaction open after its event rows are in (their ids
    taken) and before the asset row is updated: the window in which, on a group commit, a later
    writer could commit first."""

    def __init__(self, storage):
        self.inside, self.release = threading.Event(), threading.Event()
        real = storage._store_asset_event

        def paused(conn, event, event_id):
            self.inside.set()
            assert self.release.wait(WAIT_S), "never released"
            return real(conn, event, event_id)

        storage._store_asset_event = paused


def _committed_or_waiting(admin_url: str, worker) -> None:
    """Until the other worker has exited (its events committed) or waits for a lock in PostgreSQL."""
    engine = sa.create_engine(admin_url)
    deadline = time.monotonic() + WAIT_S
    try:
        while time.monotonic() < deadline:
            if not worker.is_alive():
                return
            with engine.connect() as conn:
                waiting = conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )).scalar_one()
            if waiting:
                return
            time.sleep(0.05)
        raise AssertionError("the other run worker neither committed nor waited")
    finally:
        engine.dispose()


def _url(instance) -> str:
    return instance.event_log_storage.postgres_url


def _end_sessions(url: str) -> None:
    """Terminate every other session of the database (a test that found a writer stuck)."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ))
    finally:
        engine.dispose()


def test_a_partition_whose_event_commits_after_a_later_ones_is_still_shown(dagster_pg):
    ui = dagster_pg("bulk")  # the webserver's instance
    late = dg.DagsterInstance.from_ref(ui.get_ref())  # a run worker whose commit is held back
    held = HeldOpen(late.event_log_storage)
    try:
        late.event_log_storage.store_event_batch(_materializations(f"late-{uuid.uuid4().hex[:6]}", ["P1", "P2"]))
        assert held.inside.wait(WAIT_S)  # P1 and P2's ids are taken, not committed

        worker = multiprocessing.get_context("spawn").Process(
            target=_run_worker, args=(ui.get_ref(), f"early-{uuid.uuid4().hex[:6]}", ["P3", "P4"])
        )
        worker.start()
        _committed_or_waiting(_url(ui), worker)
        between = _ui_status(ui)  # a page opened between the two commits
        assert between <= {"P3", "P4"}

        held.release.set()
        late.event_log_storage._written_behind.finish()
        worker.join(WAIT_S)
        assert worker.exitcode == 0
    finally:
        held.release.set()
        late.dispose()

    assert _ui_status(ui) == {"P1", "P2", "P3", "P4"}
    assert _sensor_status(ui) == {"P1", "P2", "P3", "P4"}
    assert is_current(ui, ASSET, PARTITIONS)


def test_a_transaction_storing_events_never_waits_for_writes_queued_after_it_began(dagster_pg):
    """The webserver and the daemon store events from many threads: one thread's transaction holds
    the commit-order lock that the writer thread needs for what another thread queued meanwhile, so
    Dagster's statements inside that transaction must not wait for it (they would for ever)."""
    instance = dagster_pg("bulk")
    storage = instance.event_log_storage
    outcome: list = []

    def store_inside_a_transaction() -> None:
        try:
            with storage._one_transaction():
                other = threading.Thread(target=storage.store_event, args=(_materializations("queued", ["P2"])[0],))
                other.start()
                other.join(WAIT_S)
                storage._store_event_now(_materializations("inside", ["P1"])[0])
            outcome.append("committed")
        except Exception as exc:  # the database dropped under a stuck thread: reported below
            outcome.append(exc)

    inside = threading.Thread(target=store_inside_a_transaction, daemon=True)
    inside.start()
    inside.join(WAIT_S)
    stuck = inside.is_alive()
    if stuck:  # end the stuck transaction so that the instance can be disposed of
        _end_sessions(_url(instance))
        inside.join(WAIT_S)
    assert not stuck, "the transaction waited for a write queued after it began"
    assert outcome == ["committed"]
    storage._written_behind.finish()
    assert _sensor_status(instance) == {"P1", "P2"}


def _range_run(instance_ref, data_dir: str, store_url: str, symbol: str) -> None:
    """A run worker: the all-bars job over one symbol's November 2024 sessions, on the demo provider."""
    from backfill_dagster.definitions import build_definitions
    from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
    from backfill_dagster.orchestration.partitions import range_tags
    from backfill_dagster.settings import Settings

    defs = build_definitions(Settings(data_dir=Path(data_dir), database_url=store_url))
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        result = defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
            instance=instance, tags=range_tags((symbol, NOVEMBER[0]), (symbol, NOVEMBER[-1]))
        )
        assert result.success


NOVEMBER = (date(2024, 11, 1), date(2024, 11, 29))
BAR_ASSETS = ("bars_m15", "bars_h1", "bars_h4", "bars_d1")


def test_concurrent_runs_then_the_asset_pages_show_every_partition(dagster_pg, tmp_path, pg_url, calendar):
    """Two run workers materialising all four assets at once while the asset pages are read again
    and again (each read moves the status cache's cursor): afterwards every asset shows every
    partition both runs materialized, as a read of all its events does, with none in progress."""
    from backfill_dagster.definitions import build_definitions
    from backfill_dagster.settings import Settings
    from tests.orchestration.conftest import add_symbols

    ui = dagster_pg("bulk")
    defs = build_definitions(Settings(data_dir=tmp_path, database_url=pg_url))
    add_symbols(ui, pg_url, ["AAPL", "MSFT"])
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_range_run, args=(ui.get_ref(), str(tmp_path), pg_url, symbol))
        for symbol in ("AAPL", "MSFT")
    ]
    for worker in workers:
        worker.start()
    wanted = [(dg.AssetKey(a), defs.resolve_assets_def(a).partitions_def) for a in BAR_ASSETS]
    reads = 0
    deadline = time.monotonic() + 10 * WAIT_S
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        ui.event_log_storage.get_asset_status_cache_values(wanted, LoadingContextForTest(ui))
        reads += 1
    for worker in workers:
        worker.join(WAIT_S)
        assert worker.exitcode == 0
    assert reads > 1

    sessions = calendar.sessions(NOVEMBER[0].isoformat(), NOVEMBER[1].isoformat())
    everything = {f"{d.isoformat()}|{s}" for s in ("AAPL", "MSFT") for d in sessions}
    values = ui.event_log_storage.get_asset_status_cache_values(wanted, LoadingContextForTest(ui))
    for (key, partitions_def), value in zip(wanted, values, strict=True):
        shown = set(value.deserialize_materialized_partition_subsets(partitions_def).get_partition_keys())
        assert shown == set(ui.get_materialized_partitions(key)) == everything, key
        assert not value.deserialize_in_progress_partition_subsets(partitions_def).get_partition_keys(), key
        assert is_current(ui, key, partitions_def), key


def test_on_sqlite_a_second_writer_waits_until_the_first_commits(tmp_path, monkeypatch):
    """The embedded instance (Dagster's SQLite storage) needs no lock of ours: asset events are
    inserted into one index database inside a write transaction, and SQLite lets one writer at a
    time, so no id is taken while a lower one is uncommitted."""
    from dagster._core.storage.event_log.sqlite import sqlite_event_log

    home = tmp_path / "dagster_home"
    home.mkdir()
    ui = dg.DagsterInstance.local_temp(str(home))
    late = dg.DagsterInstance.from_ref(ui.get_ref())
    early = dg.DagsterInstance.from_ref(ui.get_ref())
    held = HeldOpen(late.event_log_storage)
    writer = threading.Thread(target=late.event_log_storage.store_event,
                              args=(_materializations("late", ["P1"])[0],), daemon=True)
    try:
        writer.start()
        assert held.inside.wait(WAIT_S)  # P1's id taken, its transaction open
        monkeypatch.setattr(sqlite_event_log, "SQLITE_BUSY_TIMEOUT_SECONDS", 0.5)
        with pytest.raises(sa.exc.OperationalError, match="database is locked"):
            early.event_log_storage.store_event(_materializations("early", ["P3"])[0])
        assert _ui_status(ui) == set()  # a page opened meanwhile
    finally:
        held.release.set()
        writer.join(WAIT_S)
    early.event_log_storage.store_event(_materializations("early", ["P3"])[0])
    assert _ui_status(ui) == _sensor_status(ui) == {"P1", "P3"}
    for instance in (early, late, ui):
        instance.dispose()

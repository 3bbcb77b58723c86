"""The bulk PostgreSQL event log (instance/event_log.py): what Dagster reads back from it is
what it reads back from its stock storage, and its pooled connections are safe across a fork."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import threading
import time
import uuid
import weakref
from concurrent.futures import Future
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from backfill_dagster.definitions import build_definitions
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage

from backfill_dagster.instance import event_json, event_log
from backfill_dagster.instance.event_log import POOL_SIZE, BulkPostgresEventLogStorage
from backfill_dagster.instance.run_storage import PooledPostgresRunStorage
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.providers import registry
from backfill_dagster.settings import Settings
from tests.conftest import _admin, _pg_url, no_commit_wait
from tests.deploy import storage_yaml
from tests.orchestration.conftest import add_symbols
from tests.orchestration.test_assets import _flaky_factory, failed, materialized
from tests.orchestration.test_checks import CHECKS

pytestmark = pytest.mark.postgres

@pytest.fixture
def dagster_pg(tmp_path, pg_template):
    """Makes Dagster instances on fresh PostgreSQL databases, with the stock or the bulk event log."""
    made: list[tuple[dg.DagsterInstance, str]] = []

    def make(kind: str) -> dg.DagsterInstance:
        name = f"bfd_dagster_{uuid.uuid4().hex[:10]}"
        with _admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            no_commit_wait(conn, name)
        home = tmp_path / f"home_{kind}_{len(made)}"
        home.mkdir()
        url = _pg_url(name).replace("postgresql://", "postgresql+psycopg2://")
        (home / "dagster.yaml").write_text(storage_yaml(url, kind, home) + "telemetry:\n  enabled: false\n")
        instance = dg.DagsterInstance.from_config(str(home))
        made.append((instance, name))
        return instance

    yield make
    for instance, name in made:
        instance.dispose()
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _two_range_runs(instance, tmp_path: Path, store_url: str, monkeypatch):
    """All four assets and their checks over 2 symbols x 4 sessions, where MSFT on 11-26 fails to
    fetch (so the steps after m15 never run); then AAPL alone again, which succeeds."""
    monkeypatch.setitem(registry.FACTORIES, "flaky", _flaky_factory(date(2024, 11, 26)))
    defs = build_definitions(Settings(data_dir=tmp_path, database_url=store_url, providers=("flaky",)))
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    job = defs.resolve_job_def(ALL_BARS_JOB)
    first = job.execute_in_process(
        instance=instance, tags=range_tags(("AAPL", date(2024, 11, 22)), ("MSFT", date(2024, 11, 27))),
        raise_on_error=False,
    )
    second = job.execute_in_process(
        instance=instance, tags=range_tags(("AAPL", date(2024, 11, 22)), ("AAPL", date(2024, 11, 27)))
    )
    return defs, first, second


def _what_dagster_reads_back(instance, defs, first_run, last_run):
    """What the UI and the sensors read about the runs, with the runs' own ids taken out."""
    seen = {}
    for asset in ("bars_m15", "bars_h1", "bars_h4", "bars_d1"):
        key = dg.AssetKey(asset)
        seen[asset, "materialized"] = materialized(instance, asset)
        seen[asset, "failed"] = failed(instance, asset, defs.resolve_assets_def(asset).partitions_def)
        planned = instance.get_records_for_run(first_run, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED).records
        seen[asset, "planned"] = sorted(
            r.partition_key for r in planned if r.event_log_entry.dagster_event.asset_key == key
        )
        record = instance.get_asset_records([key])[0].asset_entry
        seen[asset, "last run"] = record.last_run_id == last_run
        latest = instance.get_latest_planned_materialization_info(key)
        seen[asset, "latest planned"] = latest is not None and latest.run_id == last_run
    for check in CHECKS:
        infos = instance.event_log_storage.get_asset_check_partition_info([check])
        seen[check, "status"] = {i.partition_key: i.latest_execution_status for i in infos}
        seen[check, "current"] = {i.partition_key: i.is_current for i in infos}
        history = instance.event_log_storage.get_asset_check_execution_history(check, limit=100)
        seen[check, "executions"] = sorted((r.partition, r.status.value, r.event.dagster_event_type.value) for r in history)
    return seen


def test_the_bulk_event_log_reads_back_exactly_what_the_stock_one_does(dagster_pg, tmp_path, sqlite_url, monkeypatch):
    """Stock storage gets Dagster's per-partition planned events; the bulk one asks for the single
    subset event per asset and expands it: both must read back the same failed, materialized and
    planned partitions (before the expansion, the subset event alone lost the failed partition)."""
    readings, planned_events, orders = {}, {}, {}
    for kind in ("stock", "bulk"):
        instance = dagster_pg(kind)
        storage = instance.event_log_storage
        assert isinstance(storage, BulkPostgresEventLogStorage) == (kind == "bulk")
        assert storage.supports_partition_subset_in_asset_materialization_planned_events == (kind == "bulk")
        store_url = f"sqlite:///{tmp_path / f'{kind}.sqlite'}"
        defs, first, second = _two_range_runs(instance, tmp_path / kind, store_url, monkeypatch)
        assert not first.success and second.success
        readings[kind] = _what_dagster_reads_back(instance, defs, first.run_id, second.run_id)
        planned_events[kind] = _planned_events(instance, first.run_id)
        orders[kind] = [_stored_order(instance, run) for run in (first, second)]

    assert readings["bulk"] == readings["stock"]
    # Every event stored in the order the stock storage stores it, though the bulk one writes
    # batches behind the run
    assert orders["bulk"] == orders["stock"]
    assert sum(kind == "ASSET_MATERIALIZATION" for kind, _ in orders["bulk"][1]) == 4 * 4  # 4 assets x 4 sessions
    assert orders["bulk"][1][-1] == ("PIPELINE_SUCCESS", None) and orders["bulk"][0][-1] == ("PIPELINE_FAILURE", None)
    # Row for row the same planned events, though the bulk run planned with one event per asset.
    assert planned_events["bulk"] == planned_events["stock"]
    # and what both read is the truth about the run, not two empty answers
    seen = readings["bulk"]
    everything = {f"{d}|{s}" for s in ("AAPL", "MSFT") for d in ("2024-11-22", "2024-11-25", "2024-11-26", "2024-11-27")}
    assert seen["bars_m15", "materialized"] == everything - {"2024-11-26|MSFT"}
    assert seen["bars_m15", "failed"] == {"2024-11-26|MSFT"}
    assert all(seen[a, "planned"] == sorted(everything) for a in ("bars_m15", "bars_h1", "bars_h4", "bars_d1"))
    assert all(seen[a, "last run"] and seen[a, "latest planned"] for a in ("bars_m15", "bars_h1", "bars_d1"))
    Status = AssetCheckExecutionRecordStatus
    for check in CHECKS:  # one row per run: the first run's was planned and never ran, the second passed
        assert seen[check, "status"] == {None: Status.SUCCEEDED}, check
        assert seen[check, "executions"] == [
            (None, "PLANNED", "ASSET_CHECK_EVALUATION_PLANNED"), (None, "SUCCEEDED", "ASSET_CHECK_EVALUATION"),
        ], check


def _stored_order(instance, result):
    """A run's Dagster events as stored, in id order: (event type, partition)."""
    return [(e.dagster_event_type.value, e.dagster_event.partition)
            for e in instance.all_logs(result.run_id) if e.is_dagster_event]


def _planned_events(instance, run_id):
    """Every planned-materialization event of a run as stored: (asset, partition, event minus time)."""
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED).records
    out = []
    for r in records:
        entry = r.event_log_entry
        out.append((entry.dagster_event.asset_key.to_user_string(), r.partition_key,
                    entry._replace(timestamp=0.0, run_id="")))
    return out


def test_an_unfinished_runs_partitions_are_in_progress_on_both(dagster_pg, tmp_path):
    """A run created but not yet executed: its planned partitions show as in progress (the asset
    status cache reads the per-partition planned rows), with either storage."""
    seen = {}
    for kind in ("stock", "bulk"):
        instance = dagster_pg(kind)
        store_url = f"sqlite:///{tmp_path / f'{kind}.sqlite'}"
        defs = build_definitions(Settings(data_dir=tmp_path / kind, database_url=store_url))
        add_symbols(instance, store_url, ["AAPL", "MSFT"])
        job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_m15")})
        instance.create_run_for_job(
            job, tags=range_tags(("AAPL", date(2024, 11, 22)), ("MSFT", date(2024, 11, 26))),
        )
        partitions_def = defs.resolve_assets_def("bars_m15").partitions_def
        seen[kind] = in_progress(instance, "bars_m15", partitions_def)
    assert seen["bulk"] == seen["stock"] == {f"{d}|{s}" for s in ("AAPL", "MSFT") for d in ("2024-11-22", "2024-11-25", "2024-11-26")}


def _event(run_id: str, kind: str, asset: str, partition: str) -> EventLogEntry:
    """A planned or materialization event of one partition, as a run stores it."""
    from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent, StepMaterializationData

    key = dg.AssetKey(asset)
    if kind == "planned":
        event = DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value, "all_bars",
                             event_specific_data=AssetMaterializationPlannedData(key, partition=partition))
    else:
        event = DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION.value, "all_bars",
                             event_specific_data=StepMaterializationData(dg.AssetMaterialization(key, partition=partition)))
    return EventLogEntry(error_info=None, level="DEBUG", user_message="", run_id=run_id,
                         timestamp=time.time(), dagster_event=event)


def test_planned_partitions_without_a_materialization_are_dagsters_answer(dagster_pg):
    """The partitions whose latest planned event has no later materialization (what the status cache
    reads as in progress or failed), found in one query: the same mapping as Dagster's two queries
    and comparison in Python, for every cursor, with other assets' events and an asset's wipe."""
    instance = dagster_pg("bulk")
    storage = instance.event_log_storage
    dagsters = PostgresEventLogStorage.get_latest_asset_partition_materialization_attempts_without_materializations
    history = [
        ("r1", "planned", "bars_m15", "A"), ("r1", "materialized", "bars_m15", "A"),  # done
        ("r1", "planned", "bars_m15", "B"),  # planned only: r1's
        ("r1", "planned", "bars_m15", "C"), ("r1", "materialized", "bars_m15", "C"),
        ("r2", "planned", "bars_m15", "C"),  # planned again after its materialization: r2's
        ("r1", "materialized", "bars_m15", "D"),  # materialized with no planned event
        ("r1", "planned", "bars_m15", "E"), ("r2", "planned", "bars_m15", "E"),  # the latest plan: r2's
        ("r2", "planned", "bars_h1", "B"),  # another asset
        ("r3", "materialized", "bars_m15", "B"),  # B's latest plan then materialized, by another run
        ("r3", "planned", "bars_m15", "F"),
    ]
    ids = []
    for run_id, kind, asset, partition in history:
        storage.store_event(_event(run_id, kind, asset, partition))
        ids.append(storage.get_maximum_record_id())
    key = dg.AssetKey("bars_m15")
    want_all = {"C": ("r2", ids[5]), "E": ("r2", ids[8]), "F": ("r3", ids[11])}
    assert dagsters(storage, key) == want_all
    for after in (None, 0, *ids):
        assert storage.get_latest_asset_partition_materialization_attempts_without_materializations(
            key, after_storage_id=after) == dagsters(storage, key, after_storage_id=after), after
    assert storage.get_latest_asset_partition_materialization_attempts_without_materializations(
        dg.AssetKey("bars_h1")) == {"B": ("r2", ids[9])}

    time.sleep(0.01)
    instance.wipe_assets([key])  # what was planned before the wipe no longer counts
    time.sleep(0.01)
    storage.store_event(_event("r4", "planned", "bars_m15", "G"))
    after_wipe = storage.get_latest_asset_partition_materialization_attempts_without_materializations(key)
    assert after_wipe == dagsters(storage, key) == {"G": ("r4", storage.get_maximum_record_id())}


def in_progress(instance, asset, partitions_def):
    from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

    value = get_and_update_asset_status_cache_value(instance, dg.AssetKey(asset), partitions_def)
    return set(value.deserialize_in_progress_partition_subsets(partitions_def).get_partition_keys())


def test_pooled_connections_serve_a_run_and_is_released_on_dispose(dagster_pg, tmp_path, sqlite_url):
    instance = dagster_pg("bulk")
    storage = instance.event_log_storage
    connects = []
    sa.event.listen(storage._engine, "connect", lambda *_: connects.append(1))
    defs = build_definitions(Settings(data_dir=tmp_path, database_url=sqlite_url))
    add_symbols(instance, sqlite_url, ["AAPL"])
    result = defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
        instance=instance, tags=range_tags(("AAPL", date(2024, 11, 18)), ("AAPL", date(2024, 11, 22)))
    )
    assert result.success
    # dozens of events, one thread: the connections Dagster nests at most, kept for the whole run
    # (the stock storage opens one per statement)
    assert len(instance.all_logs(result.run_id)) > 50
    assert 1 <= len(connects) <= POOL_SIZE and storage._engine.pool.checkedin() == len(connects)
    storage.dispose()
    assert storage._engine.pool.checkedin() == 0 and storage._engine.pool.checkedout() == 0


def _child_reads(storage: BulkPostgresEventLogStorage, run_id: str, queue) -> None:
    events = len(storage.get_logs_for_run(run_id))
    with storage._engine.connect() as conn:
        queue.put((events, conn.execute(sa.text("select pg_backend_pid()")).scalar_one()))


def test_a_forked_child_never_uses_the_parents_connection(dagster_pg, tmp_path, sqlite_url):
    instance = dagster_pg("bulk")
    storage = instance.event_log_storage
    defs = build_definitions(Settings(data_dir=tmp_path, database_url=sqlite_url))
    add_symbols(instance, sqlite_url, ["AAPL"])
    run_id = defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
        instance=instance, partition_key="2024-11-18|AAPL"
    ).run_id
    parent_backends = _pooled_backends(storage._engine)
    expected = len(storage.get_logs_for_run(run_id))

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_reads, args=(storage, run_id, queue))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    events, child_backend = queue.get(timeout=5)
    assert events == expected and child_backend not in parent_backends  # the child opened its own
    # Had the child used (and on exit closed) an inherited socket, that session would be gone.
    assert _pooled_backends(storage._engine) == parent_backends
    assert len(storage.get_logs_for_run(run_id)) == expected


def test_a_child_process_that_exits_with_events_queued_stores_them(dagster_pg, monkeypatch):
    """A child started by multiprocessing ends with os._exit (fork, forkserver): what it queued
    behind is still written before it goes."""
    instance = dagster_pg("bulk")
    run = instance.create_run_for_job(_trivial_job)
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_child_reports, args=(instance.get_ref(), run.run_id))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    messages = [e.dagster_event.message for e in instance.all_logs(run.run_id) if e.dagster_event]
    assert messages.count("queued by a child") == 20


def _child_reports(instance_ref, run_id):
    import time

    instance = dg.DagsterInstance.from_ref(instance_ref)
    run = instance.get_run_by_id(run_id)
    store_now = BulkPostgresEventLogStorage._store_event_now

    def slow(self, event):  # the writer still busy when the child's work is done
        time.sleep(0.05)
        store_now(self, event)

    BulkPostgresEventLogStorage._store_event_now = slow
    for _ in range(20):
        instance.report_engine_event("queued by a child", run)


def _pooled_backends(engine: sa.engine.Engine) -> set[int]:
    """The server processes behind every connection in the pool, all checked out at once."""
    held = [engine.connect() for _ in range(engine.pool.checkedin())]
    try:
        return {conn.execute(sa.text("select pg_backend_pid()")).scalar_one() for conn in held}
    finally:
        for conn in held:
            conn.close()


def test_the_run_storage_keeps_its_connections_and_its_schema_check(dagster_pg, tmp_path, sqlite_url, monkeypatch):
    instance = dagster_pg("bulk")
    runs = instance.run_storage
    assert isinstance(runs, PooledPostgresRunStorage)
    connects, inspections = [], []
    sa.event.listen(runs._engine, "connect", lambda *_: connects.append(1))
    inspect_columns = PostgresRunStorage.has_run_stats_index_cols
    monkeypatch.setattr(PostgresRunStorage, "has_run_stats_index_cols",
                        lambda self: inspections.append(1) or inspect_columns(self))
    defs = build_definitions(Settings(data_dir=tmp_path, database_url=sqlite_url))
    add_symbols(instance, sqlite_url, ["AAPL"])
    for day in (18, 19):
        assert defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
            instance=instance, partition_key=f"2024-11-{day}|AAPL"
        ).success
    # two runs, each recording several status changes: the columns are inspected at most once (the
    # instance may have already), and the connections are the pool's (dagster-postgres opens one
    # per statement, dozens here)
    assert len(inspections) <= 1, inspections
    assert len(connects) <= POOL_SIZE, connects
    assert instance.get_runs_count() == 2
    # each run names its worker, this process, as it starts (the run launcher's health check reads it)
    from backfill_dagster.instance.run_worker import this_worker

    assert all({k: r.tags.get(k) for k in this_worker()} == this_worker() for r in instance.get_runs())
    runs.dispose()
    assert runs._engine.pool.checkedin() == 0


def test_a_connection_dropped_while_idle_is_replaced_not_used(dagster_pg, monkeypatch):
    instance = dagster_pg("bulk")
    for storage in (instance.event_log_storage, instance.run_storage):
        with storage._engine.connect() as conn:  # back in the pool afterwards
            backend = conn.execute(sa.text("select pg_backend_pid()")).scalar_one()
        with _admin() as admin:
            admin.execute(f"select pg_terminate_backend({backend})")
        monkeypatch.setattr(event_log, "PING_IDLE_AFTER_S", -1.0)  # it has been idle "long enough"
        with storage._engine.connect() as conn:
            assert conn.execute(sa.text("select pg_backend_pid()")).scalar_one() != backend
        monkeypatch.setattr(event_log, "PING_IDLE_AFTER_S", 10.0)


def test_materializations_are_stored_with_dagsters_own_rows_byte_for_byte(dagster_pg, tmp_path, sqlite_url, monkeypatch):
    """The rows of a batch of materializations (event_json shares their serialization) are exactly
    `_event_to_row`'s, for a range run's events and for events of differing shapes."""
    instance = dagster_pg("bulk")
    storage = instance.event_log_storage
    batches = []
    store = BulkPostgresEventLogStorage._write_materializations
    monkeypatch.setattr(BulkPostgresEventLogStorage, "_write_materializations",
                        lambda self, events, prepared: batches.append(list(events)) or store(self, events, prepared))
    defs = build_definitions(Settings(data_dir=tmp_path, database_url=sqlite_url))
    add_symbols(instance, sqlite_url, ["AAPL", "MSFT"])
    assert defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
        instance=instance, tags=range_tags(("AAPL", date(2024, 11, 18)), ("MSFT", date(2024, 11, 29)))
    ).success
    events = [e for batch in batches for e in batch]
    assert len(events) == 4 * 2 * 9  # four assets, 2 symbols x 9 sessions
    # and a batch whose events differ in more than partition, tags and time
    other = events[0]._replace(dagster_event=events[0].dagster_event._replace(message="something else"))
    mixed = [events[0], other, events[1], events[-1]]
    for batch in [*batches, mixed]:
        assert event_log.materialization_rows(storage, batch) == [storage._event_to_row(e) for e in batch]
    # what COPY stored is those rows, byte for byte, with their tags
    assert _stored_materializations(storage) == [_expected(storage, e) for e in events]
    # and so for text COPY must escape: backslashes, tabs, newlines, a NUL-free control character
    awkward = [e._replace(dagster_event=e.dagster_event._replace(message=f"a\\b\tc\nd\re\x01 ü {i}"))
               for i, e in enumerate(events[:3])]
    storage.store_event_batch(awkward)
    assert _stored_materializations(storage)[-3:] == [_expected(storage, e) for e in awkward]
    # and the sharing happens: a batch of one step's events is serialized twice, not once per event
    calls = []
    serialize = event_json.serialize_value
    monkeypatch.setattr(event_json, "serialize_value", lambda value: calls.append(1) or serialize(value))
    event_log.materialization_rows(storage, batches[0])
    assert len(batches[0]) == 18 and len(calls) == 2


def _stored_materializations(storage) -> list[tuple]:
    """Every materialization row in the event log, in id order, with its indexed tags."""
    with storage.index_connection() as conn:  # waits for a batch still being written
        rows = conn.execute(sa.text(
            "SELECT id, run_id, event, dagster_event_type, timestamp, step_key, asset_key, partition "
            "FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY id"
        )).all()
        tags = conn.execute(sa.text(
            "SELECT event_id, asset_key, key, value, event_timestamp FROM asset_event_tags ORDER BY id"
        )).all()
    by_event: dict[int, dict] = {}
    for event_id, asset_key, key, value, timestamp in tags:
        by_event.setdefault(event_id, {})[key] = (value, asset_key, timestamp)
    return [(*row[1:], by_event.get(row[0], {})) for row in rows]


def _expected(storage, event) -> tuple:
    """The row and the indexed tags dagster-postgres would store for one materialization."""
    row = storage._event_to_row(event)
    tags = {k: (v, row["asset_key"], row["timestamp"]) for k, v in storage._tags_for_asset_event(event).items()}
    return (*(row[c] for c in ("run_id", "event", "dagster_event_type", "timestamp", "step_key", "asset_key", "partition")), tags)


def test_storage_yaml_names_the_event_log_or_refuses():
    assert "BulkPostgresEventLogStorage" in storage_yaml("postgresql+psycopg2://h/db")
    assert "PooledPostgresRunStorage" in storage_yaml("postgresql+psycopg2://h/db")
    assert "storage:\n  postgres:" in storage_yaml("postgresql+psycopg2://h/db", "stock")
    with pytest.raises(ValueError, match="'bulk' or 'stock'"):
        storage_yaml("postgresql+psycopg2://h/db", "fast")


def test_a_batch_written_behind_that_fails_is_stored_event_by_event(dagster_pg, tmp_path, sqlite_url, monkeypatch, capfd):
    """As Dagster does when a batch fails: the events are stored one by one, before anything else
    touches the storage, and the run and its partitions read back as if nothing had happened."""
    instance = dagster_pg("bulk")
    write = BulkPostgresEventLogStorage._write_materializations
    failures = []

    def fail_first(self, events, prepared):
        if not failures:
            failures.append(len(events))
            raise RuntimeError("connection reset while copying")
        return write(self, events, prepared)

    monkeypatch.setattr(BulkPostgresEventLogStorage, "_write_materializations", fail_first)
    defs = build_definitions(Settings(data_dir=tmp_path, database_url=sqlite_url))
    add_symbols(instance, sqlite_url, ["AAPL", "MSFT"])
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_m15")})
    result = job.execute_in_process(
        instance=instance, tags=range_tags(("AAPL", date(2024, 11, 18)), ("MSFT", date(2024, 11, 22)))
    )
    assert result.success and failures == [10]
    assert "Falling back to storing multiple single-event storage requests" in capfd.readouterr().err
    assert materialized(instance, "bars_m15") == {
        f"{d}|{s}" for s in ("AAPL", "MSFT") for d in ("2024-11-18", "2024-11-19", "2024-11-20", "2024-11-21", "2024-11-22")
    }
    stored = _stored_materializations(instance.event_log_storage)
    assert len(stored) == 10 and all(tags for *_, tags in stored)  # each with its indexed tags


class _Transactions:
    """Stands for the storage's transactions: what a group's writes did is kept only if none raised."""

    def __init__(self):
        self.committed, self._open = [], []

    @contextlib.contextmanager
    def __call__(self):
        self._open = []
        yield
        self.committed += self._open

    def write(self, name):
        return lambda: self._open.append(("written", name))


def test_a_batch_that_cannot_be_stored_at_all_fails_the_next_storage_call():
    stored = []

    def store_one(event):
        stored.append(event)
        raise RuntimeError("database gone")

    behind = event_log.WriteBehind(store_one, _Transactions())
    behind.start(["e1", "e2"], lambda: (_ for _ in ()).throw(RuntimeError("copy failed")))
    with pytest.raises(RuntimeError, match="database gone"):
        behind.finish()
    assert stored == ["e1"]
    behind.finish()  # reported once; nothing left in flight
    behind.close()


def test_writes_after_a_failed_one_are_stored_in_order_after_it():
    tx = _Transactions()
    behind = event_log.WriteBehind(lambda event: tx.committed.append(("one by one", event)), tx)

    def fail():
        raise RuntimeError("copy failed")

    behind.start(["a"], tx.write("a"))
    behind.start(["b1", "b2"], fail)
    behind.start(["c"], tx.write("c"))  # must not overtake b1, b2
    behind.finish()
    # a may have shared b's transaction (then it was rolled back and is stored again, one by one)
    assert [name for _, name in tx.committed] == ["a", "b1", "b2", "c"]
    assert tx.committed[1:] == [("one by one", "b1"), ("one by one", "b2"), ("one by one", "c")]
    behind.start(["d"], tx.write("d"))  # the writer runs again
    behind.close()
    assert tx.committed[-1] == ("written", "d")


def test_queued_writes_share_a_transaction():
    tx = _Transactions()
    groups = []
    outer = tx.__call__

    @contextlib.contextmanager
    def counting():
        with outer():
            groups.append(1)
            yield

    behind = event_log.WriteBehind(lambda event: None, counting)
    entered, release = threading.Event(), threading.Event()
    behind.start(["slow"], lambda: entered.set() or release.wait(10))  # busy while ten more are queued
    assert entered.wait(10)
    for i in range(10):
        behind.start([i], tx.write(i))
    release.set()
    behind.close()
    assert [name for _, name in tx.committed] == list(range(10))
    assert len(groups) == 2  # the first write alone, the ten queued behind it in one transaction


def test_writes_once_stored_no_longer_hold_their_events():
    """A range run's step queues a batch per 1,000 partitions; the ones stored are let go at once,
    not kept until the next read or status event (their events held ~10 KB per partition)."""

    class Event:
        pass

    tx = _Transactions()
    behind = event_log.WriteBehind(lambda event: None, tx)
    first = Event()
    gone = weakref.ref(first)
    behind.start([first], tx.write("first"))
    del first
    for i in range(200):  # until the writer has stored it: then the next write drops it
        behind.start([Event()], tx.write(i))
        gc.collect()
        if gone() is None:
            break
        time.sleep(0.05)
    assert gone() is None
    behind.close()
    assert [name for _, name in tx.committed][0] == "first" and len(tx.committed) == i + 2


def test_queueing_a_write_does_not_scan_the_writes_still_queued(monkeypatch):
    """A step of a box run queues a write per materialization (11,592 for one asset of a
    whole-market box): looking at every queued write on each new one was quadratic and kept a
    core busy while the writer fell further behind. Only the oldest are looked at, and dropped."""
    looked = []

    class CountingFuture(Future):
        def done(self):
            looked.append(1)
            return super().done()

    monkeypatch.setattr(event_log, "Future", CountingFuture)
    tx = _Transactions()
    behind = event_log.WriteBehind(lambda event: None, tx)
    entered, release = threading.Event(), threading.Event()
    behind.start(["slow"], lambda: entered.set() or release.wait(10))  # the writer busy: the rest queue up
    assert entered.wait(10)
    for i in range(2000):
        behind.start([i], tx.write(i))
    assert len(looked) <= 2001  # at most the front write each time, not the 2,000 behind it
    release.set()
    behind.close()
    assert [name for _, name in tx.committed] == list(range(2000))


@dg.op
def _nothing():
    pass


@dg.job
def _trivial_job():
    _nothing()


def test_a_runs_status_event_is_stored_after_everything_before_it(dagster_pg, monkeypatch):
    """Another process (here: another connection) never sees a run end before its events: step and
    log events may still be queued, a run status event waits for them and is stored at once."""
    instance = dagster_pg("bulk")
    run = instance.create_run_for_job(_trivial_job)
    released = threading.Event()
    store_now = BulkPostgresEventLogStorage._store_event_now

    def held_back(self, event):
        if not event_log._is_run_event(event):
            assert released.wait(30)
        store_now(self, event)

    monkeypatch.setattr(BulkPostgresEventLogStorage, "_store_event_now", held_back)
    outside = sa.create_engine(instance.event_log_storage.postgres_url)

    def seen() -> list[str]:
        with outside.connect() as conn:
            return list(conn.execute(sa.text(
                "SELECT dagster_event_type FROM event_logs WHERE run_id = :r ORDER BY id"), {"r": run.run_id}).scalars())

    instance.report_engine_event("written behind the run", run)
    assert seen() == []  # queued: the caller did not wait for it
    threading.Timer(0.5, released.set).start()
    instance.report_run_failed(run)  # waits for the engine event, then is stored before returning
    assert seen() == ["ENGINE_EVENT", "PIPELINE_FAILURE"]
    outside.dispose()

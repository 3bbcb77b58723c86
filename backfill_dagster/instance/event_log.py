"""Dagster's PostgreSQL event log, writing a range run's per-partition events in bulk, behind the run.

Selected in `dagster.yaml` (`event_log_storage`). A range run makes Dagster write a planned event
and a materialization per partition and asset, and dagster-postgres writes each as if it were
alone (a new connection, a transaction and schema inspections per statement) while the run waits.
This subclass writes the same rows in a few round trips: pooled connections per process, schema
facts remembered, one subset planned event per asset stored as the per-partition rows Dagster's
readers expect, materializations with COPY; and every write but a run's status events queued to a
writer thread that commits what is queued together (WriteBehind). Every transaction that stores
events holds one advisory lock from before its first event id to its commit, so that ids become
visible in the order they were taken across run workers (`_one_transaction`: Dagster's cursors of
"events up to id N" depend on it). The asset pages' status cache read
takes the stored row as it is when nothing happened since it was written (cached_status.py), and
the partitions planned but not materialized since are found in one query; other reads and the
statements of other writes are Dagster's own. It turns on event batching in every
process that opens the instance. Figures and what was not adopted: docs/benchmarks.md; same
statuses as the stock storage: tests/instance/test_event_log.py; the Dagster internals it relies
on: tests/orchestration/test_dagster_internals.py.
"""

from __future__ import annotations

import atexit
import io
import itertools
import multiprocessing.util
import json
import os
import queue
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from dagster._core.events import DagsterEventType
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.base import AssetRecord
from dagster._core.storage.partition_status_cache import AssetStatusCacheValue
from dagster._core.storage.event_log.schema import (
    AssetEventTagsTable,
    SqlEventLogStorageTable,
)
from dagster._serdes import ConfigurableClassData, serialize_value
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.utils import (
    create_pg_connection,
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)

# The daemon loads this storage, and with it the daemon's backfill patches (daemon_patches.py).
from backfill_dagster.instance import daemon_patches  # noqa: F401
from backfill_dagster.instance.cached_status import unchanged_cache_value
from backfill_dagster.instance.event_json import serialize_events
from backfill_dagster.instance.event_log_tuning import batch_dagster_events

# Connections kept per process: Dagster's storage opens a second one inside some writes (an index
# transaction while an insert's connection is still held). Beyond these, connections are opened
# and closed on return; -1: never make a thread wait for one.
POOL_SIZE = 2
POOL_RECYCLE_S = 3600
PING_IDLE_AFTER_S = 10
# Most queued writes (events or batches of them) the writer commits in one transaction.
GROUP_MAX = 200
# The advisory lock every event-writing transaction holds from before its first id to its commit
# (arbitrary constant: 'bfde' in ASCII; the store's schema lock is 'bfdg').
COMMIT_ORDER_LOCK = 0x62666465


class BulkPostgresEventLogStorage(PostgresEventLogStorage):
    """PostgreSQL event log storage that writes a range run's per-partition events in bulk."""

    # Every transaction that stores events takes COMMIT_ORDER_LOCK first (`_one_transaction`);
    # False only to measure what that costs (bench/event_log_writers.py).
    commit_in_id_order = True

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: ConfigurableClassData | None = None, token_provider=None):
        self._schema_seen: set[str] = set()
        self._held = threading.local()  # the connection of the event being stored, per thread
        self._written_behind = WriteBehind(self._store_event_now, self._one_transaction)
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        self._engine = pooled_engine(self.postgres_url, self._token_provider, self._engine.url)
        batch_dagster_events()

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> BulkPostgresEventLogStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    @property
    def supports_partition_subset_in_asset_materialization_planned_events(self) -> bool:
        # Dagster then plans a range run with one event per asset, naming the run's partitions as a
        # subset, instead of one event per partition; this storage stores it as exactly those
        # per-partition events (below), so failed and in-progress partition status keep working.
        return True

    def store_event(self, event: EventLogEntry) -> None:
        # A run's own status events wait for everything before them and are stored before Dagster
        # moves the run on; every other event is written behind the run (WriteBehind).
        if _is_run_event(event):
            self._written_behind.finish()
            self._store_event_now(event)
        else:
            self._written_behind.start([event], lambda: self._store_event_now(event))

    def _store_event_now(self, event: EventLogEntry) -> None:
        with self._one_transaction():
            if _kind(event) == _PLANNED:
                self._store_planned_batch([event])
            else:
                super().store_event(event)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        # A run's planned events arrive as one batch, materializations and checks sorted by asset
        # key: store each stretch of one kind as Dagster would, in order, in one transaction,
        # behind the run. (Dagster batches only asset events, never a run's status events.)
        stretches = []
        for kind, stretch in itertools.groupby(events, key=_kind):
            stretch = list(stretch)
            prepared = self._prepare_materializations(stretch) if kind == _MATERIALIZED and len(stretch) > 1 else None
            stretches.append((kind, stretch, prepared))
        if any(_is_run_event(e) for e in events):
            self._written_behind.finish()
            self._store_stretches(stretches)
        else:
            self._written_behind.start(events, lambda: self._store_stretches(stretches))

    def _store_stretches(self, stretches) -> None:
        with self._one_transaction():
            for kind, stretch, prepared in stretches:
                if kind == _PLANNED:
                    self._store_planned_batch(stretch)
                elif len(stretch) == 1:
                    super().store_event(stretch[0])
                elif kind == _MATERIALIZED:
                    self._write_materializations(stretch, prepared)
                else:
                    super().store_event_batch(stretch)

    # Reads of tables no event write touches (dynamic partitions, pool limits, the schema) need not
    # wait for the writes behind the run: the steps ask for the run's symbols, and Dagster for the
    # pools, at the very moment the run's planned events are being written.
    def get_dynamic_partitions(self, partitions_def_name: str) -> Sequence[str]:
        with self._not_waiting():
            return super().get_dynamic_partitions(partitions_def_name)

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        with self._not_waiting():
            return super().has_dynamic_partition(partitions_def_name, partition_key)

    def get_pool_limits(self):
        with self._not_waiting():
            return super().get_pool_limits()

    def has_asset_key_col(self, column_name: str) -> bool:
        with self._not_waiting():
            return super().has_asset_key_col(column_name)

    @contextmanager
    def _not_waiting(self) -> Iterator[None]:
        outer = getattr(self._held, "not_waiting", False)
        self._held.not_waiting = True
        try:
            yield
        finally:
            self._held.not_waiting = outer

    def _prepare_materializations(self, events: Sequence[EventLogEntry]) -> tuple[list[str], list[list[str]]]:
        """The COPY lines `_write_materializations` sends, all but their event ids, built in the
        calling thread: each event's row (`_event_to_row`, the JSON serialized with what they share
        done once: event_json) and the rows of its indexed tags. Left for the transaction, which
        holds the commit-order lock, is putting the ids in front (formatting 1,000 rows here took
        8-45 ms, a whole transaction's median length)."""
        rows = materialization_rows(self, events)
        event_lines = [copy_line(row[column] for column in _EVENT_COLUMNS) for row in rows]
        tag_lines = [
            [copy_line((row["asset_key"], key, value, row["timestamp"])) for key, value in self._tags_for_asset_event(e).items()]
            for row, e in zip(rows, events, strict=True)
        ]
        return event_lines, tag_lines

    def _write_materializations(self, events: Sequence[EventLogEntry], prepared: tuple[list[str], list[list[str]]]) -> None:
        """What dagster-postgres's `store_event_batch` does with materializations (the rows, their
        indexed tags, the asset-key row from the last one), in one transaction, each table's rows
        sent with COPY: the batch's ids are taken from the table's sequence first, so the tags can
        name them. SQLAlchemy compiles a multi-row VALUES statement anew for every batch (~40 us a
        row) and inserts the tags with executemany; binding the rows as arrays cost ~25 us a row."""
        event_lines, tag_lines = prepared
        with self._one_transaction(), self._connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                cursor.execute(_NEXT_EVENT_IDS, (len(event_lines),))
                ids = sorted(row[0] for row in cursor.fetchall())
                cursor.copy_expert(_COPY_EVENTS, io.StringIO(
                    "".join(f"{event_id}\t{line}\n" for event_id, line in zip(ids, event_lines))
                ))
                if self.has_table(AssetEventTagsTable.name):
                    cursor.copy_expert(_COPY_TAGS, io.StringIO("".join(
                        f"{event_id}\t{line}\n" for event_id, lines in zip(ids, tag_lines) for line in lines
                    )))
            finally:
                cursor.close()
            with self.index_transaction() as index:
                self._store_asset_event(index, events[-1], int(ids[-1]))

    @contextmanager
    def _one_transaction(self) -> Iterator[None]:
        """Every statement Dagster makes to store an event (or a batch), on one connection, in one
        transaction: one commit, where Dagster's autocommit makes each statement its own (an
        evaluation's insert, its NOTIFY and its check-row update: three WAL flushes). Also atomic:
        an event is never stored without its index rows.

        Ids in commit order: the transaction first takes `COMMIT_ORDER_LOCK`, held until it commits,
        so no other process takes an event id while one is taken and not yet committed. A group
        holds its ids for its whole transaction (11-18 ms median in a 504-partition run, up to
        237 ms); without the lock another run worker could commit higher ids inside that window,
        and every reader that keeps a cursor of "the events up to id N" (Dagster's partition
        status cache behind the asset pages, its sensors' and daemon's cursors) would step over
        the lower ones for good. What the lock costs: docs/benchmarks.md, "Event ids in commit order"."""
        if getattr(self._held, "conn", None) is not None:  # already inside one
            yield
            return
        self._written_behind.finish()
        with create_pg_connection(self._engine) as conn:
            conn = conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                if self.commit_in_id_order:
                    conn.execute(_COMMIT_ORDER, {"key": COMMIT_ORDER_LOCK})
                self._held.conn = conn
                try:
                    yield
                finally:
                    self._held.conn = None

    @contextmanager
    def _connect(self) -> Iterator[sa.engine.Connection]:
        held = getattr(self._held, "conn", None)
        if held is not None:
            # Inside a transaction that stores events: it waited for the writes queued before it
            # when it began, and it holds COMMIT_ORDER_LOCK, which the writer thread needs: waiting
            # here for writes another thread queued since would never end.
            yield held
            return
        if not getattr(self._held, "not_waiting", False):
            self._written_behind.finish()
        with create_pg_connection(self._engine) as conn:
            yield conn

    def _store_planned_batch(self, events: Sequence[EventLogEntry]) -> None:
        """What `store_event` does for each planned event, in a round trip per subset event and one
        for the rest, plus one per asset for its asset-key row.

        A subset event (one per asset and run) becomes the per-partition events Dagster writes
        without subsets, one row per partition, built by the database from one serialized copy.
        Planned events carry no tags to index, and the asset-key row keeps only the latest event's
        run and timestamp, so updating it with each asset's last event is the same end state.
        """
        last: dict[str, tuple[EventLogEntry, int]] = {}
        plain = [e for e in events if e.get_dagster_event().event_specific_data.partitions_subset is None]
        with self._connect() as conn:
            if plain:
                insert = self.prepare_insert_event_batch(plain).returning(SqlEventLogStorageTable.c.id)
                for event, row in zip(plain, conn.execute(insert).fetchall(), strict=True):
                    last[event.get_dagster_event().asset_key.to_string()] = (event, int(row[0]))
            for event in events:
                if event.get_dagster_event().event_specific_data.partitions_subset is not None:
                    event_id = self._insert_planned_per_partition(conn, event)
                    if event_id is not None:
                        last[event.get_dagster_event().asset_key.to_string()] = (event, event_id)
        with self.index_transaction() as conn:
            for event, event_id in last.values():
                self._store_asset_event(conn, event, event_id)

    def _insert_planned_per_partition(self, conn: sa.engine.Connection, event: EventLogEntry) -> int | None:
        """Store a subset planned event as one planned event per partition, in one INSERT ... SELECT.

        Each row's event is the event Dagster would have emitted for that partition (the same
        event, with `partition` set and no subset): serialized once around a marker, the database
        puts each key, JSON-quoted, in its place. Returns the last row's id (None: no partitions).
        """
        dagster_event = event.get_dagster_event()
        planned = dagster_event.event_specific_data
        keys = list(planned.partitions_subset.get_partition_keys())
        if not keys:
            return None
        marker = f"backfill-dagster-partition-{uuid.uuid4().hex}"
        one = event._replace(
            dagster_event=dagster_event._replace(
                event_specific_data=planned._replace(partition=marker, partitions_subset=None)
            )
        )
        serialized = serialize_value(one)
        quoted = json.dumps(marker)
        if serialized.count(quoted) != 1:  # never seen; refuse rather than store a wrong event
            raise ValueError(f"cannot place partition keys in a planned event of {dagster_event.asset_key}")
        prefix, suffix = serialized.split(quoted)
        ids = conn.execute(_PLANNED_PER_PARTITION, {
            "run_id": event.run_id, "prefix": prefix, "suffix": suffix,
            "event_type": DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value,
            "timestamp": self._event_insert_timestamp(event), "step_key": dagster_event.step_key,
            "asset_key": dagster_event.asset_key.to_string(), "keys": keys,
        }).scalars().all()
        return int(ids[-1])

    def has_table(self, table_name: str) -> bool:
        # Asked before every asset-event write; a table, once there, stays.
        if table_name in self._schema_seen:
            return True
        present = super().has_table(table_name)
        if present:
            self._schema_seen.add(table_name)
        return present

    def _has_asset_key_col_on_connection(self, conn, column_name: str) -> bool:
        # An inspection of the asset-key table before every asset-event write; columns stay too.
        seen = f"asset_keys.{column_name}"
        if seen in self._schema_seen:
            return True
        present = super()._has_asset_key_col_on_connection(conn, column_name)
        if present:
            self._schema_seen.add(seen)
        return present

    def get_asset_status_cache_values(self, partitions_defs_by_key, context) -> Sequence[AssetStatusCacheValue | None]:
        """Each asset's partition status (the asset pages ask for it on every request): the stored
        value as it is when nothing happened since it was written (cached_status.py), else
        Dagster's update of it."""
        from dagster._core.workspace.context import BaseWorkspaceRequestContext

        loader = context.dynamic_partitions_loader if isinstance(context, BaseWorkspaceRequestContext) else None
        values = []
        for asset_key, partitions_def in partitions_defs_by_key:
            with partition_loading_context(None, loader or self._instance):
                value = unchanged_cache_value(
                    self._instance, asset_key, partitions_def, AssetRecord.blocking_get(context, asset_key)
                )
            if value is None:  # Dagster's update (the asset record comes from the context's loader again)
                [value] = super().get_asset_status_cache_values([(asset_key, partitions_def)], context)
            values.append(value)
        return values

    def get_latest_asset_partition_materialization_attempts_without_materializations(
        self, asset_key, after_storage_id: int | None = None
    ) -> Mapping[str, tuple[str, int]]:
        """Partitions whose latest planned event has no later materialization: {partition: (run id,
        planned event id)} — in progress or failed, as the run's status will tell.

        Dagster's answer, computed in the database: Dagster groups the asset's events by event type
        and partition, fetches the latest planned and the latest materialization of every partition
        in two queries (252,000 rows each at whole-market scale) and compares them in Python: 9.1 s
        for one asset whose status cache is built from nothing, and 1.0 s this way, which returns
        only the partitions that answer (bench/status_cache_build.py, docs/benchmarks.md). The same filters (asset,
        partition set, event types, `after_storage_id`, the asset's last wipe); the same answer as
        Dagster's: tests/instance/test_event_log.py."""
        table = SqlEventLogStorageTable
        planned = DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value
        materialized = DagsterEventType.ASSET_MATERIALIZATION.value
        latest = sa.select(
            table.c.partition,
            sa.func.max(table.c.id).filter(table.c.dagster_event_type == planned).label("planned_id"),
            sa.func.max(table.c.id).filter(table.c.dagster_event_type == materialized).label("materialized_id"),
        ).where(
            table.c.asset_key == asset_key.to_string(),
            table.c.partition.isnot(None),
            table.c.dagster_event_type.in_([planned, materialized]),
        )
        if after_storage_id is not None:
            latest = latest.where(table.c.id > after_storage_id)
        latest = self._add_assets_wipe_filter_to_query(
            latest.group_by(table.c.partition), self._get_assets_details([asset_key]), [asset_key]
        ).subquery("latest")
        query = (
            sa.select(latest.c.partition, table.c.run_id, table.c.id)
            .select_from(latest.join(table, table.c.id == latest.c.planned_id))
            .where(sa.or_(latest.c.materialized_id.is_(None), latest.c.materialized_id < latest.c.planned_id))
        )
        with self.index_connection() as conn:
            return {row.partition: (row.run_id, row.id) for row in conn.execute(query)}

    def optimize_for_webserver(self, statement_timeout: int, pool_recycle: int, max_overflow: int) -> None:
        """Dagster's webserver set-up (a held connection, a statement timeout); and, this being the
        webserver, its partitions bar reads multi-partition keys by splitting them (partition_health.py)."""
        super().optimize_for_webserver(statement_timeout, pool_recycle, max_overflow)
        from backfill_dagster.instance import partition_health  # dagster_graphql: the webserver's import only

        partition_health.install()

    def dispose(self) -> None:
        self._written_behind.close()
        super().dispose()
        self._engine.dispose()


def materialization_rows(storage: BulkPostgresEventLogStorage, events: Sequence[EventLogEntry]) -> list[dict]:
    """`storage._event_to_row(event)` for each materialization, with the serialization shared
    (event_json); the other columns as Dagster derives them."""
    rows = []
    asset_keys: dict = {}  # a key's string (JSON) once per batch, not per event
    for event, text in zip(events, serialize_events(events), strict=True):
        dagster_event = event.get_dagster_event()
        key = dagster_event.asset_key
        if key is not None and key not in asset_keys:
            asset_keys[key] = key.to_string()
        rows.append({
            "run_id": event.run_id,
            "event": text,
            "dagster_event_type": dagster_event.event_type_value,
            "timestamp": storage._event_insert_timestamp(event),
            "step_key": dagster_event.step_key,
            "asset_key": asset_keys[key] if key is not None else None,
            "partition": dagster_event.partition or None,
        })
    return rows


_PLANNED, _MATERIALIZED, _OTHER = "planned", "materialized", "other"


_KINDS = {
    DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value: _PLANNED,
    DagsterEventType.ASSET_MATERIALIZATION.value: _MATERIALIZED,
}


def _kind(event: EventLogEntry) -> str:
    return _KINDS.get(event.dagster_event.event_type_value, _OTHER) if event.dagster_event else _OTHER


class WriteBehind:
    """The storage's writes done in order by one background thread while the run goes on; whatever
    reads the event tables in this process, and every run status event, first waits for them
    (`finish`).

    Dagster stores each event before it goes on: a range run's planned events, its materializations
    1,000 at a time, and some fifteen step and log events a run, each its own transaction waiting on
    PostgreSQL while the run could be planning the step, calling the provider or running the check.
    Written behind, the two overlap, and the writer commits whatever is queued together (group
    commit: one WAL flush for many events, each still stored by Dagster's own statements). The order
    is kept: one writer, first in first out; reads in this process see every write before them, and
    a run's status events (start, success, failure) are written only after everything before them,
    so no run ends in the event log before its events are there. A write that fails rolls back its
    group and stops the writer: `finish` stores that group's events and every later one's one by
    one, in order, as Dagster does when a batch fails, and raises if that fails too. Queued events
    are at the risk the 1,000 events Dagster buffers before handing them over already are: lost if
    the process is killed (not when it exits: the writer is drained at exit).
    """

    def __init__(self, store_one, transaction):
        self._store_one = store_one
        self._transaction = transaction  # a context manager: one transaction for a group of writes
        self._pid = os.getpid()
        self._lock = threading.Lock()  # the webserver and the daemon call the storage from many threads
        self._queue: queue.SimpleQueue | None = None
        self._writer: threading.Thread | None = None
        self._pending: deque[tuple[Future, Sequence[EventLogEntry]]] = deque()
        self._stopped = False  # a write failed: later ones wait for `finish` to store them in order
        self._in_writer = threading.local()

    def start(self, events: Sequence[EventLogEntry], write) -> None:
        """Queue `write()`, which stores `events`, behind the writes already queued."""
        future: Future = Future()
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's thread and queue are not its own
                self._pid, self._writer, self._queue, self._pending, self._stopped = os.getpid(), None, None, deque(), False
            if self._writer is None:
                self._queue = queue.SimpleQueue()
                self._writer = threading.Thread(
                    target=self._write_queued, args=(self._queue,), name="event-log-write-behind", daemon=True
                )
                self._writer.start()
                # Drained when the process ends: at interpreter exit, and in a multiprocessing child
                # (fork and forkserver children leave with os._exit, after multiprocessing's finalizers).
                atexit.register(self.close)
                multiprocessing.util.Finalize(None, self.close, exitpriority=10)
            # Forget the writes already stored: `finish` needs only the unwritten ones (and the
            # failed ones' events, to store them one by one). Kept until `finish`, a range run's
            # step held every one of its partitions' events, ~10 KB per partition and asset. The
            # writer stores in order, so the stored ones are the oldest: dropped from the front, at
            # no cost per write however far the writer is behind (a scan of every pending write on
            # each new one was quadratic when a step's 11,592 materializations queued up).
            pending = self._pending
            while pending and pending[0][0].done() and pending[0][0].exception() is None:
                pending.popleft()
            pending.append((future, events))
            self._queue.put((future, write))

    def _write_queued(self, queued: queue.SimpleQueue) -> None:
        self._in_writer.active = True
        while True:
            item = queued.get()
            if item is None:
                return
            group, stop = [item], False
            while len(group) < GROUP_MAX:
                try:
                    item = queued.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            self._write_group(group)
            if stop:
                return

    def _write_group(self, group: list[tuple[Future, Any]]) -> None:
        if self._stopped:
            for future, _ in group:
                future.set_exception(_NotWritten())
            return
        try:
            with self._transaction():
                for _, write in group:
                    write()
        except BaseException as exc:  # the group's transaction is rolled back: none of it is stored
            self._stopped = True
            for future, _ in group:
                future.set_exception(exc)
        else:
            for future, _ in group:
                future.set_result(None)

    def finish(self) -> None:
        """Wait for every queued write (a no-op in the writer itself and in a forked child)."""
        if not self._pending or getattr(self._in_writer, "active", False) or self._pid != os.getpid():
            return
        with self._lock:
            pending, self._pending = self._pending, deque()
        unwritten: list[EventLogEntry] = []
        for future, events in pending:
            try:
                future.result()
            except Exception as exc:
                if not unwritten and not isinstance(exc, _NotWritten):
                    sys.stderr.write(f"Exception while storing event batch: {exc}\n"
                                     "Falling back to storing multiple single-event storage requests...\n")
                unwritten.extend(events)
        self._stopped = False  # every queued write has run or been skipped
        for event in unwritten:
            self._store_one(event)

    def close(self) -> None:
        """Wait for every queued write, then let the writer thread go."""
        self.finish()
        with self._lock:
            writer, self._writer = (self._writer, None) if self._pid == os.getpid() else (None, self._writer)
            if writer is not None:
                self._queue.put(None)
        if writer is not None:
            writer.join()


class _NotWritten(Exception):
    """A write skipped because an earlier one failed; `finish` stores its events in order."""


def _is_run_event(event: EventLogEntry) -> bool:
    return event.dagster_event is not None and event.dagster_event.is_job_event


# Taken before the transaction's first event id, released by its commit (or rollback): event ids
# become visible in the order they were taken, across every process writing this event log.
_COMMIT_ORDER = sa.text("SELECT pg_advisory_xact_lock(:key)")


# One planned-materialization row per partition key, in the keys' order (ids ascending, as Dagster's
# own per-partition events would get them).
_PLANNED_PER_PARTITION = sa.text(f"""
    INSERT INTO {SqlEventLogStorageTable.name}
        (run_id, event, dagster_event_type, timestamp, step_key, asset_key, partition)
    SELECT :run_id, :prefix || to_json(k.key)::text || :suffix, :event_type, :timestamp, :step_key,
           :asset_key, k.key
    FROM unnest(:keys) WITH ORDINALITY AS k(key, n)
    ORDER BY k.n
    RETURNING id
""").bindparams(
    sa.bindparam("timestamp", type_=sa.DateTime()),
    sa.bindparam("keys", type_=postgresql.ARRAY(sa.Text())),
)


_EVENT_COLUMNS = ("run_id", "event", "dagster_event_type", "timestamp", "step_key", "asset_key", "partition")
_TAG_COLUMNS = ("event_id", "asset_key", "key", "value", "event_timestamp")
# A batch's ids, ascending as in Dagster's multi-row insert, taken before its rows are copied in.
_NEXT_EVENT_IDS = (
    f"SELECT nextval(pg_get_serial_sequence('{SqlEventLogStorageTable.name}', 'id')) FROM generate_series(1, %s)"
)
_COPY_EVENTS = f"COPY {SqlEventLogStorageTable.name} (id, {', '.join(_EVENT_COLUMNS)}) FROM STDIN"
_COPY_TAGS = f"COPY {AssetEventTagsTable.name} ({', '.join(_TAG_COLUMNS)}) FROM STDIN"


def copy_line(values: Iterable[Any]) -> str:
    """One record in COPY's text format, without the line's end: tab-separated, backslash escapes,
    \\N for NULL, timestamps in ISO form (the columns are `timestamp without time zone`, values
    naive UTC)."""
    return "\t".join(map(_copy_field, values))


def _copy_field(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    text = str(value)
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\n" in text or "\r" in text or "\t" in text:
        text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return text


def pooled_engine(postgres_url: str, token_provider, stock_url: sa.engine.URL) -> sa.engine.Engine:
    """Autocommit engine keeping `POOL_SIZE` connections, as Dagster's webserver does for itself,
    made safe for processes that fork: a connection is only ever used by the process that opened
    it. A connection idle for `PING_IDLE_AFTER_S` is tested before use (a dropped one is replaced);
    SQLAlchemy's pre-ping would test it on every checkout, a round trip per event (~0.1 s a run)."""
    kwargs: dict[str, Any] = dict(
        isolation_level="AUTOCOMMIT", pool_size=POOL_SIZE, max_overflow=-1, pool_recycle=POOL_RECYCLE_S,
    )
    options = stock_url.query.get("options")
    if options:
        kwargs["connect_args"] = {"options": options}
    engine = create_pg_engine(postgres_url, token_provider, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def remember_pid(dbapi_connection, record) -> None:
        record.info["pid"] = os.getpid()

    @sa.event.listens_for(engine, "checkin")
    def remember_checkin(dbapi_connection, record) -> None:
        record.info["checked_in"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def refuse_inherited_or_dead(dbapi_connection, record, proxy) -> None:
        # SQLAlchemy's recipes for pools across fork (drop a connection the parent opened) and for
        # pessimistic disconnect handling (the pool retries with a new connection).
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise sa.exc.DisconnectionError("connection opened by another process")
        if time.monotonic() - record.info.get("checked_in", time.monotonic()) > PING_IDLE_AFTER_S:
            try:
                with dbapi_connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
            except Exception as exc:
                raise sa.exc.DisconnectionError(f"connection lost while idle: {exc}") from exc

    return engine


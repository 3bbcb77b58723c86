"""Dagster's PostgreSQL event log, writing a range run's per-partition events in bulk.

Selected in `dagster.yaml` (`event_log_storage`). A range run makes Dagster write a planned event
and a materialization per partition and asset, and dagster-postgres writes each as if it were
alone (a new connection, a transaction and schema inspections per statement). This subclass writes
the same rows in a few round trips: pooled connections per process, one transaction per batch,
schema facts remembered, one subset planned event per asset stored as the per-partition rows
Dagster's readers expect, and materializations as arrays. Reads and other writes are Dagster's own.
It turns on event batching in every process that opens the instance. Figures and what was not
adopted: README, "Benchmarks"; same statuses as the stock storage: tests/instance/test_event_log.py;
the Dagster internals it relies on: tests/orchestration/test_dagster_internals.py.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.errors import DagsterInvariantViolationError
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

# The daemon loads this storage: bound its backfill log lines there too (imported for its effect).
from backfill_dagster.instance import backfill_log  # noqa: F401
from backfill_dagster.instance.event_json import serialize_events
from backfill_dagster.instance.event_log_tuning import batch_dagster_events

# Connections kept per process: Dagster's storage opens a second one inside some writes (an index
# transaction while an insert's connection is still held). Beyond these, connections are opened
# and closed on return; -1: never make a thread wait for one.
POOL_SIZE = 2
POOL_RECYCLE_S = 3600
PING_IDLE_AFTER_S = 10


class BulkPostgresEventLogStorage(PostgresEventLogStorage):
    """PostgreSQL event log storage that writes a range run's per-partition events in bulk."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: ConfigurableClassData | None = None, token_provider=None):
        self._schema_seen: set[str] = set()
        self._held = threading.local()  # the connection of the event being stored, per thread
        self._written_behind = WriteBehind(self.store_event)
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
        self._written_behind.finish()
        with self._one_transaction():
            if _is_planned_materialization(event):
                self._store_planned_batch([event])
            else:
                super().store_event(event)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        # A run's planned events arrive as one batch, materializations and checks sorted by asset
        # key: store each stretch of one kind as Dagster would, in order, in one transaction. A
        # range run's per-partition batches (planned, materialized) are written behind the run.
        self._written_behind.finish()
        stretches = []
        for kind, stretch in itertools.groupby(events, key=_kind):
            stretch = list(stretch)
            prepared = self._prepare_materializations(stretch) if kind == _MATERIALIZED and len(stretch) > 1 else None
            stretches.append((kind, stretch, prepared))
        if all(kind != _OTHER for kind, _, _ in stretches):
            self._written_behind.start(events, lambda: self._store_stretches(stretches))
        else:
            self._store_stretches(stretches)

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

    def _prepare_materializations(self, events: Sequence[EventLogEntry]) -> tuple[list[dict], list[dict]]:
        """The rows `_write_materializations` writes, built in the calling thread: each event's
        row (`_event_to_row`, the JSON serialized with what they share done once: event_json) and
        its indexed tags."""
        return materialization_rows(self, events), [self._tags_for_asset_event(e) for e in events]

    def _write_materializations(self, events: Sequence[EventLogEntry], prepared: tuple[list[dict], list[dict]]) -> None:
        """What dagster-postgres's `store_event_batch` does with materializations (the rows, their
        indexed tags, the asset-key row from the last one), in one transaction, each table's rows
        sent with COPY: the batch's ids are taken from the table's sequence first, so the tags can
        name them. SQLAlchemy compiles a multi-row VALUES statement anew for every batch (~40 us a
        row) and inserts the tags with executemany; binding the rows as arrays cost ~25 us a row."""
        rows, tags_per_event = prepared
        with self._one_transaction(), self._connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                cursor.execute(_NEXT_EVENT_IDS, (len(rows),))
                ids = sorted(row[0] for row in cursor.fetchall())
                cursor.copy_expert(_COPY_EVENTS, copy_text(
                    (event_id, *(row[column] for column in _EVENT_COLUMNS)) for event_id, row in zip(ids, rows)
                ))
                if self.has_table(AssetEventTagsTable.name):
                    cursor.copy_expert(_COPY_TAGS, copy_text(
                        (event_id, row["asset_key"], key, value, row["timestamp"])
                        for event_id, row, event_tags in zip(ids, rows, tags_per_event)
                        for key, value in event_tags.items()
                    ))
            finally:
                cursor.close()
            with self.index_transaction() as index:
                self._store_asset_event(index, events[-1], int(ids[-1]))

    @contextmanager
    def _one_transaction(self) -> Iterator[None]:
        """Every statement Dagster makes to store an event (or a batch), on one connection, in one
        transaction: one commit, where Dagster's autocommit makes each statement its own (an
        evaluation's insert, its NOTIFY and its check-row update: three WAL flushes). Also atomic:
        an event is never stored without its index rows."""
        if getattr(self._held, "conn", None) is not None:  # already inside one
            yield
            return
        self._written_behind.finish()
        with create_pg_connection(self._engine) as conn:
            conn = conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                self._held.conn = conn
                try:
                    yield
                finally:
                    self._held.conn = None

    @contextmanager
    def _connect(self) -> Iterator[sa.engine.Connection]:
        self._written_behind.finish()
        held = getattr(self._held, "conn", None)
        if held is not None:
            yield held
            return
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
    """One batch of a range run's per-partition events written by a background thread while the
    run goes on; whatever touches the storage next, in this process, first waits for it (`finish`).

    Dagster hands the storage a range run's planned events in one batch and its materializations
    1,000 at a time, and goes on building the next ones, planning the step or running the check in
    Python while PostgreSQL stores the last: the two overlap. Nothing reads or writes around a batch
    in flight: every read and write of this storage calls `finish` first, and so does `dispose`.
    If the write fails, `finish` stores the batch's events one by one, as Dagster does when a batch
    fails, and raises if that fails too. A batch in flight is at the risk the 1,000 events Dagster
    buffers in memory before handing them over already are: lost if the process is killed.
    """

    def __init__(self, store_one):
        self._store_one = store_one
        self._pid = os.getpid()
        self._writer: ThreadPoolExecutor | None = None
        self._pending: tuple[Future, Sequence[EventLogEntry]] | None = None
        self._in_writer = threading.local()

    def start(self, events: Sequence[EventLogEntry], write) -> None:
        """Run `write()`, which stores `events`, in the background (after `finish`)."""
        if self._pid != os.getpid():  # a forked child: the parent's thread and batch are not its own
            self._pid, self._writer, self._pending = os.getpid(), None, None
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-log-write-behind")
        self._pending = (self._writer.submit(self._run, write), events)

    def _run(self, write) -> None:
        self._in_writer.active = True
        try:
            write()
        finally:
            self._in_writer.active = False

    def finish(self) -> None:
        """Wait for the batch in flight, if any (a no-op in the writer itself and in a forked child)."""
        if self._pending is None or getattr(self._in_writer, "active", False) or self._pid != os.getpid():
            return
        future, events = self._pending
        self._pending = None
        try:
            future.result()
        except Exception as exc:  # the batch was one transaction: nothing of it is stored
            sys.stderr.write(f"Exception while storing event batch: {exc}\n"
                             "Falling back to storing multiple single-event storage requests...\n")
            for event in events:
                self._store_one(event)

    def close(self) -> None:
        """Wait for the batch in flight, then let the writer thread go."""
        self.finish()
        if self._writer is not None and self._pid == os.getpid():
            self._writer.shutdown(wait=True)
            self._writer = None


def _is_planned_materialization(event: EventLogEntry) -> bool:
    return event.is_dagster_event and event.get_dagster_event().event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED


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


def copy_text(records: Iterable[Sequence[Any]]) -> io.StringIO:
    """Records in COPY's text format: tab-separated, one per line, backslash escapes, \\N for NULL,
    timestamps in ISO form (the columns are `timestamp without time zone`, values naive UTC)."""
    return io.StringIO("".join("\t".join(map(_copy_field, record)) + "\n" for record in records))


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


def storage_yaml(postgres_url: str, event_log: str = "bulk", home: str | os.PathLike | None = None) -> str:
    """The storage sections of a `dagster.yaml` keeping everything in one PostgreSQL database, with
    this event log, the pooled run storage and the threaded compute logs (`bulk`, as the project's
    dagster.yaml; those under `home`/storage, Dagster's default place) or dagster-postgres's own
    storage and Dagster's compute logs (`stock`). For instances made on the fly: tests and benchmarks."""
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
            ("event_log_storage", __name__, BulkPostgresEventLogStorage.__name__),
            ("schedule_storage", "dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
        ]
    )

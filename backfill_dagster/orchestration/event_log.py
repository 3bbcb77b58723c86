"""Dagster's PostgreSQL event log, writing a range run's per-partition events in bulk.

Selected in `dagster.yaml` (`event_log_storage`). A run over N partitions makes Dagster write, per
asset, a materialization-planned event and a materialization per partition, plus one
check-planned event and one evaluation per check (the checks summarise the run: checks.py).
dagster-postgres 1.13 writes them as if each were alone:

- every statement on a new connection (NullPool: an idle instance holds none), ~5 ms each here;
- planned events one at a time, each an insert plus a has-table query, a schema inspection and an
  asset-key upsert, although Dagster hands them over in batches (`store_event_batch`);
- a batch of materializations as a multi-row VALUES statement that SQLAlchemy compiles anew for
  every batch, and their indexed tags with executemany;

This subclass writes the same rows in far fewer round trips: pooled connections, kept per process
(checked on checkout, never shared across a fork); each event (or batch) in one transaction
instead of a commit per statement; the schema facts (a table or column exists) remembered once
seen. It asks Dagster for one planned event per asset and run, naming the run's partitions as a
subset (`supports_partition_subset_in_asset_materialization_planned_events`), and stores it as
exactly the per-partition planned events Dagster writes otherwise, in one INSERT ... SELECT, so
failed and in-progress partition status read the same rows. Materializations and their tags go in
as arrays, one INSERT ... SELECT per table and batch. Reads and every other write are Dagster's own.
It also turns on Dagster's event batching (`DAGSTER_EVENT_BATCH_SIZE`) in every process that opens
the instance — webserver, daemon, run workers, CLI — since batches are what it makes cheap.
Commits wait for the WAL flush (`synchronous_commit` stays on): turning it off saved ~0.02 s of a
3.2 s, 5,000-partition run (bench/bookkeeping.py --synchronous-commit off), not worth losing the
last events in a crash. bench/bookkeeping.py measures it against the stock storage;
tests/orchestration/test_event_log.py shows both give the same statuses, and
tests/orchestration/test_dagster_internals.py fails if a Dagster method it relies on changes.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
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
from backfill_dagster.orchestration import backfill_log  # noqa: F401
from backfill_dagster.orchestration.bookkeeping import batch_dagster_events
from backfill_dagster.orchestration.event_json import serialize_events

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
        with self._one_transaction():
            if _is_planned_materialization(event):
                self._store_planned_batch([event])
            else:
                super().store_event(event)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        # A run's planned events arrive as one batch, materializations and checks sorted by asset
        # key: store each stretch of one kind as Dagster would, in order, in one transaction.
        with self._one_transaction():
            for planned, stretch in itertools.groupby(events, key=_is_planned_materialization):
                stretch = list(stretch)
                if planned:
                    self._store_planned_batch(stretch)
                elif len(stretch) == 1:
                    super().store_event(stretch[0])
                elif {e.get_dagster_event().event_type for e in stretch} == {DagsterEventType.ASSET_MATERIALIZATION}:
                    self._store_materialization_batch(stretch)
                else:
                    super().store_event_batch(stretch)

    def _store_materialization_batch(self, events: Sequence[EventLogEntry]) -> None:
        """What dagster-postgres's `store_event_batch` does with materializations (the rows, their
        indexed tags, the asset-key row from the last one), with each table's rows sent as arrays
        to one INSERT ... SELECT: SQLAlchemy compiles a multi-row VALUES statement anew for every
        batch (~40 us a row), and inserts the tags with executemany. The events' JSON is Dagster's,
        byte for byte, with what they share serialized once (event_json)."""
        rows = materialization_rows(self, events)
        with self._connect() as conn:
            ids = conn.execute(_EVENTS_FROM_ARRAYS, {
                column: [row[column] for row in rows] for column in _EVENT_COLUMNS
            }).scalars().all()
            if len(ids) != len(events):
                raise DagsterInvariantViolationError(f"stored {len(ids)} of {len(events)} materializations")
            tags = [
                (event_id, row["asset_key"], key, value, row["timestamp"])
                for event, event_id, row in zip(events, ids, rows)
                for key, value in self._tags_for_asset_event(event).items()
            ]
            if tags and self.has_table(AssetEventTagsTable.name):
                conn.execute(_TAGS_FROM_ARRAYS, dict(zip(_TAG_COLUMNS, map(list, zip(*tags)))))
        with self.index_transaction() as conn:
            self._store_asset_event(conn, events[-1], int(ids[-1]))

    @contextmanager
    def _one_transaction(self) -> Iterator[None]:
        """Every statement Dagster makes to store an event (or a batch), on one connection, in one
        transaction: one commit, where Dagster's autocommit makes each statement its own (an
        evaluation's insert, its NOTIFY and its check-row update: three WAL flushes). Also atomic:
        an event is never stored without its index rows."""
        if getattr(self._held, "conn", None) is not None:  # already inside one
            yield
            return
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
        super().dispose()
        self._engine.dispose()


def materialization_rows(storage: BulkPostgresEventLogStorage, events: Sequence[EventLogEntry]) -> list[dict]:
    """`storage._event_to_row(event)` for each materialization, with the serialization shared
    (event_json); the other columns as Dagster derives them."""
    rows = []
    for event, text in zip(events, serialize_events(events), strict=True):
        dagster_event = event.get_dagster_event()
        rows.append({
            "run_id": event.run_id,
            "event": text,
            "dagster_event_type": dagster_event.event_type_value,
            "timestamp": storage._event_insert_timestamp(event),
            "step_key": dagster_event.step_key,
            "asset_key": dagster_event.asset_key.to_string() if dagster_event.asset_key else None,
            "partition": dagster_event.partition or None,
        })
    return rows


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
# Rows in array order, so ids ascend as in Dagster's multi-row insert.
_EVENTS_FROM_ARRAYS = sa.text(f"""
    INSERT INTO {SqlEventLogStorageTable.name} ({", ".join(_EVENT_COLUMNS)})
    SELECT {", ".join(f"r.{c}" for c in _EVENT_COLUMNS)}
    FROM unnest({", ".join(f":{c}" for c in _EVENT_COLUMNS)}) WITH ORDINALITY
         AS r({", ".join(_EVENT_COLUMNS)}, n)
    ORDER BY r.n
    RETURNING id
""").bindparams(*(
    sa.bindparam(c, type_=postgresql.ARRAY(sa.DateTime() if c == "timestamp" else sa.Text())) for c in _EVENT_COLUMNS
))
_TAG_COLUMNS = ("event_id", "asset_key", "key", "value", "event_timestamp")
_TAGS_FROM_ARRAYS = sa.text(f"""
    INSERT INTO {AssetEventTagsTable.name} ({", ".join(_TAG_COLUMNS)})
    SELECT * FROM unnest({", ".join(f":{c}" for c in _TAG_COLUMNS)})
""").bindparams(
    sa.bindparam("event_id", type_=postgresql.ARRAY(sa.BigInteger())),
    *(sa.bindparam(c, type_=postgresql.ARRAY(sa.Text())) for c in ("asset_key", "key", "value")),
    sa.bindparam("event_timestamp", type_=postgresql.ARRAY(sa.DateTime())),
)


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


def storage_yaml(postgres_url: str, event_log: str = "bulk") -> str:
    """The storage sections of a `dagster.yaml` keeping everything in one PostgreSQL database, with
    this event log and the pooled run storage (`bulk`, as the project's dagster.yaml) or
    dagster-postgres's own (`stock`). For instances made on the fly: tests and benchmarks."""
    if event_log == "stock":
        return f"storage:\n  postgres:\n    postgres_url: {postgres_url}\n"
    if event_log != "bulk":
        raise ValueError(f"event_log is 'bulk' or 'stock', not {event_log!r}")
    return "".join(
        f"{kind}:\n  module: {module}\n  class: {cls}\n  config:\n    postgres_url: {postgres_url}\n"
        for kind, module, cls in [
            ("run_storage", "backfill_dagster.orchestration.run_storage", "PooledPostgresRunStorage"),
            ("event_log_storage", __name__, BulkPostgresEventLogStorage.__name__),
            ("schedule_storage", "dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
        ]
    )

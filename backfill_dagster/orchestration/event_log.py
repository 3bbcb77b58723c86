"""Dagster's PostgreSQL event log, writing a range run's per-partition events in bulk.

Selected in `dagster.yaml` (`event_log_storage`). A run over N partitions makes Dagster write, per
partition, a materialization-planned event, a materialization and a check evaluation, plus one
check-planned event that lists all N keys. dagster-postgres 1.13 writes them as if each were alone:

- every statement on a new connection (NullPool: an idle instance holds none), ~5 ms each here;
- planned events one at a time, each an insert plus a has-table query, a schema inspection and an
  asset-key upsert, although Dagster hands them over in batches (`store_event_batch`), as it
  already bulk-inserts materializations;
- the check-planned event, which lists all N partitions, serialised again and copied whole into
  each of its N per-partition rows: N² in time and bytes (the measured trap of DESIGN §4).

This subclass writes the same rows (a planned check row holds a smaller copy of its event), in far
fewer round trips: pooled connections, kept per process
(checked on checkout, never shared across a fork), planned events as one multi-row insert per
batch, each planned check row with the event minus the partition list, each event (or batch) in
one transaction instead of a commit per statement, and the schema facts (a table or column exists)
remembered once seen. Reads and every other write are Dagster's own. It also turns on Dagster's
event batching (`DAGSTER_EVENT_BATCH_SIZE`) in every process that opens the instance — webserver,
daemon, run workers, CLI — since batches are what it makes cheap. bench/bookkeeping.py measures
it against the stock storage; tests/orchestration/test_event_log.py shows both give the same
statuses.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from dagster_shared.record import replace
from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, SqlEventLogStorageTable
from dagster._serdes import ConfigurableClassData, serialize_value
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.utils import (
    create_pg_connection,
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)

from backfill_dagster.orchestration.bookkeeping import batch_dagster_events

# Connections kept per process: Dagster's storage opens a second one inside some writes (an index
# transaction while an insert's connection is still held). Beyond these, connections are opened
# and closed on return; -1: never make a thread wait for one.
POOL_SIZE = 2
# A check planned over this many partitions refreshes the table's statistics (see below).
ANALYZE_AFTER_PLANNED_ROWS = 500
POOL_RECYCLE_S = 3600


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

    def store_event(self, event: EventLogEntry) -> None:
        with self._one_transaction():
            super().store_event(event)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        kinds = {event.get_dagster_event().event_type for event in events}
        with self._one_transaction():
            if kinds == {DagsterEventType.ASSET_MATERIALIZATION_PLANNED}:
                self._store_planned_batch(events)
            else:
                super().store_event_batch(events)

    @contextmanager
    def _one_transaction(self) -> Iterator[None]:
        """Every statement Dagster makes to store an event (or a batch), on one connection, in one
        transaction: one commit, where Dagster's autocommit makes each statement its own (an
        evaluation's insert, its NOTIFY and its check-row update: three WAL flushes). Also atomic:
        an event is never stored without its index rows."""
        if getattr(self._held, "conn", None) is not None:  # already inside one
            yield
            return
        self._held.analyze = False
        with create_pg_connection(self._engine) as conn:
            conn = conn.execution_options(isolation_level="READ COMMITTED")
            with conn.begin():
                self._held.conn = conn
                try:
                    yield
                finally:
                    self._held.conn = None
        if self._held.analyze:
            with create_pg_connection(self._engine) as conn:
                conn.execute(sa.text(f"ANALYZE {AssetCheckExecutionsTable.name}"))

    @contextmanager
    def _connect(self) -> Iterator[sa.engine.Connection]:
        held = getattr(self._held, "conn", None)
        if held is not None:
            yield held
            return
        with create_pg_connection(self._engine) as conn:
            yield conn

    def _store_planned_batch(self, events: Sequence[EventLogEntry]) -> None:
        """What `store_event` does for each planned event, in two round trips for the batch.

        Planned events carry no tags to index, and the asset-key row keeps only the latest event's
        run and timestamp, so updating it with each asset's last event is the same end state.
        """
        insert = self.prepare_insert_event_batch(events).returning(SqlEventLogStorageTable.c.id)
        with self._connect() as conn:
            ids = [int(row[0]) for row in conn.execute(insert).fetchall()]
        last: dict[str, tuple[EventLogEntry, int]] = {}
        for event, event_id in zip(events, ids, strict=True):
            last[event.get_dagster_event().asset_key.to_string()] = (event, event_id)
        with self.index_transaction() as conn:
            for event, event_id in last.values():
                self._store_asset_event(conn, event, event_id)

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        """One PLANNED row per partition, as Dagster stores them, but each row's copy of the event
        without the list of every partition the run plans (the event log keeps that, once).

        Dagster copies the whole planned event, subset and all, into each of the N rows: N² bytes
        (5,000 partitions: a 106 MB table instead of 8.7 MB, read back by status queries). The
        row's own partition is in its `partition` column; nothing reads the subset back from a
        row (only this method reads it, from the incoming event; the UI reads a planned row's
        step and time).
        """
        planned = event.get_dagster_event().event_specific_data
        keys = planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        row_event = event
        if planned.partitions_subset is not None:
            row_event = event._replace(
                dagster_event=event.dagster_event._replace(
                    event_specific_data=replace(planned, partitions_subset=None)
                )
            )
        common = dict(
            asset_key=planned.asset_key.to_string(),
            check_name=planned.check_name,
            run_id=event.run_id,
            execution_status=AssetCheckExecutionRecordStatus.PLANNED.value,
            evaluation_event=serialize_value(row_event),
            evaluation_event_timestamp=self._event_insert_timestamp(event),
            evaluation_event_storage_id=event_id,
        )
        with self.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.insert(), [{**common, "partition": key} for key in keys])
        # Each evaluation then updates its row by (asset, check, run, partition). Right after
        # thousands of new rows PostgreSQL's statistics are stale, and it may walk the (asset,
        # check) index filtering by run: 2 ms per evaluation instead of 0.1 ms (measured at 5,000).
        if len(keys) >= ANALYZE_AFTER_PLANNED_ROWS:
            self._held.analyze = True

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


def pooled_engine(postgres_url: str, token_provider, stock_url: sa.engine.URL) -> sa.engine.Engine:
    """Autocommit engine keeping `POOL_SIZE` connections, as Dagster's webserver does for itself,
    made safe for processes that fork: a connection is only ever used by the process that opened
    it."""
    kwargs: dict[str, Any] = dict(
        isolation_level="AUTOCOMMIT", pool_size=POOL_SIZE, max_overflow=-1,
        pool_recycle=POOL_RECYCLE_S, pool_pre_ping=True,
    )
    options = stock_url.query.get("options")
    if options:
        kwargs["connect_args"] = {"options": options}
    engine = create_pg_engine(postgres_url, token_provider, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def remember_pid(dbapi_connection, record) -> None:
        record.info["pid"] = os.getpid()

    @sa.event.listens_for(engine, "checkout")
    def refuse_inherited(dbapi_connection, record, proxy) -> None:
        # SQLAlchemy's recipe for pools across fork: drop a connection the parent opened.
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise sa.exc.DisconnectionError("connection opened by another process")

    return engine


def storage_yaml(postgres_url: str, event_log: str = "bulk") -> str:
    """The storage sections of a `dagster.yaml` keeping everything in one PostgreSQL database, with
    this event log (`bulk`, as the project's dagster.yaml) or dagster-postgres's own (`stock`).
    For instances made on the fly: tests and benchmarks."""
    if event_log == "stock":
        return f"storage:\n  postgres:\n    postgres_url: {postgres_url}\n"
    if event_log != "bulk":
        raise ValueError(f"event_log is 'bulk' or 'stock', not {event_log!r}")
    return "".join(
        f"{kind}:\n  module: {module}\n  class: {cls}\n  config:\n    postgres_url: {postgres_url}\n"
        for kind, module, cls in [
            ("run_storage", "dagster_postgres.run_storage", "PostgresRunStorage"),
            ("event_log_storage", __name__, BulkPostgresEventLogStorage.__name__),
            ("schedule_storage", "dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
        ]
    )

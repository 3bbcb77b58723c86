"""Keep Dagster's per-partition bookkeeping in proportion to the work (DESIGN §4).

A range run writes at least one event per partition and asset (the planned event and the
materialization). On PostgreSQL, dagster-postgres opens a new connection for every event-log
write (NullPool, so idle instances hold none), which makes each event cost several milliseconds;
a run worker writes thousands of them in a burst. Holding one pooled connection for the life of
the run worker process cuts that cost roughly by three (bench/bookkeeping.py); the project's own
storages (event_log.py, run_storage.py) pool anyway. Events are batched, and a run's partitions are
computed without one Dagster key object per partition.
"""

import os
from datetime import date

import dagster as dg
import sqlalchemy.pool

from backfill_dagster.domain.calendar import SessionCalendar
from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME, parse_partition_key

# Planned and materialization events written in batches of this size (read per event by Dagster):
# a range result's materializations are emitted together, so 1,000 costs no latency and saves a
# commit and an asset-row update per 100 (~0.1 s in 5,000 partitions, bench/bookkeeping.py).
EVENT_BATCH_SIZE = "1000"


def batch_dagster_events() -> None:
    """Let this process's runs write their events in batches, unless the operator chose otherwise."""
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)


def hold_event_log_connection(instance: dg.DagsterInstance) -> None:
    """Switch a PostgreSQL event log from a connection per write to one pooled connection.

    Uses the storage's own `optimize_for_webserver`, which the webserver calls for the same reason;
    no statement timeout (0), recycled hourly. A no-op for SQLite and once already pooled.
    """
    storage = instance.event_log_storage
    engine = getattr(storage, "_engine", None)
    optimize = getattr(storage, "optimize_for_webserver", None)
    if engine is None or optimize is None or not isinstance(engine.pool, sqlalchemy.pool.NullPool):
        return
    if engine.dialect.name != "postgresql":
        return
    optimize(statement_timeout=0, pool_recycle=3600, max_overflow=2)


def run_partitions(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, calendar: SessionCalendar
) -> list[tuple[str, date]]:
    """The run's (symbol, session) partitions, as `context.partition_keys` names them, in its order.

    The same box (sessions start..end x symbols start..end in the dynamic partitions' order, dates
    outermost) without Dagster's one MultiPartitionKey object per partition and the parse back:
    ~45 us a partition, twice per run. Raises Dagster's error for a run without partitions.
    """
    key_range = context.op_execution_context.partition_key_range
    (first_symbol, first_session), (last_symbol, last_session) = (
        parse_partition_key(key, calendar) for key in (key_range.start, key_range.end)
    )
    if (first_symbol, first_session) == (last_symbol, last_session):
        return [(first_symbol, first_session)]
    order = list(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    if first_symbol not in order or last_symbol not in order:
        missing = first_symbol if first_symbol not in order else last_symbol
        raise dg.DagsterUnknownPartitionError(f"symbol {missing!r} is not a symbol partition")
    symbols = order[order.index(first_symbol) : order.index(last_symbol) + 1]
    return [(symbol, session) for session in calendar.sessions(first_session, last_session) for symbol in symbols]

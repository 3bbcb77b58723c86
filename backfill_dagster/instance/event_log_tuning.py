"""Event-log tuning for every process that writes Dagster events: batched events handed straight
to the instance (log_manager.py), and one held connection instead of a new one per write (docs/design.md).

A range run writes at least one event per partition and asset, and dagster-postgres's stock event
log opens a connection for every write; holding one for the run worker's life cuts that cost
roughly by three (docs/benchmarks.md). The project's own storages (event_log.py, run_storage.py)
pool anyway.
"""

import os

import dagster as dg
import sqlalchemy.pool

from backfill_dagster.instance import log_manager

# Planned and materialization events written in batches of this size (read per event by Dagster):
# a range result's materializations are emitted together, so 1,000 costs no latency and saves a
# commit and an asset-row update per 100 (~0.1 s in 5,000 partitions, bench/bookkeeping.py).
EVENT_BATCH_SIZE = "1000"


def batch_dagster_events() -> None:
    """Let this process's runs write their events in batches, unless the operator chose otherwise,
    and hand the batched events to the instance without Python's logging when nothing else wants them."""
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)
    log_manager.install()


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

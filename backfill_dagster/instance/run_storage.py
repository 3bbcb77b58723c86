"""Dagster's PostgreSQL run storage with pooled connections and its schema facts remembered.

Selected in `dagster.yaml` (`run_storage`). dagster-postgres 1.13 opens a new connection for every
statement (NullPool) and inspects the `runs` table's columns on every run event it records
(`has_run_stats_index_cols`): a run's start, success and each status change cost several
connections and catalog queries, ~0.1 s per run here, which a backfill of many runs pays again
and again (bench/provider_backfill.py). This subclass keeps connections as the bulk event log
does (event_log.pooled_engine: per process, safe across fork) and remembers the columns once seen.
It also keeps the backfill daemon's backfill rows (instance/backfill_rows.py): in dagster-daemon's
backfill threads a read of a backfill asks PostgreSQL for the row's version and deserializes the
body only when this process does not hold that version, and a write says which version it made
(`UPDATE ... RETURNING xmin`) instead of reading the whole row first to see that it exists. And it
lists what unfinished backfills target without their rows, for the gap sensor
(`backfill_selections`, instance/backfill_selection.py). Everything else is dagster-postgres's own.

It is also the first storage an instance loads: when dagster.yaml's connection variables are not
set (`dagster dev` started in the checkout, whose dagster.yaml is the production instance) it stops
the load with one sentence saying what to set, instead of Dagster's traceback per variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import click
import sqlalchemy as db
from dagster import _check as check
from dagster._config import Field, Permissive, process_config, resolve_to_config_type
from dagster._core.errors import DagsterInvalidConfigError, DagsterInvariantViolationError
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus, PartitionBackfill
from dagster._core.execution.bulk_actions import BulkActionType
from dagster._core.storage.runs.migration import BACKFILL_JOB_NAME_AND_TAGS
from dagster._core.storage.runs.schema import BulkActionsTable
from dagster._serdes import ConfigurableClassData, deserialize_value, serialize_value
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

from backfill_dagster.instance.backfill_selection import BackfillSelection
from backfill_dagster.instance.backfill_rows import BackfillRowCache, in_backfill_daemon
from backfill_dagster.instance.event_log import pooled_engine
from backfill_dagster.instance.run_worker import this_worker


class InstanceEnvironmentError(click.ClickException):
    """The production instance's connection variables are not set. A ClickException: Dagster's
    commands (`dagster dev`, `dagster-webserver`, `dagster-daemon`) print its one sentence, not a
    traceback; elsewhere it is an ordinary exception with that message."""


def unset_variables(postgres_db: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """The variables `postgres_db`'s `{env: NAME}` values name that `env` does not set, sorted."""
    return sorted(value["env"] for value in postgres_db.values()
                  if isinstance(value, Mapping) and "env" in value and value["env"] not in env)


def unset_variables_message(names: list[str]) -> str:
    are = "is" if len(names) == 1 else "are"
    return (
        f"This dagster.yaml is the production instance and {', '.join(names)} {are} not set: set the "
        "DAGSTER_PG_* variables (README, \"Deploy\"), or export DAGSTER_HOME=$PWD/data/dagster_home "
        "to use the embedded instance that `backfill-dagster demo` made."
    )


# A bulk_actions row's version: the id of the transaction that wrote it (PostgreSQL's xmin column).
ROW_VERSION = db.cast(db.literal_column("bulk_actions.xmin"), db.Text).label("version")
# A backfill's asset selection as its body's JSON holds it, read out by PostgreSQL.
ASSET_SELECTION_JSON = db.literal_column("(bulk_actions.body::json -> 'asset_selection')::text").label("selection")


class PooledPostgresRunStorage(PostgresRunStorage):
    """PostgreSQL run storage that keeps its connections and its schema checks."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: ConfigurableClassData | None = None, token_provider=None):
        self._has_run_stats_cols = False
        self.backfill_rows = BackfillRowCache()
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        stock = self._engine
        self._engine = pooled_engine(self.postgres_url, self._token_provider, stock.url)
        stock.dispose()

    @classmethod
    def config_type(cls):
        # postgres_db as written: its variables are checked all at once in from_config_value, then
        # the whole section is processed against dagster-postgres's own schema.
        return {**super().config_type(), "postgres_db": Field(Permissive(), is_required=False)}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledPostgresRunStorage:
        unset = unset_variables(config_value.get("postgres_db") or {}, os.environ)
        if unset:
            raise InstanceEnvironmentError(unset_variables_message(unset))
        result = process_config(resolve_to_config_type(super().config_type()), dict(config_value))
        if not result.success:
            raise DagsterInvalidConfigError("Errors whilst loading the run storage's configuration.", result.errors,
                                            config_value)
        config_value = result.value
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )

    def has_run_stats_index_cols(self) -> bool:
        # Asked on every run event; columns, once there, stay.
        if not self._has_run_stats_cols:
            self._has_run_stats_cols = super().has_run_stats_index_cols()
        return self._has_run_stats_cols

    def handle_run_event(self, run_id: str, event: DagsterEvent, update_timestamp=None) -> None:
        if event.event_type == DagsterEventType.RUN_START:
            # Tags first (each statement commits on its own): a reader that sees the run started
            # also sees who runs it.
            self.add_run_tags(run_id, this_worker())
        super().handle_run_event(run_id, event, update_timestamp)

    # ------------------------------------------------------------------ backfill rows (backfill_rows.py)
    def get_backfill(self, backfill_id: str) -> PartitionBackfill | None:
        if not in_backfill_daemon():
            return super().get_backfill(backfill_id)
        check.str_param(backfill_id, "backfill_id")
        with self.connect() as conn:
            row = conn.execute(db.select(ROW_VERSION).where(BulkActionsTable.c.key == backfill_id)).fetchone()
            if row is None:
                self.backfill_rows.drop(backfill_id)
                return None
            held = self.backfill_rows.get(backfill_id, row[0])
            if held is not None:
                return held
            row = conn.execute(db.select(ROW_VERSION, BulkActionsTable.c.body)
                               .where(BulkActionsTable.c.key == backfill_id)).fetchone()
        if row is None:  # deleted between the two statements
            return None
        backfill = deserialize_value(row[1], PartitionBackfill)
        self.backfill_rows.put(backfill_id, row[0], backfill)
        return backfill

    def get_backfills(self, filters: BulkActionsFilter | None = None, cursor: str | None = None,
                      limit: int | None = None, status: BulkActionStatus | None = None):
        if (not in_backfill_daemon() or (status is not None and filters is not None)
                or (filters is not None and filters.tags and not self.has_built_index(BACKFILL_JOB_NAME_AND_TAGS))):
            # Dagster's own: its error for status with filters; tags it must check in the bodies.
            return super().get_backfills(filters=filters, cursor=cursor, limit=limit, status=status)
        if status is not None:
            filters = BulkActionsFilter(statuses=[status])
        # Dagster's query (filters, cursor, limit, newest first) selecting keys and versions, not bodies.
        table = self._add_backfill_filters_to_table(BulkActionsTable, filters)
        query = self._backfills_query(filters=filters).select_from(table)
        query = self._add_cursor_limit_to_backfills_query(query, cursor=cursor, limit=limit)
        query = query.order_by(BulkActionsTable.c.id.desc()).with_only_columns(BulkActionsTable.c.key, ROW_VERSION)
        with self.connect() as conn:
            versions = [(row[0], row[1]) for row in conn.execute(query)]
        found = {key: self.backfill_rows.get(key, version) for key, version in versions}
        missing = [key for key, backfill in found.items() if backfill is None]
        if missing:
            query = db.select(BulkActionsTable.c.key, ROW_VERSION, BulkActionsTable.c.body).where(
                BulkActionsTable.c.key.in_(missing))
            with self.connect() as conn:
                bodies = conn.execute(query).fetchall()
            for key, version, body in bodies:
                found[key] = deserialize_value(body, PartitionBackfill)
                self.backfill_rows.put(key, version, found[key])
        return [found[key] for key, _ in versions if found[key] is not None]

    def backfill_selections(self, statuses: Sequence[BulkActionStatus], limit: int) -> list[BackfillSelection]:
        """BackfillSelection.of each of `get_backfills(filters=BulkActionsFilter(statuses=statuses),
        limit=limit)` (newest first), without deserializing their bodies: an asset backfill's row at
        500 symbols x 504 sessions x 4 assets is 18-54 MB of JSON (48 MB half way, 234 MB once
        deserialized as Dagster reads it), and the gap sensor asks every tick only which assets an
        unfinished backfill targets. PostgreSQL
        reads the selection out of the body's JSON; whether it is an asset backfill is the row's
        `action_type`, which Dagster writes with the row (a row written before Dagster had that
        column is deserialized as Dagster reads it)."""
        # Dagster's query for get_backfills with these statuses (filter, limit, newest first), selecting
        # the key, the kind and the selection instead of the body.
        filters = BulkActionsFilter(statuses=list(statuses))
        table = self._add_backfill_filters_to_table(BulkActionsTable, filters)
        query = self._backfills_query(filters=filters).select_from(table)
        query = self._add_cursor_limit_to_backfills_query(query, cursor=None, limit=limit)
        query = query.order_by(BulkActionsTable.c.id.desc()).with_only_columns(
            BulkActionsTable.c.key, BulkActionsTable.c.action_type, ASSET_SELECTION_JSON)
        with self.connect() as conn:
            rows = conn.execute(query).fetchall()
        out = []
        for key, action_type, selection in rows:
            if action_type is None:
                backfill = self.get_backfill(key)
                if backfill is not None:
                    out.append(BackfillSelection.of(backfill))
                continue
            keys = None if selection is None else deserialize_value(selection)
            out.append(BackfillSelection(key, action_type == BulkActionType.MULTI_RUN_ASSET_ACTION.value,
                                         None if keys is None else tuple(keys)))
        return out

    def update_backfill(self, partition_backfill: PartitionBackfill) -> None:
        check.inst_param(partition_backfill, "partition_backfill", PartitionBackfill)
        backfill_id = partition_backfill.backfill_id
        caching = in_backfill_daemon()
        if caching:
            partition_backfill = self.backfill_rows.plain(partition_backfill)
        body = serialize_value(partition_backfill)  # before taking a pooled connection: seconds at scale
        with self.connect() as conn:
            # One statement: a missing row updates nothing and returns no version (Dagster reads
            # the whole row first to see that it exists).
            row = conn.execute(
                BulkActionsTable.update()
                .where(BulkActionsTable.c.key == backfill_id)
                .values(status=partition_backfill.status.value, body=body)
                .returning(ROW_VERSION)
            ).fetchone()
        if row is None:
            raise DagsterInvariantViolationError(f"Backfill {backfill_id} is not present in storage")
        if caching:
            self.backfill_rows.put(backfill_id, row[0], partition_backfill)

    def dispose(self) -> None:
        super().dispose()
        self._engine.dispose()

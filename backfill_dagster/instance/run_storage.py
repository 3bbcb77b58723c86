"""Dagster's PostgreSQL run storage with pooled connections and its schema facts remembered.

Selected in `dagster.yaml` (`run_storage`). dagster-postgres 1.13 opens a new connection for every
statement (NullPool) and inspects the `runs` table's columns on every run event it records
(`has_run_stats_index_cols`): a run's start, success and each status change cost several
connections and catalog queries, ~0.1 s per run here, which a backfill of many runs pays again
and again (bench/provider_backfill.py). This subclass keeps connections as the bulk event log
does (event_log.pooled_engine: per process, safe across fork) and remembers the columns once seen.
Everything else is dagster-postgres's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._serdes import ConfigurableClassData
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

from backfill_dagster.instance.event_log import pooled_engine
from backfill_dagster.instance.run_worker import this_worker


class PooledPostgresRunStorage(PostgresRunStorage):
    """PostgreSQL run storage that keeps its connections and its schema checks."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: ConfigurableClassData | None = None, token_provider=None):
        self._has_run_stats_cols = False
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        stock = self._engine
        self._engine = pooled_engine(self.postgres_url, self._token_provider, stock.url)
        stock.dispose()

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledPostgresRunStorage:
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

    def dispose(self) -> None:
        super().dispose()
        self._engine.dispose()

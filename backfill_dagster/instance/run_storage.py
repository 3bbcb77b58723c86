"""Dagster's PostgreSQL run storage with pooled connections and its schema facts remembered.

Selected in `dagster.yaml` (`run_storage`). dagster-postgres 1.13 opens a new connection for every
statement (NullPool) and inspects the `runs` table's columns on every run event it records
(`has_run_stats_index_cols`): a run's start, success and each status change cost several
connections and catalog queries, ~0.1 s per run here, which a backfill of many runs pays again
and again (bench/provider_backfill.py). This subclass keeps connections as the bulk event log
does (event_log.pooled_engine: per process, safe across fork) and remembers the columns once seen.
Everything else is dagster-postgres's own.

It is also the first storage an instance loads: when dagster.yaml's connection variables are not
set (`dagster dev` started in the checkout, whose dagster.yaml is the production instance) it stops
the load with one sentence saying what to set, instead of Dagster's traceback per variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import click
from dagster._config import Field, Permissive, process_config, resolve_to_config_type
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._serdes import ConfigurableClassData
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

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

    def dispose(self) -> None:
        super().dispose()
        self._engine.dispose()

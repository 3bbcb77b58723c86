"""Assemble the Definitions. Nothing else happens here."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.gap_policy import GapPolicy
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.instance.event_log_tuning import batch_dagster_events
from backfill_dagster.orchestration.assets import bar_assets
from backfill_dagster.orchestration.checks import bar_checks
from backfill_dagster.orchestration.corporate_actions import (
    build_corporate_actions_asset,
    build_corporate_actions_schedule,
    corporate_actions_job,
)
from backfill_dagster.orchestration.gap_sensor import build_gap_sensor
from backfill_dagster.orchestration.jobs import all_bars_job
from backfill_dagster.orchestration.partitions import bar_partitions
from backfill_dagster.orchestration import pool_wait  # noqa: F401  (installs: a run waiting for a pool slot sleeps)
from backfill_dagster.orchestration.resources import providers_resource, store_resource
from backfill_dagster.orchestration.schedules import build_schedules
from backfill_dagster.orchestration.sensors import watchlist_sync
from backfill_dagster.orchestration.split_checks import suspected_split_check
from backfill_dagster.orchestration.split_repair import build_split_repair_sensor
from backfill_dagster.orchestration.status_cache import build_status_cache_sensor
from backfill_dagster.providers.registry import check_provider_names
from backfill_dagster.settings import Settings, database_url_is_set


def build_definitions(
    settings: Settings,
    *,
    env_has_database_url: bool = False,
    gap_policy: GapPolicy | None = None,
    end_of_day_delay: timedelta | None = None,
) -> dg.Definitions:
    gap_policy = settings.gap_policy if gap_policy is None else gap_policy
    end_of_day_delay = settings.end_of_day_delay if end_of_day_delay is None else end_of_day_delay
    check_provider_names(settings.providers)
    partitions_def = bar_partitions(settings.history_start, xnys())
    assets = bar_assets(partitions_def, settings.providers)
    return dg.Definitions(
        assets=[*assets.values(), build_corporate_actions_asset(settings.history_start)],
        asset_checks=[
            *bar_checks(assets, settings.completeness_warn_below),
            suspected_split_check(assets[Timeframe.D1]),
        ],
        jobs=[all_bars_job, corporate_actions_job],
        sensors=[
            watchlist_sync, build_gap_sensor(settings.history_start, gap_policy),
            build_split_repair_sensor(settings.history_start),
            build_status_cache_sensor(list(assets.values())),
        ],
        schedules=[*build_schedules(end_of_day_delay), build_corporate_actions_schedule()],
        resources={
            "store": store_resource(settings, env_has_database_url),
            "providers": providers_resource(settings),
        },
        # The steps are I/O-bound; a process per step would cost ~2 s each (docs/design.md).
        executor=dg.in_process_executor,
    )


@dg.definitions
def defs() -> dg.Definitions:
    batch_dagster_events()  # this process's runs, when it is a run worker
    return build_definitions(Settings.from_env(), env_has_database_url=database_url_is_set())

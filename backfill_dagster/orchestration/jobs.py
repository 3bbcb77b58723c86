"""Jobs: all bar assets together, for range runs launched by the CLI, schedules and sensors."""

from __future__ import annotations

import dagster as dg

from backfill_dagster.orchestration.assets import GROUP

ALL_BARS_JOB = "all_bars"

all_bars_job = dg.define_asset_job(
    ALL_BARS_JOB,
    selection=dg.AssetSelection.groups(GROUP),
    description="Fetch m15 and d1 and derive h1/h4 for a box of sessions x symbols, in one run.",
)

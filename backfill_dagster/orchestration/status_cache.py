"""The `partition_status_cache` sensor: keep Dagster's partition status cache of the bar assets
current, so the UI never has to build it while a user waits.

Dagster keeps each partitioned asset's materialized, failed and in-progress partitions in a cache
row, and brings it up to date when something reads it: a UI page, usually. Brought up to date
often, each update reads only the events since the last one; left alone during a whole-market
backfill, the first page opened afterwards rebuilds it from every event (38-70 s per page at
252,000 partitions per asset, docs/benchmarks.md). This sensor reads it through Dagster's
public `get_status_by_partition` each minute, so that work happens here, a little at a time; an
asset whose row already covers every event is left alone (instance/cached_status.py: re-serializing
252,000 keys that did not change is most of what an update costs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import dagster as dg

from backfill_dagster.instance.cached_status import is_current

SENSOR_NAME = "partition_status_cache"
# A tick stops starting assets after this long: a cache built from scratch (a deployment whose
# history was written before this sensor ran) takes several seconds per asset at whole-market
# scale, and the daemon cancels a tick at 60 s. The remaining assets go first in the next tick.
TICK_BUDGET_S = 20.0


def build_status_cache_sensor(
    assets: Sequence[dg.AssetsDefinition],
    *,
    budget_s: float = TICK_BUDGET_S,
    clock: Callable[[], float] = time.monotonic,
    minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """The sensor over these partitioned assets, in this order."""
    targets = [(a.key, a.partitions_def) for a in assets if a.partitions_def is not None]

    @dg.sensor(
        name=SENSOR_NAME,
        description=(
            "Keeps Dagster's partition status cache of the bar assets current (materialized, failed, "
            "in progress), a little each minute, so the asset pages open in seconds after a large "
            "backfill instead of rebuilding it from every event. Requests no runs."
        ),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def partition_status_cache(context: dg.SensorEvaluationContext):
        start = int(context.cursor or 0) % len(targets)
        order = targets[start:] + targets[:start]
        began = clock()
        done, current = [], []
        for key, partitions_def in order:
            if done and clock() - began > budget_s:
                break
            if is_current(context.instance, key, partitions_def):  # nothing happened since it was written
                current.append(key.to_user_string())
                continue
            asset_began = clock()
            # Public API; with no keys asked it only brings the cache up to date and stores it.
            context.instance.get_status_by_partition(key, [], partitions_def)
            done.append(f"{key.to_user_string()} {clock() - asset_began:.1f} s")
        seen = len(done) + len(current)
        context.update_cursor(str((start + seen) % len(targets)))
        left = len(targets) - seen
        return dg.SkipReason(
            "partition status cache "
            + "; ".join(
                part for part in (
                    f"brought up to date: {', '.join(done)}" if done else "",
                    f"already current: {', '.join(current)}" if current else "",
                    f"{left} asset(s) next tick (the {budget_s:g} s budget was spent)" if left else "",
                ) if part
            )
        )

    return partition_status_cache

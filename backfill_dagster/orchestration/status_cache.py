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

An update's cost is mostly fixed at that size (10-17 s of the code server's CPU per asset while a
whole-market backfill streams in materializations, measured), so updating every asset every
minute or two took a third to a half of one of the machine's cores from the backfill itself. An
asset therefore rests after an update for REST_PER_SECOND_SPENT times as long as the update took:
at whole-market size its row trails the events by a few minutes during a backfill (a page opened
meanwhile brings it up to date itself, reading only those minutes' events), and the sensor's share
of a core stays near a tenth; at ordinary sizes an update takes a fraction of a second and the rest
is shorter than the sensor's interval.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import dagster as dg

from backfill_dagster.instance.cached_status import is_current

SENSOR_NAME = "partition_status_cache"
# A tick stops starting assets after this long: a cache built from scratch (a deployment whose
# history was written before this sensor ran) takes several seconds per asset at whole-market
# scale, and the daemon cancels a tick at 60 s. The remaining assets go first in the next tick.
TICK_BUDGET_S = 20.0
# Seconds an asset's row is left alone per second its last update took.
REST_PER_SECOND_SPENT = 30.0


def _read_cursor(cursor: str | None) -> tuple[int, dict[str, float]]:
    """(the asset to start with, each resting asset's end of rest in epoch seconds)."""
    try:
        data = json.loads(cursor) if cursor else 0
    except ValueError:
        return 0, {}
    if isinstance(data, int):  # a cursor written before assets rested: the next asset only
        return data, {}
    return int(data.get("next", 0)), {str(k): float(v) for k, v in dict(data.get("rest_until", {})).items()}


def build_status_cache_sensor(
    assets: Sequence[dg.AssetsDefinition],
    *,
    budget_s: float = TICK_BUDGET_S,
    clock: Callable[[], float] = time.monotonic,
    now: Callable[[], float] = time.time,
    rest_per_second: float = REST_PER_SECOND_SPENT,
    minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """The sensor over these partitioned assets, in this order. `clock` times the updates, `now`
    (epoch seconds) dates the rests, which outlive the code server's process in the cursor."""
    targets = [(a.key, a.partitions_def) for a in assets if a.partitions_def is not None]

    @dg.sensor(
        name=SENSOR_NAME,
        description=(
            "Keeps Dagster's partition status cache of the bar assets current (materialized, failed, "
            "in progress), a little each minute, so the asset pages open in seconds after a large "
            "backfill instead of rebuilding it from every event; an asset whose update took long rests "
            "for a while after it (a page opened meanwhile catches up itself). Requests no runs."
        ),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def partition_status_cache(context: dg.SensorEvaluationContext):
        start, rest_until = _read_cursor(context.cursor)
        start %= len(targets)
        order = targets[start:] + targets[:start]
        began, at = clock(), now()
        done, current, resting = [], [], []
        for key, partitions_def in order:
            if done and clock() - began > budget_s:
                break
            name = key.to_user_string()
            if is_current(context.instance, key, partitions_def):  # nothing happened since it was written
                current.append(name)
                continue
            if at < rest_until.get(name, 0.0):
                resting.append(f"{name} {rest_until[name] - at:.0f} s")
                continue
            asset_began = clock()
            # Public API; with no keys asked it only brings the cache up to date and stores it.
            context.instance.get_status_by_partition(key, [], partitions_def)
            spent = clock() - asset_began
            rest_until[name] = now() + rest_per_second * spent
            done.append(f"{name} {spent:.1f} s")
        seen = len(done) + len(current) + len(resting)
        rest_until = {k: v for k, v in rest_until.items() if v > at}
        context.update_cursor(json.dumps({"next": (start + seen) % len(targets), "rest_until": rest_until}))
        left = len(targets) - seen
        return dg.SkipReason(
            "partition status cache "
            + "; ".join(
                part for part in (
                    f"brought up to date: {', '.join(done)}" if done else "",
                    f"already current: {', '.join(current)}" if current else "",
                    f"resting: {', '.join(resting)}" if resting else "",
                    f"{left} asset(s) next tick (the {budget_s:g} s budget was spent)" if left else "",
                ) if part
            )
        )

    return partition_status_cache

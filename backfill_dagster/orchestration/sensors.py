"""Sensors: keep the symbol partitions in step with the watchlist table."""

import dagster as dg

from backfill_dagster.orchestration.partitions import SYMBOL_PARTITIONS
from backfill_dagster.orchestration.resources import StoreResource


@dg.sensor(
    name="watchlist_sync",
    description=(
        "Adds a symbol partition for every active watchlist symbol and removes those of symbols "
        "no longer active, however the table was changed."
    ),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def watchlist_sync(context: dg.SensorEvaluationContext, store: StoreResource):
    active = store.watchlist().active()
    current = context.instance.get_dynamic_partitions(SYMBOL_PARTITIONS.name)
    known = set(current)
    wanted = set(active)
    add = [s for s in active if s not in known]
    delete = [s for s in current if s not in wanted]
    if not add and not delete:
        return dg.SkipReason(f"symbol partitions match the watchlist ({len(active)} active symbols)")
    requests = []
    if add:
        requests.append(SYMBOL_PARTITIONS.build_add_request(add))
    if delete:
        requests.append(SYMBOL_PARTITIONS.build_delete_request(delete))
    context.log.info(f"watchlist sync: adding {add or 'none'}, removing {delete or 'none'}")
    return dg.SensorResult(dynamic_partitions_requests=requests)

"""Sensors: keep the symbol partitions in step with the watchlist table, and have the corporate
actions of new symbols fetched."""

import json

import dagster as dg
from dagster._core.storage.tags import RUN_KEY_TAG, SENSOR_NAME_TAG

from backfill_dagster.orchestration.corporate_actions import JOB as CORPORATE_ACTIONS_JOB, refresh_run_config
from backfill_dagster.orchestration.partitions import SYMBOL_PARTITIONS, plan_watchlist_sync
from backfill_dagster.orchestration.resources import ProvidersResource, StoreResource
from backfill_dagster.providers.registry import action_publishers

NAME = "watchlist_sync"


@dg.sensor(
    name=NAME,
    description=(
        "Adds a symbol partition for every active watchlist symbol and removes those of symbols "
        "no longer active, however the table was changed; a symbol partition added in the UI (Add "
        "partition) puts that symbol on the watchlist. Requests the corporate actions of active "
        "symbols no provider has been asked about yet, when a configured provider publishes them."
    ),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    job_name=CORPORATE_ACTIONS_JOB,
)
def watchlist_sync(context: dg.SensorEvaluationContext, store: StoreResource, providers: ProvidersResource):
    watchlist = store.watchlist()
    current = context.instance.get_dynamic_partitions(SYMBOL_PARTITIONS.name)
    synced = json.loads(context.cursor) if context.cursor else None
    plan = plan_watchlist_sync(watchlist.active(), current, synced)
    if plan.adopt:
        watchlist.add(plan.adopt)
    for key, why in plan.refused.items():
        context.log.warning(f"symbol partition {key!r} was added outside the watchlist and is no symbol: {why}; "
                            "deleting it (add symbols with backfill-dagster watchlist add)")
    active = watchlist.active()
    run, note = corporate_actions_request(context, store, providers, active)
    cursor = json.dumps(plan.synced)
    refused = list(plan.refused)
    if not plan.add and not plan.delete and not plan.adopt and run is None:
        context.update_cursor(cursor)
        return dg.SkipReason(f"symbol partitions match the watchlist ({len(active)} active symbols); {note}")
    requests = []
    if plan.add:
        requests.append(SYMBOL_PARTITIONS.build_add_request(plan.add))
    if plan.delete:
        requests.append(SYMBOL_PARTITIONS.build_delete_request(plan.delete))
    adopted = f"; put on the watchlist (added as partitions in the UI): {_listed(plan.adopt)}" if plan.adopt else ""
    context.log.info(f"watchlist sync: adding {_listed(plan.add)}, removing {_listed(plan.delete)}{adopted}"
                     + (f" (no symbols: {_listed(refused)})" if refused else "") + f"; {note}")
    return dg.SensorResult(run_requests=[run] if run else [], dynamic_partitions_requests=requests, cursor=cursor)


def corporate_actions_request(
    context: dg.SensorEvaluationContext, store: StoreResource, providers: ProvidersResource, active: list[str]
) -> tuple[dg.RunRequest | None, str]:
    """A refresh of the corporate actions of active symbols no provider has been asked about yet
    (however they were added: this sensor, the CLI, plain SQL), or None; and a note saying which."""
    publishers = action_publishers(providers.names)
    if not publishers:
        return None, (f"corporate actions not asked: no provider in BACKFILL_PROVIDERS "
                      f"({','.join(providers.names)}) publishes them")
    checked = set(store.actions().checks(active)["symbol"]) if active else set()
    unchecked = [s for s in active if s not in checked]
    if not unchecked:
        return None, "every active symbol's corporate actions were asked for"
    # One run per set of new symbols: Dagster never launches a run key twice, so one it has seen is
    # not requested again (the corporate_actions_daily schedule asks for every symbol each session).
    run_key = f"corporate_actions:{','.join(unchecked)}"
    earlier = context.instance.get_runs(
        filters=dg.RunsFilter(tags={SENSOR_NAME_TAG: NAME, RUN_KEY_TAG: run_key}), limit=1
    )
    if earlier:
        return None, (f"corporate actions of {_listed(unchecked)} requested already (run {earlier[0].run_id[:8]}, "
                      f"{earlier[0].status.value.lower()}); corporate_actions_daily asks again")
    return (dg.RunRequest(run_key=run_key, run_config=refresh_run_config(unchecked)),
            f"corporate actions asked for {_listed(unchecked)} ({', '.join(publishers)})")


def _listed(symbols: list[str], shown: int = 10) -> str:
    """Symbols for a log line: all of a few, the count and the first ones of many (500 symbols
    added at once would make a 4 KB line in the daemon's log every time)."""
    if not symbols:
        return "none"
    if len(symbols) <= shown:
        return ", ".join(symbols)
    return f"{len(symbols)} symbols ({', '.join(symbols[:shown])}, ...)"

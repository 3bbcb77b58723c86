"""Sensors: keep the symbol partitions in step with the watchlist table, and have the corporate
actions of new symbols fetched."""

import dagster as dg

from backfill_dagster.orchestration.corporate_actions import JOB as CORPORATE_ACTIONS_JOB, refresh_run_config
from backfill_dagster.orchestration.partitions import SYMBOL_PARTITIONS, symbol_partition_changes
from backfill_dagster.orchestration.resources import StoreResource


@dg.sensor(
    name="watchlist_sync",
    description=(
        "Adds a symbol partition for every active watchlist symbol and removes those of symbols "
        "no longer active, however the table was changed; requests the corporate actions of active "
        "symbols no provider has been asked about yet."
    ),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    job_name=CORPORATE_ACTIONS_JOB,
)
def watchlist_sync(context: dg.SensorEvaluationContext, store: StoreResource):
    active = store.watchlist().active()
    current = context.instance.get_dynamic_partitions(SYMBOL_PARTITIONS.name)
    wanted = set(active)
    add, delete = symbol_partition_changes(current, add=active, remove=[s for s in current if s not in wanted])
    # However a symbol was added (this sensor, the CLI, plain SQL): asked about by no provider yet.
    checked = set(store.actions().checks(active)["symbol"]) if active else set()
    unchecked = [s for s in active if s not in checked]
    if not add and not delete and not unchecked:
        return dg.SkipReason(f"symbol partitions match the watchlist ({len(active)} active symbols)")
    requests = []
    if add:
        requests.append(SYMBOL_PARTITIONS.build_add_request(add))
    if delete:
        requests.append(SYMBOL_PARTITIONS.build_delete_request(delete))
    runs = []
    if unchecked:
        # One run per set of new symbols: a key Dagster has seen is not requested again.
        runs.append(dg.RunRequest(run_key=f"corporate_actions:{','.join(unchecked)}",
                                  run_config=refresh_run_config(unchecked)))
    context.log.info(f"watchlist sync: adding {_listed(add)}, removing {_listed(delete)}; "
                     f"corporate actions asked for {_listed(unchecked)}")
    return dg.SensorResult(run_requests=runs, dynamic_partitions_requests=requests)


def _listed(symbols: list[str], shown: int = 10) -> str:
    """Symbols for a log line: all of a few, the count and the first ones of many (500 symbols
    added at once would make a 4 KB line in the daemon's log every time)."""
    if not symbols:
        return "none"
    if len(symbols) <= shown:
        return ", ".join(symbols)
    return f"{len(symbols)} symbols ({', '.join(symbols[:shown])}, ...)"

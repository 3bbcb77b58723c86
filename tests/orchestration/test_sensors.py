import dagster as dg

from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME
from backfill_dagster.orchestration.resources import StoreResource
from backfill_dagster.orchestration.sensors import watchlist_sync
from backfill_dagster.store import Watchlist, shared_engine


def evaluate(instance, url):
    context = dg.build_sensor_context(instance=instance, resources={"store": StoreResource(database_url=url)})
    return watchlist_sync(context)


def apply(instance, result):
    for request in result.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def test_watchlist_sync_adds_and_removes_partitions(instance, store_url):
    wl = Watchlist(shared_engine(store_url))
    wl.add(["AAPL", "MSFT", "NVDA"])
    result = evaluate(instance, store_url)
    (add,) = result.dynamic_partitions_requests
    assert isinstance(add, dg.AddDynamicPartitionsRequest) and list(add.partition_keys) == ["AAPL", "MSFT", "NVDA"]
    apply(instance, result)
    assert isinstance(evaluate(instance, store_url), dg.SkipReason)

    # Changed behind the system's back (plain SQL): one removed, one added.
    with shared_engine(store_url).begin() as conn:
        conn.exec_driver_sql("UPDATE watchlist SET active = false WHERE symbol = 'MSFT'")
    wl.add(["TSLA"])
    result = evaluate(instance, store_url)
    kinds = {type(r).__name__: list(r.partition_keys) for r in result.dynamic_partitions_requests}
    assert kinds == {"AddDynamicPartitionsRequest": ["TSLA"], "DeleteDynamicPartitionsRequest": ["MSFT"]}
    apply(instance, result)
    assert instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME) == ["AAPL", "NVDA", "TSLA"]

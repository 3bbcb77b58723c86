from datetime import UTC, date, datetime

import dagster as dg

from backfill_dagster.orchestration.corporate_actions import refresh_run_config
from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME
from backfill_dagster.orchestration.resources import StoreResource
from backfill_dagster.orchestration.sensors import watchlist_sync
from backfill_dagster.store import Watchlist, shared_engine
from backfill_dagster.store.actions import ActionStore


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


def checked(url, symbols):
    """What a corporate_actions run records: the provider was asked about these symbols."""
    ActionStore(shared_engine(url)).record("alpaca", symbols, [], checked_from=date(2024, 1, 1),
                                           checked_through=date(2024, 12, 31), now=datetime.now(UTC), preference=["alpaca"])


def test_watchlist_sync_adds_and_removes_partitions(instance, store_url):
    wl = Watchlist(shared_engine(store_url))
    wl.add(["AAPL", "MSFT", "NVDA"])
    result = evaluate(instance, store_url)
    (add,) = result.dynamic_partitions_requests
    assert isinstance(add, dg.AddDynamicPartitionsRequest) and list(add.partition_keys) == ["AAPL", "MSFT", "NVDA"]
    apply(instance, result)
    checked(store_url, ["AAPL", "MSFT", "NVDA"])
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


def test_watchlist_sync_asks_for_the_corporate_actions_of_symbols_never_asked_about(instance, store_url):
    """However a symbol got on the watchlist — here with its partition already made, as the CLI's
    watchlist add does — its corporate actions are requested once, for the symbols not yet asked."""
    Watchlist(shared_engine(store_url)).add(["AAPL", "MSFT"])
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["AAPL", "MSFT"])
    checked(store_url, ["AAPL"])
    result = evaluate(instance, store_url)
    assert result.dynamic_partitions_requests == []
    (run,) = result.run_requests
    assert run.run_key == "corporate_actions:MSFT" and run.run_config == refresh_run_config(["MSFT"])
    checked(store_url, ["MSFT"])
    assert isinstance(evaluate(instance, store_url), dg.SkipReason)


def test_watchlist_sync_logs_a_whole_market_add_in_one_short_line(instance, store_url):
    import logging

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    symbols = [f"S{i:03d}" for i in range(500)]
    Watchlist(shared_engine(store_url)).add(symbols)
    context = dg.build_sensor_context(instance=instance, resources={"store": StoreResource(database_url=store_url)})
    seen = Lines()
    context.log.addHandler(seen)
    watchlist_sync(context)
    (line,) = [text for text in seen.lines if "watchlist sync:" in text]
    assert "adding 500 symbols (S000, S001," in line and "S499" not in line
    assert len(line) < 400

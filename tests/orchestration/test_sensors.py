from datetime import UTC, date, datetime

import dagster as dg

from backfill_dagster.orchestration.corporate_actions import refresh_run_config
from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME
from backfill_dagster.orchestration.resources import ProvidersResource, StoreResource
from backfill_dagster.orchestration.sensors import watchlist_sync
from backfill_dagster.store import Watchlist, shared_engine
from backfill_dagster.store.actions import ActionStore


def evaluate(instance, url, providers=("alpaca",), cursor=None):
    """One tick with these providers configured (names only: the sensor never calls them)."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={
        "store": StoreResource(database_url=url), "providers": ProvidersResource(names=list(providers))})
    return watchlist_sync(context)


def tick(instance, url, cursor=None, providers=("alpaca",)):
    """One tick as the daemon makes it: its partition requests applied; the result and the cursor
    it leaves for the next tick."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={
        "store": StoreResource(database_url=url), "providers": ProvidersResource(names=list(providers))})
    result = watchlist_sync(context)
    if isinstance(result, dg.SensorResult):
        apply(instance, result)
        return result, result.cursor
    return result, context.cursor


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
    context = dg.build_sensor_context(instance=instance, resources={
        "store": StoreResource(database_url=store_url), "providers": ProvidersResource(names=["alpaca"])})
    seen = Lines()
    context.log.addHandler(seen)
    watchlist_sync(context)
    (line,) = [text for text in seen.lines if "watchlist sync:" in text]
    assert "adding 500 symbols (S000, S001," in line and "S499" not in line
    assert len(line) < 400


# ------------------------------------------------------------------------ ticks that have nothing to do
def test_with_no_provider_publishing_corporate_actions_the_tick_skips_saying_so(instance, store_url):
    """The demo alone publishes no corporate actions: nothing is requested, every tick, and the tick
    is skipped with that reason (no "success" tick requesting a run key already used, every 30 s)."""
    Watchlist(shared_engine(store_url)).add(["AAPL", "NVDA"])
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["AAPL", "NVDA"])
    cursor = None
    for _ in range(2):
        result, cursor = tick(instance, store_url, cursor, providers=["demo"])
        assert isinstance(result, dg.SkipReason), result
        assert "corporate actions not asked: no provider in BACKFILL_PROVIDERS (demo) publishes them" in result.skip_message


def test_a_refresh_requested_already_is_not_requested_again_and_the_tick_skips(instance, store_url):
    from dagster._core.test_utils import create_run_for_test

    Watchlist(shared_engine(store_url)).add(["AAPL"])
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["AAPL"])
    (first,) = evaluate(instance, store_url).run_requests
    # The run Dagster launched for that key ended without asking any provider (e.g. it failed).
    run = create_run_for_test(instance, job_name="corporate_actions_job", status=dg.DagsterRunStatus.FAILURE,
                              tags={"dagster/sensor_name": "watchlist_sync", "dagster/run_key": first.run_key})
    result = evaluate(instance, store_url)
    assert isinstance(result, dg.SkipReason), result
    assert (f"corporate actions of AAPL requested already (run {run.run_id[:8]}, failure); corporate_actions_daily "
            "asks again") in result.skip_message


# ------------------------------------------------------------------- a symbol partition added in the UI
def test_a_symbol_partition_added_in_the_ui_puts_the_symbol_on_the_watchlist(instance, store_url):
    """Dagster's "Add partition" adds a symbol partition only: the next tick puts the symbol on the
    watchlist instead of deleting it (a key that is no stored symbol spelling is deleted); a symbol
    removed from the watchlist still loses its partition."""
    wl = Watchlist(shared_engine(store_url))
    wl.add(["AAPL", "MSFT"])
    checked(store_url, ["AAPL", "MSFT"])
    _, cursor = tick(instance, store_url)
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["IBM", "brk-b"])  # the UI's dialog
    wl.remove(["MSFT"])
    result, cursor = tick(instance, store_url, cursor)
    (delete,) = result.dynamic_partitions_requests
    assert isinstance(delete, dg.DeleteDynamicPartitionsRequest) and list(delete.partition_keys) == ["MSFT", "brk-b"]
    (refresh,) = result.run_requests  # IBM is new: its corporate actions are asked for
    assert refresh.run_config == refresh_run_config(["IBM"])
    assert wl.active() == ["AAPL", "IBM"]
    assert instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME) == ["AAPL", "IBM"]
    checked(store_url, ["IBM"])
    result, cursor = tick(instance, store_url, cursor)
    assert isinstance(result, dg.SkipReason) and "(2 active symbols)" in result.skip_message

    # Removed with the CLI (the watchlist and the partition at once), then added back in the UI.
    wl.remove(["IBM"])
    instance.delete_dynamic_partition(SYMBOLS_PARTITIONS_NAME, "IBM")
    _, cursor = tick(instance, store_url, cursor)
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["IBM"])
    result, cursor = tick(instance, store_url, cursor)
    assert wl.active() == ["AAPL", "IBM"] and instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME) == ["AAPL", "IBM"]

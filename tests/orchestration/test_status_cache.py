"""The partition_status_cache sensor keeps Dagster's status cache current, within a tick budget."""

import dagster as dg

from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.orchestration.status_cache import SENSOR_NAME, build_status_cache_sensor
from tests.orchestration.conftest import add_symbols

ASSETS = [dg.AssetKey(a) for a in ("bars_m15", "bars_h1", "bars_h4", "bars_d1")]


def cached(instance, key):
    (record,) = instance.get_asset_records([key])
    return record.asset_entry.cached_status


def test_the_sensor_brings_the_cache_up_to_date_so_no_page_has_to(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    sessions = calendar.sessions("2024-11-18", "2024-11-22")
    job = defs.resolve_job_def(ALL_BARS_JOB)
    assert job.execute_in_process(instance=instance, tags=range_tags(("AAPL", sessions[0]), ("MSFT", sessions[-1]))).success
    assert all(cached(instance, k) is None for k in ASSETS)  # nothing has read it yet

    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    result = sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and "bars_m15" in result.skip_message
    graph = defs.resolve_asset_graph()
    for key in ASSETS:
        value = cached(instance, key)
        (record,) = instance.get_asset_records([key])
        assert value is not None and value.latest_storage_id == record.asset_entry.last_materialization_storage_id
        materialized = value.deserialize_materialized_partition_subsets(graph.get(key).partitions_def)
        assert set(materialized.get_partition_keys()) == {f"{d}|{s}" for d in sessions for s in ("AAPL", "MSFT")}

    # A later run: the next tick reads only what is new, and the cache follows.
    later = calendar.sessions("2024-11-25", "2024-11-26")
    assert job.execute_in_process(instance=instance, tags=range_tags(("AAPL", later[0]), ("AAPL", later[-1]))).success
    sensor(dg.build_sensor_context(instance=instance))
    m15 = cached(instance, ASSETS[0]).deserialize_materialized_partition_subsets(graph.get(ASSETS[0]).partitions_def)
    assert {f"{d}|AAPL" for d in later} <= set(m15.get_partition_keys())


def test_a_tick_stops_at_its_budget_and_the_next_goes_on_from_there(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL"])
    day = calendar.sessions("2024-11-18", "2024-11-18")[0]
    assert defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
        instance=instance, tags=range_tags(("AAPL", day), ("AAPL", day))).success
    assets = [defs.resolve_assets_def(k) for k in ASSETS]
    ticks = iter(range(1000))
    sensor = build_status_cache_sensor(assets, budget_s=3.5, clock=lambda: float(next(ticks)))
    context = dg.build_sensor_context(instance=instance)
    first = sensor(context)
    # Each clock reading moves it 1 s: two assets fit in 3.5 s, the rest wait for the next tick.
    assert "2 asset(s) next tick" in first.skip_message
    assert cached(instance, ASSETS[0]) is not None and cached(instance, ASSETS[2]) is None
    second = sensor(dg.build_sensor_context(instance=instance, cursor=context.cursor))
    assert second.skip_message.startswith("partition status cache brought up to date: bars_h4")
    assert all(cached(instance, k) is not None for k in ASSETS)


def test_a_tick_leaves_a_row_that_covers_every_event_alone(defs, instance, store_url, calendar, monkeypatch):
    add_symbols(instance, store_url, ["AAPL"])
    day = calendar.sessions("2024-11-18", "2024-11-18")[0]
    job = defs.resolve_job_def(ALL_BARS_JOB)
    assert job.execute_in_process(instance=instance, tags=range_tags(("AAPL", day), ("AAPL", day))).success
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    sensor(dg.build_sensor_context(instance=instance))  # builds every row
    updates = []
    real = instance.get_status_by_partition
    monkeypatch.setattr(instance, "get_status_by_partition", lambda key, *a: updates.append(key) or real(key, *a))

    quiet = sensor(dg.build_sensor_context(instance=instance))
    assert updates == []
    assert quiet.skip_message == "partition status cache already current: bars_m15, bars_h1, bars_h4, bars_d1"

    later = calendar.sessions("2024-11-19", "2024-11-19")[0]  # one asset materialized again: only its row is updated
    assert job.get_subset(asset_selection={ASSETS[3]}).execute_in_process(
        instance=instance, tags=range_tags(("AAPL", later), ("AAPL", later))).success
    after = sensor(dg.build_sensor_context(instance=instance))
    assert updates == [ASSETS[3]]
    assert after.skip_message.startswith("partition status cache brought up to date: bars_d1")
    assert after.skip_message.endswith("already current: bars_m15, bars_h1, bars_h4")


def test_an_asset_whose_update_took_long_rests_for_a_while(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL"])
    days = calendar.sessions("2024-11-18", "2024-11-20")
    job = defs.resolve_job_def(ALL_BARS_JOB)
    assert job.execute_in_process(instance=instance, tags=range_tags(("AAPL", days[0]), ("AAPL", days[0]))).success
    assets = [defs.resolve_assets_def(k) for k in ASSETS]
    ticks = iter(range(10_000))  # each reading of the update clock moves it 1 s: an update takes 1 s
    epoch = [1_000_000.0]
    sensor = build_status_cache_sensor(assets, budget_s=100, clock=lambda: float(next(ticks)),
                                       now=lambda: epoch[0], rest_per_second=30.0)
    context = dg.build_sensor_context(instance=instance)
    first = sensor(context)
    assert first.skip_message.startswith("partition status cache brought up to date: bars_m15 1.0 s, bars_h1 1.0 s")

    # New events for every asset: within 30 s of their 1 s updates all four rest, and are left alone.
    assert job.execute_in_process(instance=instance, tags=range_tags(("AAPL", days[1]), ("AAPL", days[1]))).success
    epoch[0] += 20
    resting = sensor(dg.build_sensor_context(instance=instance, cursor=context.cursor))
    assert resting.skip_message == (
        "partition status cache resting: bars_m15 10 s, bars_h1 10 s, bars_h4 10 s, bars_d1 10 s"
    )
    assert cached(instance, ASSETS[0]).latest_storage_id < instance.get_asset_records([ASSETS[0]])[0].asset_entry.last_materialization_storage_id

    # After the rest the rows catch up with everything that happened meanwhile.
    epoch[0] += 11
    caught_up = sensor(dg.build_sensor_context(instance=instance, cursor=context.cursor))
    assert caught_up.skip_message.startswith("partition status cache brought up to date: bars_m15")
    graph = defs.resolve_asset_graph()
    m15 = cached(instance, ASSETS[0]).deserialize_materialized_partition_subsets(graph.get(ASSETS[0]).partitions_def)
    assert set(m15.get_partition_keys()) == {f"{d}|AAPL" for d in days[:2]}


def test_a_cursor_from_before_rests_or_unreadable_starts_over(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL"])
    day = calendar.sessions("2024-11-18", "2024-11-18")[0]
    assert defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
        instance=instance, tags=range_tags(("AAPL", day), ("AAPL", day))).success
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    old = sensor(dg.build_sensor_context(instance=instance, cursor="2"))  # the next asset's index, as written before
    assert old.skip_message.startswith("partition status cache brought up to date: bars_h4")
    garbled = sensor(dg.build_sensor_context(instance=instance, cursor="{not json"))
    assert garbled.skip_message == "partition status cache already current: bars_m15, bars_h1, bars_h4, bars_d1"

"""The assets in real Dagster runs (in-process), on both store backends."""

from datetime import date

import dagster as dg
import pandas as pd
import pytest

from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import UnknownPartitionKeyError, range_tags
from backfill_dagster.providers import registry
from backfill_dagster.providers.base import FetchResult
from backfill_dagster.providers.demo import DemoProvider
from backfill_dagster.store import BarStore, shared_engine
from backfill_dagster.store.gaps import underived
from tests.orchestration.conftest import add_symbols

ASSETS = ["bars_m15", "bars_h1", "bars_h4", "bars_d1"]


def materialized(instance, asset):
    return instance.get_materialized_partitions(dg.AssetKey(asset))


def failed(instance, asset, partitions_def):
    """The partitions the UI shows as failed (Dagster's asset status cache)."""
    from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

    value = get_and_update_asset_status_cache_value(instance, dg.AssetKey(asset), partitions_def)
    return set(value.deserialize_failed_partition_subsets(partitions_def).get_partition_keys())


def test_single_partition_and_rerun_is_identical(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.get_subset(asset_selection={dg.AssetKey("bars_m15")}).execute_in_process(
        instance=instance, partition_key="2024-11-29|AAPL"
    )
    assert result.success
    store = BarStore(shared_engine(store_url), calendar)
    first = store.read_bars(Timeframe.M15, [("AAPL", date(2024, 11, 29))])
    assert len(first) == 14  # early close
    job.get_subset(asset_selection={dg.AssetKey("bars_m15")}).execute_in_process(instance=instance, partition_key="2024-11-29|AAPL")
    pd.testing.assert_frame_equal(store.read_bars(Timeframe.M15, [("AAPL", date(2024, 11, 29))]), first, check_exact=True)
    assert materialized(instance, "bars_m15") == {"2024-11-29|AAPL"}


def test_range_run_materializes_every_partition_of_all_four(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    sessions = calendar.sessions("2024-10-29", "2024-11-25")
    assert len(sessions) == 20
    result = defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
        instance=instance, tags=range_tags(("AAPL", sessions[0]), ("MSFT", sessions[-1]))
    )
    assert result.success
    expected = {f"{d.isoformat()}|{s}" for s in ("AAPL", "MSFT") for d in sessions}
    for asset in ASSETS:
        assert materialized(instance, asset) == expected, asset
    store = BarStore(shared_engine(store_url), calendar)
    ledger = store.coverage()
    assert ledger.groupby("timeframe").size().to_dict() == {"d1": 40, "h1": 40, "h4": 40, "m15": 40}
    assert (ledger["bars"] == ledger["expected"]).all() and set(ledger["status"]) == {"complete"}
    m15 = result.asset_materializations_for_node("bars_m15")
    # Figures about the whole run are written once, in a log line, not copied into each partition.
    assert len(m15) == 40 and all(m.metadata == {} for m in m15)
    figures = [e.user_message for e in instance.all_logs(result.run_id) if "bars_m15 run figures:" in e.user_message]
    assert len(figures) == 1
    assert "partitions_in_run=40, partitions_written=40, partitions_failed=0, bars_written=1040" in figures[0]
    assert "served_by={'demo:synthetic': 40}" in figures[0]


def _flaky_factory(bad_session):
    class Flaky(DemoProvider):
        name = "flaky"

        def fetch(self, request):
            bars = super().fetch(request).bars
            day = bars.ts.dt.tz_convert("America/New_York").dt.date == bad_session
            bars.loc[bars.index[day & (bars.symbol == "MSFT")], "volume"] = -1.0
            return FetchResult(bars=bars, api_calls=1)

    return lambda _config, calendar, clock, _budget, _policy=None: Flaky(calendar, clock)


def flaky_box(tmp_path, instance, store_url, calendar, monkeypatch, bad):
    """Definitions whose provider serves MSFT an invalid bar on `bad`, and a box of AAPL, MSFT x
    2024-11-22..27 (its sessions returned)."""
    from backfill_dagster.definitions import build_definitions
    from backfill_dagster.settings import Settings

    monkeypatch.setitem(registry.FACTORIES, "flaky", _flaky_factory(bad))
    defs = build_definitions(Settings(data_dir=tmp_path, database_url=store_url, providers=("flaky",)))
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    return defs, calendar.sessions("2024-11-22", "2024-11-27")


def test_a_partly_failed_run_reports_true_per_partition_status(tmp_path, instance, store_url, calendar, monkeypatch):
    bad = date(2024, 11, 26)
    defs, sessions = flaky_box(tmp_path, instance, store_url, calendar, monkeypatch, bad)
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey("bars_m15")})
    result = job.execute_in_process(instance=instance, tags=range_tags(("AAPL", sessions[0]), ("MSFT", sessions[-1])), raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "1 of 8 partition(s) of bars_m15 failed (7 were written)" in failure
    assert "MSFT 2024-11-26 m15: demo:synthetic returned 26 invalid bar(s)" in failure and "volume is negative" in failure
    everything = {f"{d.isoformat()}|{s}" for s in ("AAPL", "MSFT") for d in sessions}
    assert materialized(instance, "bars_m15") == everything - {"2024-11-26|MSFT"}
    partitions_def = defs.resolve_assets_def("bars_m15").partitions_def
    assert failed(instance, "bars_m15", partitions_def) == {"2024-11-26|MSFT"}
    store = BarStore(shared_engine(store_url), calendar)
    assert store.read_bars(Timeframe.M15, [("MSFT", bad)]).empty


def test_a_partly_failed_m15_step_derives_h1_h4_of_what_it_wrote(tmp_path, instance, store_url, calendar, monkeypatch):
    # Dagster skips the run's h1/h4 steps whole once m15 fails: the m15 step derives them for the
    # partitions it wrote, so only the failed partition shows failed in every timeframe. A whole
    # job executed in process (its run's asset_selection empty) included.
    bad = date(2024, 11, 26)
    defs, sessions = flaky_box(tmp_path, instance, store_url, calendar, monkeypatch, bad)
    everything = {f"{d.isoformat()}|{s}" for s in ("AAPL", "MSFT") for d in sessions}
    intraday = {dg.AssetKey(a) for a in ("bars_m15", "bars_h1", "bars_h4")}
    whole = defs.resolve_implicit_global_asset_job_def()
    for job in (whole.get_subset(asset_selection=intraday), whole.get_subset(asset_selection=intraday | {dg.AssetKey("bars_d1")})):
        result = job.execute_in_process(instance=instance, tags=range_tags(("AAPL", sessions[0]), ("MSFT", sessions[-1])),
                                        raise_on_error=False)
        assert not result.success
        for asset in ("bars_m15", "bars_h1", "bars_h4"):
            assert materialized(instance, asset) == everything - {"2024-11-26|MSFT"}, asset
    store = BarStore(shared_engine(store_url), calendar)
    assert len(store.read_bars(Timeframe.H1, [("AAPL", bad)])) == 7 and store.read_bars(Timeframe.H1, [("MSFT", bad)]).empty


def test_a_non_session_or_unknown_symbol_partition_is_refused_naming_what_is_missing(defs, instance, store_url):
    add_symbols(instance, store_url, ["AAPL"])
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey("bars_m15")})
    with pytest.raises(UnknownPartitionKeyError, match="'2024-11-28' is not a session partition"):
        job.execute_in_process(instance=instance, partition_key="2024-11-28|AAPL")
    with pytest.raises(UnknownPartitionKeyError, match="'MSFT' is not a symbol partition"):
        job.execute_in_process(instance=instance, partition_key="2024-11-27|MSFT")


def _short_factory():
    class Short(DemoProvider):
        name = "short"
        provenance = "short"

        def fetch(self, request):
            result = super().fetch(request)
            return FetchResult(bars=result.bars.iloc[:-2], api_calls=1)

    return lambda _config, calendar, clock, _budget, _policy=None: Short(calendar, clock)


def test_fewer_bars_replace_final_ones_only_when_the_run_asks(tmp_path, instance, store_url, calendar, monkeypatch):
    from backfill_dagster.definitions import build_definitions
    from backfill_dagster.domain.ledger import REPLACE_FEWER_TAG
    from backfill_dagster.settings import Settings

    add_symbols(instance, store_url, ["AAPL"])
    key, day = "2024-11-26|AAPL", date(2024, 11, 26)
    settings = Settings(data_dir=tmp_path, database_url=store_url)
    select = {dg.AssetKey("bars_m15")}
    demo = build_definitions(settings).resolve_implicit_global_asset_job_def().get_subset(asset_selection=select)
    assert demo.execute_in_process(instance=instance, partition_key=key).success
    monkeypatch.setitem(registry.FACTORIES, "short", _short_factory())
    short = build_definitions(Settings(data_dir=tmp_path, database_url=store_url, providers=("short",)))
    job = short.resolve_implicit_global_asset_job_def().get_subset(asset_selection=select)
    refused = job.execute_in_process(instance=instance, partition_key=key, raise_on_error=False)
    assert not refused.success
    message = refused.get_step_failure_events()[0].step_failure_data.error.message
    assert "AAPL 2024-11-26 m15: short answered 24 bar(s), fewer than the 26 stored" in message
    store = BarStore(shared_engine(store_url), calendar)
    assert len(store.read_bars(Timeframe.M15, [("AAPL", day)])) == 26
    assert job.execute_in_process(instance=instance, partition_key=key, tags={REPLACE_FEWER_TAG: "true"}).success
    assert len(store.read_bars(Timeframe.M15, [("AAPL", day)])) == 24


@pytest.mark.parametrize("key", ["aapl", "A B", "BRK-B", "A|B"])
def test_a_range_run_refuses_a_symbol_partition_that_is_not_a_symbol(defs, instance, store_url, calendar, key):
    """Keys added by hand in the UI ("Add a partition") or the API sit inside a range between two
    real symbols: the run refuses them by name before fetching or writing anything."""
    add_symbols(instance, store_url, ["AAPL"])
    instance.add_dynamic_partitions("symbols", [key])
    add_symbols(instance, store_url, ["MSFT"])
    sessions = calendar.sessions("2024-11-25", "2024-11-26")
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_m15")})
    result = job.execute_in_process(
        instance=instance, tags=range_tags(("AAPL", sessions[0]), ("MSFT", sessions[-1])), raise_on_error=False
    )
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    message = error.message + (error.cause.message if error.cause else "")
    assert repr(key) in message and "not symbols" in message
    store = BarStore(shared_engine(store_url), calendar)
    assert store.coverage().empty and store.read_bars(Timeframe.M15, [("AAPL", sessions[0])]).empty
    assert materialized(instance, "bars_m15") == set()


def _hollow_factory(hollow_session):
    class Hollow(DemoProvider):
        name = "hollow"
        provenance = "hollow"

        def fetch(self, request):
            bars = super().fetch(request).bars
            day = bars.ts.dt.tz_convert("America/New_York").dt.date == hollow_session
            return FetchResult(bars=bars[~day].reset_index(drop=True), api_calls=1)

    return lambda _config, calendar, clock, _budget, _policy=None: Hollow(calendar, clock)


def test_h1_h4_of_a_session_whose_m15_has_no_bars_fail_instead_of_showing_materialized(
    tmp_path, instance, store_url, calendar, monkeypatch
):
    """m15 answered without bars (empty) fails its step; deriving h1/h4 from it (the derive-only run
    the gap sensor's sweep launches) must not show them green with no bars next to a red m15."""
    from backfill_dagster.definitions import build_definitions
    from backfill_dagster.settings import Settings

    hollow = date(2024, 11, 26)
    monkeypatch.setitem(registry.FACTORIES, "hollow", _hollow_factory(hollow))
    defs = build_definitions(Settings(data_dir=tmp_path, database_url=store_url, providers=("hollow",)))
    add_symbols(instance, store_url, ["AAPL"])
    sessions = calendar.sessions("2024-11-25", "2024-11-26")
    tags = range_tags(("AAPL", sessions[0]), ("AAPL", sessions[-1]))
    job = defs.resolve_job_def(ALL_BARS_JOB)
    fetched = job.get_subset(asset_selection={dg.AssetKey("bars_m15")}).execute_in_process(
        instance=instance, tags=tags, raise_on_error=False
    )
    assert not fetched.success and materialized(instance, "bars_m15") == {"2024-11-25|AAPL"}
    derived = job.get_subset(asset_selection={dg.AssetKey("bars_h1"), dg.AssetKey("bars_h4")}).execute_in_process(
        instance=instance, tags=tags, raise_on_error=False
    )
    assert not derived.success
    failures = [e.step_failure_data.error.message for e in derived.get_step_failure_events()]
    assert len(failures) == 2
    assert all("AAPL 2024-11-26" in m and "m15 partition holds no bars (empty: hollow answered no bars" in m
               for m in failures)
    for asset in ("bars_h1", "bars_h4"):
        assert materialized(instance, asset) == {"2024-11-25|AAPL"}, asset
    engine = shared_engine(store_url)
    ledger = BarStore(engine, calendar).coverage().set_index(["timeframe", "session"])
    # The derived rows follow m15 (empty), so the gap sensor's sweep does not derive them again.
    assert ledger.loc[("h1", hollow), "status"] == ledger.loc[("m15", hollow), "status"] == "empty"
    assert all(not found for found in underived(engine, ["AAPL"], sessions[0], sessions[-1]).values())

"""A snapshot of the wiring: catches accidental changes to assets, partitions, jobs, sensors."""

from datetime import date

import dagster as dg
import exchange_calendars as xcals
import pytest

from backfill_dagster.definitions import build_definitions
from backfill_dagster.orchestration.partitions import (
    PartitionKeyError,
    bar_partitions,
    parse_partition_key,
    symbol_blocks,
)
from backfill_dagster.providers.base import ProviderConfigError
from backfill_dagster.settings import Settings


def test_definitions_snapshot(tmp_path):
    defs = build_definitions(Settings(data_dir=tmp_path))
    graph = defs.resolve_asset_graph()
    keys = sorted(k.to_user_string() for k in graph.get_all_asset_keys())
    assert keys == ["bars_d1", "bars_h1", "bars_h4", "bars_m15", "corporate_actions"]
    assert graph.get(dg.AssetKey("corporate_actions")).partitions_def is None  # one refresh for the watchlist
    for key in keys[:4]:
        node = graph.get(dg.AssetKey(key))
        assert isinstance(node.partitions_def, dg.MultiPartitionsDefinition)
        assert [d.name for d in node.partitions_def.partitions_defs] == ["date", "symbol"]
        assert node.backfill_policy == dg.BackfillPolicy.single_run()  # as --partition-range requires
    assert graph.get(dg.AssetKey("bars_h1")).parent_keys == {dg.AssetKey("bars_m15")}
    assert graph.get(dg.AssetKey("bars_h4")).parent_keys == {dg.AssetKey("bars_m15")}
    assert not graph.get(dg.AssetKey("bars_d1")).parent_keys
    assert [s.name for s in defs.sensors] == ["watchlist_sync", "coverage_gaps", "split_repair", "partition_status_cache"]
    schedules = {s.name: (s.cron_schedule, s.execution_timezone) for s in defs.schedules}
    assert schedules == {
        "intraday_refresh": ("*/15 9-15 * * 1-5", "America/New_York"),
        "end_of_day": ("*/15 13-21 * * 1-5", "America/New_York"),
        "corporate_actions_daily": ("0 8 * * 1-5", "America/New_York"),
    }
    for key in keys:  # launched by the sensors and schedules (h1/h4 with m15, or by the gap sweep)
        assert graph.get(dg.AssetKey(key)).automation_condition is None
    checks = sorted(k.to_user_string() for k in graph.asset_check_keys)
    assert checks == [
        "bars_d1:bounds_m15", "bars_d1:no_unrecorded_split", "bars_h1:matches_m15_resampled",
        "bars_h4:matches_m15_resampled", "bars_m15:m15_completeness", "corporate_actions:providers_agree",
        "corporate_actions:splits_repaired",
    ]
    # unpartitioned: one result per run, so no Dagster code path grows with the checked partitions
    assert all(graph.get(key).partitions_def is None for key in graph.asset_check_keys)
    assert defs.resolve_sensor_def("watchlist_sync").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_job_def("all_bars").executor_def.name == "in_process"
    assert defs.resolve_job_def("corporate_actions_job").executor_def.name == "in_process"
    assert defs.resolve_sensor_def("split_repair").default_status == dg.DefaultSensorStatus.RUNNING
    assert set(defs.resources) == {"store", "providers"}


def test_date_partitions_are_exactly_the_xnys_sessions():
    from backfill_dagster.domain.calendar import xnys

    partitions = bar_partitions(date(2024, 1, 1), xnys()).partitions_defs[0].partitions_def
    keys = [k for k in partitions.get_partition_keys() if k <= "2026-12-31"]
    reference = xcals.get_calendar("XNYS", start="2023-12-01", end="2026-12-31")
    sessions = [d.date().isoformat() for d in reference.sessions_in_range("2024-01-01", keys[-1])]
    assert keys == sessions
    assert "2025-01-09" not in keys and "2024-11-28" not in keys and "2024-11-29" in keys


@pytest.mark.parametrize(
    "key, message",
    [
        ("2024-11-28|AAPL", "not an NYSE trading session (NYSE holiday: Thanksgiving)"),
        ("2024-11-30|AAPL", "a Saturday"),
        ("2024-11-29|aapl", "symbols are upper-case"),
        ("2024-11-29|AA;PL", "not a valid ticker"),
        ("AAPL|2024-11-29", "not a date"),
        ("2024-11-29", "is not '<session date>|<SYMBOL>'"),
    ],
)
def test_bad_partition_keys_are_refused(calendar, key, message):
    with pytest.raises(PartitionKeyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_partition_key(key, calendar)


def test_symbol_blocks_follow_partition_order():
    assert symbol_blocks(["C", "A", "B"], ["A", "B", "X", "C"]) == [["A", "B"], ["C"]]
    with pytest.raises(PartitionKeyError, match="not symbol partitions yet"):
        symbol_blocks(["ZZ"], ["A"])


def test_unknown_provider_fails_at_load(tmp_path):
    with pytest.raises(ProviderConfigError, match="unknown provider\\(s\\) 'nope'.*known providers are demo"):
        build_definitions(Settings(data_dir=tmp_path, providers=("demo", "nope")))


def test_deployed_runs_print_no_line_per_partition_but_keep_every_event(defs, store_url, calendar, capfd):
    """dagster.yaml's python_log_level is also the run's console level: Dagster logs every event
    at DEBUG, one per partition of a range run, which would print megabytes per backfill (and cost
    ~0.1 ms a partition); the event log keeps every event whatever the console shows."""
    import yaml

    from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
    from backfill_dagster.orchestration.partitions import range_tags
    from tests.deploy import ROOT
    from tests.orchestration.conftest import add_symbols

    deployed = yaml.safe_load((ROOT / "dagster.yaml").read_text())["python_logs"]
    assert deployed["python_log_level"] == "INFO"
    with dg.instance_for_test(overrides={"python_logs": deployed}) as instance:
        add_symbols(instance, store_url, ["AAPL", "MSFT"])
        sessions = calendar.sessions("2024-11-18", "2024-11-22")
        job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_m15")})
        capfd.readouterr()
        result = job.execute_in_process(instance=instance, tags=range_tags(("AAPL", sessions[0]), ("MSFT", sessions[-1])))
        assert result.success
        printed = capfd.readouterr()
        assert "ASSET_MATERIALIZATION" not in printed.out + printed.err
        stored = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        assert len(stored) == 10

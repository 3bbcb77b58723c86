"""Asset checks in real Dagster runs: a true status per partition, read back from the instance."""

from datetime import date

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.store import shared_engine
from backfill_dagster.store.schema import bar_coverage, ohlc_bars
from tests.orchestration.conftest import add_symbols

CHECKS = [
    dg.AssetCheckKey(dg.AssetKey("bars_m15"), "m15_completeness"),
    dg.AssetCheckKey(dg.AssetKey("bars_h1"), "matches_m15_resampled"),
    dg.AssetCheckKey(dg.AssetKey("bars_h4"), "matches_m15_resampled"),
    dg.AssetCheckKey(dg.AssetKey("bars_d1"), "bounds_m15"),
]
Status = AssetCheckExecutionRecordStatus


def statuses(instance, check_key):
    infos = instance.event_log_storage.get_asset_check_partition_info([check_key])
    return {info.partition_key: info for info in infos}


def run_box(defs, instance, symbols, sessions):
    return defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
        instance=instance, tags=range_tags((symbols[0], sessions[0]), (symbols[-1], sessions[-1]))
    )


def test_range_run_records_a_passing_check_on_every_partition(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    sessions = calendar.sessions("2024-11-18", "2024-12-02")  # includes the early close of 11-29
    assert len(sessions) == 10
    result = run_box(defs, instance, ["AAPL", "MSFT"], sessions)
    assert result.success

    keys = {f"{d.isoformat()}|{s}" for s in ("AAPL", "MSFT") for d in sessions}
    for check in CHECKS:
        info = statuses(instance, check)
        assert set(info) == keys, check  # one record per partition, none without a partition
        assert {i.latest_execution_status for i in info.values()} == {Status.SUCCEEDED}, check
        # each result is linked to its partition's materialization, so the UI shows it as current
        assert all(i.is_current for i in info.values()), check
    evaluations = [e for e in result.get_asset_check_evaluations() if e.asset_check_key in CHECKS]
    assert len(evaluations) == 4 * 20 and all(e.passed for e in evaluations)
    early = next(e for e in evaluations if e.partition == "2024-11-29|AAPL" and e.check_name == "m15_completeness")
    assert early.metadata["expected"].value == 14 and early.metadata["bars"].value == 14


def test_a_corrupted_h1_bar_fails_exactly_its_partition(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    sessions = calendar.sessions("2024-11-18", "2024-12-02")
    assert run_box(defs, instance, ["AAPL", "MSFT"], sessions).success

    # Behind the system's back: one h1 bar of MSFT on 2024-11-21 gets a wrong high.
    engine = shared_engine(store_url)
    with engine.begin() as conn:
        changed = conn.execute(
            sa.update(ohlc_bars)
            .where(ohlc_bars.c.symbol == "MSFT", ohlc_bars.c.timeframe == "h1",
                   ohlc_bars.c.ts == sa.bindparam("bar_start", type_=ohlc_bars.c.ts.type))
            .values(high=ohlc_bars.c.high + 1.0),
            {"bar_start": pd.Timestamp("2024-11-21 16:30", tz="UTC").to_pydatetime()},  # the 11:30 ET bar
        ).rowcount
    assert changed == 1

    h1_check = CHECKS[1]
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={h1_check}, asset_selection=set())
    result = job.execute_in_process(
        instance=instance, tags=range_tags(("AAPL", sessions[0]), ("MSFT", sessions[-1]))
    )
    assert result.success  # a failed check is a finding, not a crashed run
    info = statuses(instance, h1_check)
    failed = {k for k, i in info.items() if i.latest_execution_status == Status.FAILED}
    assert failed == {"2024-11-21|MSFT"}
    assert sum(i.latest_execution_status == Status.SUCCEEDED for i in info.values()) == 19
    bad = next(e for e in result.get_asset_check_evaluations() if not e.passed)
    assert bad.severity == dg.AssetCheckSeverity.ERROR
    assert "2024-11-21T16:30:00+00:00" in bad.description and "differs" in bad.description
    # the other checks were not touched by this run and still say SUCCEEDED
    assert statuses(instance, CHECKS[2])["2024-11-21|MSFT"].latest_execution_status == Status.SUCCEEDED


def test_low_completeness_warns_and_failed_fetch_is_reported(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL"])
    sessions = calendar.sessions("2024-11-18", "2024-11-19")
    assert run_box(defs, instance, ["AAPL"], sessions).success
    engine = shared_engine(store_url)
    with engine.begin() as conn:  # an illiquid day: only 5 of 26 bars traded
        conn.execute(
            sa.update(bar_coverage)
            .where(bar_coverage.c.symbol == "AAPL", bar_coverage.c.timeframe == "m15",
                   bar_coverage.c.session == date(2024, 11, 19))
            .values(bars=5)
        )
    check = CHECKS[0]
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={check}, asset_selection=set())
    result = job.execute_in_process(instance=instance, tags=range_tags(("AAPL", sessions[0]), ("AAPL", sessions[-1])))
    assert result.success
    by_partition = {e.partition: e for e in result.get_asset_check_evaluations()}
    low = by_partition["2024-11-19|AAPL"]
    assert not low.passed and low.severity == dg.AssetCheckSeverity.WARN
    assert "5 of 26 bars" in low.description
    assert by_partition["2024-11-18|AAPL"].passed

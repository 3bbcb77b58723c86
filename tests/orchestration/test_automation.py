"""h1/h4 follow new m15 partitions on their own, and never re-derive what a run already derived."""

import dagster as dg

from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from tests.orchestration.conftest import add_symbols

H1, H4 = dg.AssetKey("bars_h1"), dg.AssetKey("bars_h4")


def test_derived_bars_follow_m15_history_not_only_today(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert first.total_requested == 0  # nothing to derive from yet: m15 is missing

    sessions = calendar.sessions("2024-03-04", "2024-03-15")  # old history, across the spring DST change
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_m15")})
    assert job.execute_in_process(
        instance=instance, tags=range_tags(("AAPL", sessions[0]), ("MSFT", sessions[-1]))
    ).success

    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    wanted = {f"{d.isoformat()}|{s}" for s in ("AAPL", "MSFT") for d in sessions}
    assert second.get_requested_partitions(H1) == wanted
    assert second.get_requested_partitions(H4) == wanted
    assert second.get_num_requested(dg.AssetKey("bars_m15")) == 0
    assert second.get_num_requested(dg.AssetKey("bars_d1")) == 0  # fetched assets are never automatic

    third = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=second.cursor)
    assert third.total_requested == 0  # requested once, not again while it is handled


def test_a_run_of_all_four_leaves_nothing_to_derive(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL"])
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    sessions = calendar.sessions("2024-11-25", "2024-11-29")
    assert defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
        instance=instance, tags=range_tags(("AAPL", sessions[0]), ("AAPL", sessions[-1]))
    ).success
    second = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert second.total_requested == 0

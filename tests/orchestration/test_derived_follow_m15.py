"""h1/h4 follow m15 wherever it is stored, not only in their gap horizon: a run that wrote m15 alone
is derived by the gap sensor's sweep, with no provider call; a run of all four leaves nothing."""

from datetime import date

import dagster as dg
import pandas as pd

from backfill_dagster.orchestration.gap_sensor import build_gap_sensor
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.orchestration.resources import StoreResource
from backfill_dagster.orchestration.tags import GAP_KIND_TAG
from tests.orchestration.conftest import add_symbols

NOW = pd.Timestamp("2024-12-06 20:00", tz="America/New_York").tz_convert("UTC")
H1, H4, M15 = dg.AssetKey("bars_h1"), dg.AssetKey("bars_h4"), dg.AssetKey("bars_m15")


def tick(instance, store_url):
    sensor = build_gap_sensor(date(2024, 1, 1), clock=lambda: NOW)
    result = sensor(dg.build_sensor_context(instance=instance, resources={"store": StoreResource(database_url=store_url)}))
    return result if isinstance(result, list) else []


def derive_requests(requests, first, last):
    return [r for r in requests if r.tags[GAP_KIND_TAG] == "derived"
            and r.tags["dagster/asset_partition_range_start"].split("|")[0] <= last.isoformat()
            and r.tags["dagster/asset_partition_range_end"].split("|")[0] >= first.isoformat()]


def test_m15_written_alone_in_old_history_is_derived_without_a_fetch(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    sessions = calendar.sessions("2024-03-04", "2024-03-15")  # old history, across the spring DST change
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={M15})
    assert job.execute_in_process(instance=instance, tags=range_tags(("AAPL", sessions[0]), ("MSFT", sessions[-1]))).success

    (request,) = derive_requests(tick(instance, store_url), sessions[0], sessions[-1])
    assert set(request.asset_selection) == {H1, H4}  # derive only: no m15, no provider call
    assert request.tags["dagster/asset_partition_range_start"] == f"{sessions[0].isoformat()}|AAPL"
    assert request.tags["dagster/asset_partition_range_end"] == f"{sessions[-1].isoformat()}|MSFT"

    run = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={H1, H4})
    assert run.execute_in_process(instance=instance, tags=dict(request.tags)).success
    wanted = {f"{d.isoformat()}|{s}" for s in ("AAPL", "MSFT") for d in sessions}
    assert wanted <= instance.get_materialized_partitions(H1) and wanted <= instance.get_materialized_partitions(H4)
    assert derive_requests(tick(instance, store_url), sessions[0], sessions[-1]) == []


def test_a_run_of_all_four_leaves_nothing_to_derive(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL"])
    sessions = calendar.sessions("2024-11-25", "2024-11-29")
    assert defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
        instance=instance, tags=range_tags(("AAPL", sessions[0]), ("AAPL", sessions[-1]))
    ).success
    assert derive_requests(tick(instance, store_url), sessions[0], sessions[-1]) == []

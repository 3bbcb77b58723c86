"""Following a backfill: progress from the instance, and the verdict when it ends."""

import dagster as dg
from dagster._core.execution.backfill import BulkActionStatus

from backfill_dagster.orchestration.backfills import backfill_progress, launch_backfill, wait_for_backfill
from tests.orchestration.conftest import add_symbols


def test_a_launched_backfill_is_in_the_instance_and_a_failed_one_is_reported(defs, instance, store_url):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    keys = ["2024-11-25|AAPL", "2024-11-26|AAPL", "2024-11-25|MSFT"]
    backfill_id = launch_backfill(instance, defs.resolve_asset_graph(), keys,
                                  [dg.AssetKey("bars_m15"), dg.AssetKey("bars_h1")], title="t")
    progress = backfill_progress(instance, backfill_id)
    assert progress.status == BulkActionStatus.REQUESTED and progress.total == 6 and progress.done == 0
    assert not progress.finished

    seen, sleeps = [], []

    def fail_it(_seconds):
        sleeps.append(_seconds)
        instance.update_backfill(instance.get_backfill(backfill_id).with_status(BulkActionStatus.FAILED))

    final = wait_for_backfill(instance, backfill_id, on_progress=seen.append, sleep=fail_it)
    assert final.finished and not final.succeeded and len(sleeps) == 1
    assert [p.status for p in seen] == [BulkActionStatus.REQUESTED, BulkActionStatus.FAILED]


def test_waiting_gives_up_after_its_timeout(defs, instance, store_url):
    add_symbols(instance, store_url, ["AAPL"])
    backfill_id = launch_backfill(instance, defs.resolve_asset_graph(), ["2024-11-25|AAPL"],
                                  [dg.AssetKey("bars_m15")], title="t")
    progress = wait_for_backfill(instance, backfill_id, timeout_s=0.05, interval_s=0.01)
    assert not progress.finished  # nobody runs it here: no daemon

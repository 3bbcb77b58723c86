"""Following a backfill: progress from the instance, and the verdict when it ends."""

import dagster as dg
from dagster._core.execution.backfill import BulkActionStatus

import pytest

from backfill_dagster.cli_watch import LedgerProgress, ProgressBar
from backfill_dagster.orchestration.backfills import (
    Progress,
    backfill_progress,
    launch_backfill,
    wait_for_backfill,
)
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


def test_the_backfill_log_summarises_a_whole_market_subset(defs, instance, store_url):
    # Dagster writes every key of each subset into each backfill iteration's log lines: ~5 MB per
    # subset at 252,000 partitions. The project's event log (loaded by the daemon) bounds them.
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.definitions.events import AssetKeyPartitionKey
    from dagster._core.execution import asset_backfill

    import backfill_dagster.instance.event_log  # noqa: F401  (installs the summary, as in the daemon)
    from backfill_dagster.instance.backfill_log import partition_subset_summary

    symbols = [f"S{i:03d}" for i in range(300)]
    add_symbols(instance, store_url, symbols)
    graph = defs.resolve_asset_graph()
    m15 = dg.AssetKey("bars_m15")
    partitions_def = graph.get(m15).partitions_def
    keys = [f"{day}|{s}" for s in symbols for day in ("2024-11-25", "2024-11-26", "2024-11-27")]
    subset = AssetGraphSubset.from_asset_partition_set(
        {AssetKeyPartitionKey(m15, k) for k in keys}, graph)
    text = asset_backfill._asset_graph_subset_to_str(subset, graph)
    assert text == "- bars_m15: {900 partitions: 2024-11-25|S000 .. 2024-11-27|S299}"
    # Small subsets stay listed in full, as Dagster lists them.
    few = partitions_def.empty_subset().with_partition_keys(keys[:2])
    assert partition_subset_summary(few, partitions_def) == "2 partitions: 2024-11-25|S000, 2024-11-26|S000"
    one = partitions_def.empty_subset().with_partition_keys(keys[:1])
    assert partition_subset_summary(one, partitions_def) == "1 partition: 2024-11-25|S000"


def test_parts_of_one_request_are_followed_as_one(defs, instance, store_url):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    graph = defs.resolve_asset_graph()
    first = launch_backfill(instance, graph, ["2024-11-25|AAPL", "2024-11-26|AAPL"], [dg.AssetKey("bars_d1")], title="1")
    second = launch_backfill(instance, graph, ["2024-11-25|MSFT"], [dg.AssetKey("bars_d1")], title="2")
    both = backfill_progress(instance, [first, second])
    assert (both.total, both.done, both.status, both.finished) == (3, 0, BulkActionStatus.REQUESTED, False)
    # One part finished is not the whole finished; the unfinished part's status shows.
    instance.update_backfill(instance.get_backfill(first).with_status(BulkActionStatus.COMPLETED_SUCCESS))
    assert backfill_progress(instance, [first, second]).status == BulkActionStatus.REQUESTED
    # Every part finished: a failed part makes the whole unsuccessful.
    instance.update_backfill(instance.get_backfill(second).with_status(BulkActionStatus.FAILED))
    final = backfill_progress(instance, [first, second])
    assert final.finished and not final.succeeded and final.status == BulkActionStatus.FAILED


def test_the_progress_bar_shows_the_ledger_ahead_of_dagster():
    import io

    readings = iter([3, 3, 5])
    now = [0.0]
    ledger = LedgerProgress(lambda: next(readings), 10, interval_s=5.0, clock=lambda: now[0])
    assert ledger.poll() == (3, 10)
    now[0] = 2.0
    assert ledger.poll() is None  # not due yet: no query
    now[0] = 6.0
    assert ledger.poll() is None  # due, unchanged: nothing to redraw
    now[0] = 12.0
    assert ledger.poll() == (5, 10)
    out = io.StringIO()
    ProgressBar(out).show(Progress(BulkActionStatus.REQUESTED, 0, 0, 10), 1234, (5, 10))
    assert out.getvalue() == (
        "[###############...............] 5/10 covered in the ledger; Dagster: 0/10 partitions, 1,234 bars, REQUESTED\n"
    )

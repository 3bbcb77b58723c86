"""The run tags the project writes and reads, in one place.

The ledger's (`backfill/replace_fewer_bars`, `backfill/split_ratio`, `backfill/rewrite_reason`) live with the rule that
names them, domain/ledger.py.
"""

# Who asked for a run: the gap sensor, a schedule, the split repair, the CLI.
REQUESTED_BY_TAG = "backfill/requested_by"
SESSION_TAG = "backfill/session"  # the session a scheduled run is for
GAP_KIND_TAG = "backfill/gap_kind"  # what a gap run materializes (domain.gap_planning.RunKind)
GAPS_TAG = "backfill/gaps"  # the gaps a gap run fills, described
SPLIT_TAG = "backfill/split"  # the split a repair run re-fetches for
# The backfills `backfill-dagster ensure-coverage` launches. Its prefix is not the others' but the
# backfills in an instance, and whoever finds them by it (tests/e2e/test_ui_backfill.py), carry it:
# renaming it would lose them.
LAUNCHED_BY_TAG = "backfill_dagster/launched_by"

# Dagster's own.
PRIORITY_TAG = "dagster/priority"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"

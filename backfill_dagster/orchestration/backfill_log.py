"""Keep the backfill daemon's log readable at whole-market scale.

Each iteration of an asset backfill logs its subsets (requested, materialized, failed, in
progress) by writing out every partition key: 252,000 keys of `SYMBOL|YYYY-MM-DD` are ~5 MB a
subset, several subsets per iteration, into the daemon's console and the backfill's stored logs.
For partitions Dagster cannot summarise as time windows (ours are multi-partitions), this writes
the count and the first and last keys instead; time-window subsets keep Dagster's own summary.

Installed in every process that opens the project's PostgreSQL instance: the daemon loads the
event log storage (`orchestration/event_log.py`), which imports this module.
"""

from __future__ import annotations

from dagster._core.definitions.partitions.definition import TimeWindowPartitionsDefinition
from dagster._core.definitions.partitions.subset import TimeWindowPartitionsSubset
from dagster._core.execution import asset_backfill

# Up to this many keys a subset is still written out in full.
LISTED_KEYS = 10

_dagster_partition_subset_str = asset_backfill._partition_subset_str


def partition_subset_summary(partition_subset, partitions_def) -> str:
    """`3 partitions: A|2024-01-02, A|2024-01-03, B|2024-01-02`, or for many keys
    `252000 partitions: A|2024-01-02 .. ZTS|2025-12-31` (first and last in key order)."""
    if isinstance(partition_subset, TimeWindowPartitionsSubset) and isinstance(
        partitions_def, TimeWindowPartitionsDefinition
    ):
        return _dagster_partition_subset_str(partition_subset, partitions_def)
    keys = partition_subset.get_partition_keys()
    count = len(keys) if hasattr(keys, "__len__") else None
    if count is None:
        keys = list(keys)
        count = len(keys)
    if count <= LISTED_KEYS:
        return f"{count} partition{'s' if count != 1 else ''}: " + ", ".join(sorted(keys))
    return f"{count} partitions: {min(keys)} .. {max(keys)}"


def install() -> None:
    """Replace Dagster's subset formatter in the backfill logs (idempotent)."""
    asset_backfill._partition_subset_str = partition_subset_summary


install()

"""The partition status cache read as stored when nothing has happened since it was written.

Every asset page asks Dagster for each asset's materialized, failed and in-progress partitions;
Dagster answers from a cache row per asset (`asset_keys.cached_status_data`) and brings it up to
date first (`_build_status_cache`). When nothing has been materialized or planned since the row
was written, the update changes nothing, yet Dagster still parses the stored subsets and serializes
them again: at 252,000 partitions per asset, sorting and dumping 252,000 keys per asset per request,
~60% of the global asset graph's `AssetGraphLiveQuery` (docs/benchmarks.md).

`unchanged_cache_value` says when Dagster's update would give the stored value back: the asset's
latest materialization and latest planned event are the ones the row already covers, the row was
built for this partitions definition, and no run was in progress when it was written (an
in-progress run can end in failure without writing an event on this asset, so such a row is
always brought up to date the Dagster way). Then the stored value is the answer, unserialized
and unwritten. Otherwise Dagster's own update runs. The same values as Dagster's, with and without
the shortcut: tests/instance/test_cached_status.py; the Dagster functions it mirrors are pinned in
tests/orchestration/test_dagster_internals.py.
"""

from __future__ import annotations

from dagster import AssetKey, DagsterInstance, PartitionsDefinition
from dagster._core.storage.event_log.base import AssetRecord
from dagster._core.storage.partition_status_cache import (
    AssetStatusCacheValue,
    get_last_planned_storage_id,
    is_cacheable_partition_type,
)


def unchanged_cache_value(
    instance: DagsterInstance,
    asset_key: AssetKey,
    partitions_def: PartitionsDefinition | None,
    asset_record: AssetRecord | None,
) -> AssetStatusCacheValue | None:
    """The asset's stored status cache value if Dagster's update would leave it as it is, else None.

    Call inside the partition loading context Dagster's update uses (the partitions definition's
    identifier reads the dynamic partitions).
    """
    if asset_record is None or partitions_def is None or not is_cacheable_partition_type(partitions_def):
        return None
    stored = asset_record.asset_entry.cached_status
    if stored is None or stored.earliest_in_progress_materialization_event_id is not None:
        return None
    latest = max(
        asset_record.asset_entry.last_materialization_storage_id or 0,
        get_last_planned_storage_id(instance, asset_key, asset_record),
    )
    if not latest or latest != stored.latest_storage_id:
        return None
    if stored.partitions_def_id != partitions_def.get_serializable_unique_identifier():
        return None
    return stored


def is_current(instance: DagsterInstance, asset_key: AssetKey, partitions_def: PartitionsDefinition) -> bool:
    """Whether the asset's stored status cache row already covers everything that happened (the
    `partition_status_cache` sensor then leaves it alone instead of re-serializing it)."""
    from dagster._core.definitions.partitions.context import partition_loading_context

    record = next(iter(instance.get_asset_records([asset_key])), None)
    with partition_loading_context(None, instance):
        return unchanged_cache_value(instance, asset_key, partitions_def, record) is not None

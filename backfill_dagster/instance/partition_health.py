"""The UI's partitions bar at whole-market scale: a multi-partition key read by splitting its string.

The asset page's partitions bar (`PartitionHealthQuery`) groups the materialized, failed and
in-progress partitions by the primary dimension. Dagster's `build_multi_partition_ranges_generic`
does it by parsing every key into a `MultiPartitionKey` (type checks, a sort, a named tuple per
dimension, the string rebuilt) and then asking it for a dict of its dimensions, twice: at 252,000
partitions that was 78% of the query's 2.4-3.0 s (py-spy, docs/benchmarks.md). A key's
string is its dimensions' keys joined by `|` in the order of `partitions_defs` — exactly how
`get_partition_key_from_str` reads it — so this version splits the string once and keeps the two
parts. Everything else (which keys count, the per-primary-key subsets, the run-length encoding,
the time bounds) is Dagster's code as it stands in 1.13, unchanged.

Installed only in the webserver, from the event log's `optimize_for_webserver` (which
dagster-webserver calls at start-up): importing dagster_graphql would cost every run worker
~0.6 s. Same ranges as Dagster's: tests/instance/test_partition_health.py; the function it
replaces is pinned in tests/orchestration/test_dagster_internals.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dagster_graphql.schema  # noqa: F401  (first: the implementation modules import each other through it)
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.definitions.partitions.definition import (
    MultiPartitionsDefinition,
    TimeWindowPartitionsDefinition,
)
from dagster._core.definitions.partitions.subset import PartitionsSubset
from dagster._core.definitions.partitions.utils.multi import (
    MULTIPARTITION_KEY_DELIMITER,
)
from dagster._core.instance import DynamicPartitionsStore
from dagster_graphql.implementation import (
    fetch_asset_checks,
    fetch_assets,
    partition_status_utils,
)
from dagster_graphql.implementation.partition_status_utils import MultiPartitionRange

_dagster_build_multi_partition_ranges_generic = partition_status_utils.build_multi_partition_ranges_generic
_MODULES = (partition_status_utils, fetch_assets, fetch_asset_checks)  # each holds the name


def secondary_keys_by_primary(
    subset: PartitionsSubset, partitions_def: MultiPartitionsDefinition
) -> dict[str, set[str]]:
    """The subset's keys as {primary key: secondary keys}; keys of another shape are left out."""
    names = [dim.name for dim in partitions_def.partitions_defs]
    primary = names.index(partitions_def.primary_dimension.name)
    secondary = names.index(partitions_def.secondary_dimension.name)
    width = len(names)
    grouped: dict[str, set[str]] = defaultdict(set)
    for key in subset.get_partition_keys():
        parts = key.split(MULTIPARTITION_KEY_DELIMITER)
        if len(parts) == width:
            grouped[parts[primary]].add(parts[secondary])
    return grouped


def build_multi_partition_ranges_generic(
    subsets: Mapping[Any, PartitionsSubset | None],
    partitions_def: MultiPartitionsDefinition,
    dynamic_partitions_store: DynamicPartitionsStore,
    build_secondary_dim: Callable[[Mapping[Any, PartitionsSubset]], Any],
) -> Sequence[MultiPartitionRange]:
    """Dagster's function of the same name, each key split once instead of parsed (see above)."""
    primary_dim = partitions_def.primary_dimension
    secondary_dim = partitions_def.secondary_dimension

    with partition_loading_context(dynamic_partitions_store=dynamic_partitions_store):
        primary_keys = list(primary_dim.partitions_def.get_partition_keys())
        dim2_keys_by_dim1_by_status = {
            status: secondary_keys_by_primary(subset, partitions_def)
            for status, subset in subsets.items()
            if subset
        }

        # From here on, Dagster's code (1.13).
        primary_to_status_subsets: dict[str, dict[Any, PartitionsSubset]] = {}
        for primary_key in primary_keys:
            status_subsets: dict[Any, PartitionsSubset] = {}
            for status, dim2_keys_by_dim1 in dim2_keys_by_dim1_by_status.items():
                if primary_key in dim2_keys_by_dim1:
                    status_subsets[status] = secondary_dim.partitions_def.empty_subset().with_partition_keys(
                        dim2_keys_by_dim1[primary_key]
                    )
            primary_to_status_subsets[primary_key] = status_subsets

        ranges = []
        i = 0
        while i < len(primary_keys):
            start_key = primary_keys[i]
            start_subsets = primary_to_status_subsets[start_key]
            if not start_subsets:
                i += 1
                continue
            j = i + 1
            while j < len(primary_keys):
                if primary_to_status_subsets[primary_keys[j]] != start_subsets:
                    break
                j += 1
            end_key = primary_keys[j - 1]
            secondary_statuses = build_secondary_dim(start_subsets)
            start_time = None
            end_time = None
            if isinstance(primary_dim.partitions_def, TimeWindowPartitionsDefinition):
                start_time = primary_dim.partitions_def.time_window_for_partition_key(start_key).start.timestamp()
                end_time = primary_dim.partitions_def.time_window_for_partition_key(end_key).end.timestamp()
            ranges.append(
                MultiPartitionRange(
                    primary_dim_start_key=start_key,
                    primary_dim_end_key=end_key,
                    primary_dim_start_time=start_time,
                    primary_dim_end_time=end_time,
                    secondary_dim=secondary_statuses,
                )
            )
            i = j
        return ranges


def install() -> None:
    """Use this version wherever dagster_graphql calls it (idempotent)."""
    for module in _MODULES:
        module.build_multi_partition_ranges_generic = build_multi_partition_ranges_generic


def uninstall() -> None:
    """Dagster's own version again (tests compare the two)."""
    for module in _MODULES:
        module.build_multi_partition_ranges_generic = _dagster_build_multi_partition_ranges_generic

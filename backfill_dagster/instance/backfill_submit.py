"""The backfill daemon's submission of box runs, without a MultiPartitionKey object per partition.

When the daemon submits a backfill's runs (`_submit_runs_and_update_backfill_in_chunks`,
dagster/_core/execution/asset_backfill.py), each range run's partitions are listed twice per asset
with `MultiPartitionsDefinition.get_partition_keys_in_range`, which builds a MultiPartitionKey for
each: once for the run's planned events (`DagsterRun.get_resolved_partitions_subset_for_events`,
called by `create_run` for every asset of the run), once for the backfill's requested subset
(`_get_requested_asset_graph_subset_from_run_requests`, after each run). A MultiPartitionKey is a
str subclass carrying a list of its dimensions' keys, ~700 bytes against ~65 for the string: 500
symbols x 504 sessions x 4 assets made 2 M of them in the submission of the 22 box runs, half of
its CPU, and the requested subset held 1 M of them until the iteration's last write (its ~700 MB
were the daemon's high-water mark, which glibc does not give back).

Where only the keys' strings are used, this builds the strings: a key of a multi-partitions
definition is its dimensions' keys joined by '|' in the definition's dimension order (sorted by
name, as a MultiPartitionKey orders them), the range being the product of each dimension's own
range, as Dagster computes it (each dimension's `get_partition_keys_in_range`, same order). Both
subsets are DefaultPartitionsSubsets of those keys: equal to Dagster's, serialized the same (keys
sorted as strings), the same set iteration order (the set is built as Dagster builds it, and a str
subclass hashes as its string), so the same planned events and the same requested subset are
stored. The requested subset of one run request is one key set shared by its assets when their
partitions definitions are equal (Dagster's subset operations never change a set in place; they
build new ones).

Every other case is Dagster's own code: a run with a stored partitions subset, one partition
(`dagster/partition`), a partitions definition that is not multi-dimensional or overrides the
range, dimensions whose names are not in order, assets of a run request whose definitions differ.

Installed in every process that loads the project's instance plug-ins (imported by event_log.py and
scheduler.py, as backfill_runs.py is). The Dagster functions it replaces and mirrors are pinned in
tests/orchestration/test_dagster_internals.py; tests/instance/test_backfill_submit.py compares
both with Dagster's, and a backfill's first iteration on PostgreSQL with and without this.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.definitions.partitions.definition import MultiPartitionsDefinition
from dagster._core.definitions.partitions.partition_key_range import PartitionKeyRange
from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
from dagster._core.definitions.partitions.subset.key_ranges import KeyRangesPartitionsSubset
from dagster._core.definitions.partitions.utils.multi import MULTIPARTITION_KEY_DELIMITER
from dagster._core.execution import asset_backfill
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

_dagster_get_requested_asset_graph_subset_from_run_requests = (
    asset_backfill._get_requested_asset_graph_subset_from_run_requests
)
_dagster_get_resolved_partitions_subset_for_events = DagsterRun.get_resolved_partitions_subset_for_events
_dagster_get_partition_keys_in_range = MultiPartitionsDefinition.get_partition_keys_in_range


def handles(partitions_def) -> bool:
    """Whether range_keys() gives `partitions_def`'s keys in a range as Dagster does (as strings)."""
    if not isinstance(partitions_def, MultiPartitionsDefinition):
        return False
    if type(partitions_def).get_partition_keys_in_range is not _dagster_get_partition_keys_in_range:
        return False  # a subclass with a range of its own
    names = [dim.name for dim in partitions_def.partitions_defs]
    return names == sorted(names)


def range_keys(partitions_def: MultiPartitionsDefinition, partition_key_range: PartitionKeyRange) -> list[str]:
    """`partitions_def.get_partition_keys_in_range(partition_key_range)` as plain strings, in the
    same order; for a definition handles() accepts, under the caller's partition loading context."""
    with partition_loading_context():
        start = partitions_def.get_partition_key_from_str(partition_key_range.start)
        end = partitions_def.get_partition_key_from_str(partition_key_range.end)
        sequences = [
            dim.partitions_def.get_partition_keys_in_range(
                PartitionKeyRange(start.keys_by_dimension[dim.name], end.keys_by_dimension[dim.name])
            )
            for dim in partitions_def.partitions_defs
        ]
    return [MULTIPARTITION_KEY_DELIMITER.join(keys) for keys in itertools.product(*sequences)]


def range_subset(partitions_def, partition_key_range: PartitionKeyRange) -> DefaultPartitionsSubset:
    """`partitions_def.subset_with_partition_keys(partitions_def.get_partition_keys_in_range(range))`
    with plain string keys: built by Dagster's own subset_with_partition_keys, so that the set is
    built as Dagster builds it (a set's iteration order depends on how it grew, not only on its keys)."""
    return partitions_def.subset_with_partition_keys(range_keys(partitions_def, partition_key_range))


def get_resolved_partitions_subset_for_events(self: DagsterRun, partitions_def):
    """Dagster's `DagsterRun.get_resolved_partitions_subset_for_events`, with the keys of a
    multi-partitions range run as plain strings."""
    start = self.tags.get(ASSET_PARTITION_RANGE_START_TAG)
    end = self.tags.get(ASSET_PARTITION_RANGE_END_TAG)
    stored = self.partitions_subset is not None and not isinstance(self.partitions_subset, KeyRangesPartitionsSubset)
    if stored or not (start and end) or not handles(partitions_def):
        return _dagster_get_resolved_partitions_subset_for_events(self, partitions_def)
    return range_subset(partitions_def, PartitionKeyRange(start, end))


def _requested_in_range(run_request, asset_graph_view) -> AssetGraphSubset | None:
    """The subset a range run request asks for, as Dagster's function computes it, with plain keys;
    None when Dagster's own code must answer."""
    start = run_request.tags.get(ASSET_PARTITION_RANGE_START_TAG)
    end = run_request.tags.get(ASSET_PARTITION_RANGE_END_TAG)
    selected = run_request.asset_selection
    if not (start and end and selected):
        return None
    graph = asset_graph_view.asset_graph
    if not all(graph.has(key) for key in selected):
        return None
    defs = [graph.get(key).partitions_def for key in selected]
    if not all(handles(d) for d in defs):
        return None
    computed: list[tuple[MultiPartitionsDefinition, DefaultPartitionsSubset]] = []
    by_asset = {}
    with partition_loading_context(new_ctx=asset_graph_view.partition_loading_context):
        for key, partitions_def in zip(selected, defs, strict=True):
            subset = next((s for d, s in computed if d == partitions_def), None)
            if subset is None:
                subset = range_subset(partitions_def, PartitionKeyRange(start, end))
                computed.append((partitions_def, subset))
            if not subset.is_empty:
                by_asset[key] = subset
    return AssetGraphSubset(partitions_subsets_by_asset_key=by_asset, non_partitioned_asset_keys=set())


def get_requested_asset_graph_subset_from_run_requests(run_requests: Sequence, asset_graph_view) -> AssetGraphSubset:
    """Dagster's `_get_requested_asset_graph_subset_from_run_requests`, with the keys of a
    multi-partitions range run as plain strings (one key set per partitions definition)."""
    requested = AssetGraphSubset.create_empty_subset()
    for run_request in run_requests:
        in_range = _requested_in_range(run_request, asset_graph_view)
        if in_range is None:
            in_range = _dagster_get_requested_asset_graph_subset_from_run_requests([run_request], asset_graph_view)
        requested = requested | in_range
    return requested


def install() -> None:
    """Plain keys in this process's run submission (idempotent)."""
    asset_backfill._get_requested_asset_graph_subset_from_run_requests = get_requested_asset_graph_subset_from_run_requests
    DagsterRun.get_resolved_partitions_subset_for_events = get_resolved_partitions_subset_for_events


def uninstall() -> None:
    """Dagster's own code again (tests compare the two)."""
    asset_backfill._get_requested_asset_graph_subset_from_run_requests = (
        _dagster_get_requested_asset_graph_subset_from_run_requests
    )
    DagsterRun.get_resolved_partitions_subset_for_events = _dagster_get_resolved_partitions_subset_for_events


install()

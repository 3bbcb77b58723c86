"""The backfill daemon's check that a backfill's target partitions still exist, without every key.

Each asset backfill iteration first checks that every targeted partition still exists
(`_check_target_partitions_subset_is_valid`, dagster/_core/execution/asset_backfill.py) by
intersecting the target with `partitions_def.subset_with_all_partitions()`. For sessions x symbols
that builds all 252,000 MultiPartitionKey objects of the definition (~710 B each; Dagster keeps the
179 MB list in an lru_cache) and a set of them, for each of the four assets, on every iteration.

For a two-dimensional multi-partitions definition a key exists exactly when it is two dimension
keys joined by '|' in the definition's dimension order (the format Dagster's keys follow, pinned
with MultiPartitionsDefinition.get_partition_key_from_str) and each exists in its dimension. This
checks that against the dimensions' keys (504 + 500 strings), and remembers a target subset found
valid for the same dimension keys (of any asset): the daemon's row cache (backfill_rows.py) hands the same target
object to every iteration. A removed key raises Dagster's DagsterDefinitionChangedDeserializationError
with Dagster's message, which the daemon turns into a failed backfill, or a wait for a code location
that does not load (backfill_waits.py). Every other case is Dagster's own check.

The same check where a backfill is launched: the webserver's `launchPartitionBackfill` (the UI's
"Materialize partitions" dialog sends every partition key it selected) checks the target of each
asset with `AssetGraphView.get_subset_not_in_graph`, which subtracts `subset_with_all_partitions()`:
all 252,000 MultiPartitionKeys again, which the webserver then keeps in that lru_cache. For a
two-dimensional multi-partitions definition and a subset of keys this answers the same subset (the
candidate's keys that are not the definition's) from the dimensions' keys; every other case is
Dagster's own.

Installed in every process that loads the project's instance plug-ins (imported by event_log.py and
scheduler.py, as backfill_runs.py is); pinned in tests/orchestration/test_dagster_internals.py.
"""

from __future__ import annotations

import threading
import weakref

from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
from dagster._core.asset_graph_view.entity_subset import EntitySubset, _ValidatedEntitySubsetValue
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.definitions.partitions.definition import MultiPartitionsDefinition
from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
from dagster._core.errors import DagsterDefinitionChangedDeserializationError
from dagster._core.execution import asset_backfill

_dagster_check_target_partitions_subset_is_valid = asset_backfill._check_target_partitions_subset_is_valid
_dagster_get_subset_not_in_graph = AssetGraphView.get_subset_not_in_graph

# id(target subset's key set) -> (weak reference to that set, dimension keys it was valid for): whether
# a key set is valid depends only on the dimensions' keys, so assets whose targets share one key set
# (a row read with subset_unpack.py) share the answer. Weak: a target let go by the row cache is not
# kept alive here (a Python set can be weakly referenced).
_valid: dict[int, tuple[weakref.ref, tuple[frozenset[str], ...]]] = {}
_lock = threading.RLock()  # re-entrant: a weak reference's callback may run while it is held


def removed_keys(keys, dimension_keys: tuple[frozenset[str], ...]) -> list[str]:
    """The keys of `keys` that are not a key of each dimension joined by '|' in dimension order."""
    removed = []
    if len(dimension_keys) == 2:  # sessions x symbols: a partition, no list, per key (~3x faster)
        first, second = dimension_keys
        for key in keys:
            head, sep, tail = str(key).partition("|")
            if not (sep and head in first and tail in second) or "|" in tail:
                removed.append(str(key))
        return removed
    for key in keys:
        parts = str(key).split("|")
        if len(parts) != len(dimension_keys) or any(p not in known for p, known in zip(parts, dimension_keys)):
            removed.append(str(key))
    return removed


def check_target_partitions_subset_is_valid(asset_key, asset_graph, target_partitions_subset, instance_queryer) -> None:
    """Dagster's `_check_target_partitions_subset_is_valid`, without building every key of a
    two-dimensional multi-partitions definition."""
    partitions_def = asset_graph.get(asset_key).partitions_def if asset_graph.has(asset_key) else None
    if not (isinstance(partitions_def, MultiPartitionsDefinition) and len(partitions_def.partitions_defs) == 2
            and isinstance(target_partitions_subset, DefaultPartitionsSubset) and target_partitions_subset):
        return _dagster_check_target_partitions_subset_is_valid(
            asset_key, asset_graph, target_partitions_subset, instance_queryer)
    # The dimensions' keys now (a time dimension's end moves; a dynamic one's keys come from the
    # instance), under the partition loading context the daemon's iteration set.
    dimension_keys = tuple(frozenset(dim.partitions_def.get_partition_keys()) for dim in partitions_def.partitions_defs)
    keys = target_partitions_subset.subset
    with _lock:
        held = _valid.get(id(keys))
    if held is not None and held[0]() is keys and held[1] == dimension_keys:
        return
    removed = removed_keys(keys, dimension_keys)
    if removed:
        raise DagsterDefinitionChangedDeserializationError(
            f"Targeted partitions for asset {asset_key} have been removed since this backfill was stored. "
            f"The following partitions were removed: {set(removed)}"
        )
    ident = id(keys)
    with _lock:
        _valid[ident] = (weakref.ref(keys, lambda _, ident=ident: _forget(ident)), dimension_keys)


def _forget(ident: int) -> None:
    with _lock:
        held = _valid.get(ident)
        if held is not None and held[0]() is None:
            del _valid[ident]


def get_subset_not_in_graph(self: AssetGraphView, *, key, candidate_subset: EntitySubset) -> EntitySubset:
    """Dagster's AssetGraphView.get_subset_not_in_graph (the candidate's partitions that are not the
    asset's), without building every key of a two-dimensional multi-partitions definition."""
    partitions_def = self._get_partitions_def(key)
    value = candidate_subset.get_internal_value() if candidate_subset.is_partitioned else None
    if not (isinstance(partitions_def, MultiPartitionsDefinition) and len(partitions_def.partitions_defs) == 2
            and isinstance(value, DefaultPartitionsSubset)):
        return _dagster_get_subset_not_in_graph(self, key=key, candidate_subset=candidate_subset)
    # The dimensions' keys under the view's partition loading context, as Dagster's all-partitions subset.
    with partition_loading_context(new_ctx=self._partition_loading_context):
        dimension_keys = tuple(frozenset(dim.partitions_def.get_partition_keys())
                               for dim in partitions_def.partitions_defs)
    missing = DefaultPartitionsSubset(set(removed_keys(value.subset, dimension_keys)))
    return EntitySubset(self, key=key, value=_ValidatedEntitySubsetValue(missing))


def install() -> None:
    """The checks without every key, in this process (idempotent)."""
    asset_backfill._check_target_partitions_subset_is_valid = check_target_partitions_subset_is_valid
    AssetGraphView.get_subset_not_in_graph = get_subset_not_in_graph


def uninstall() -> None:
    """Dagster's own checks again (tests compare the two)."""
    asset_backfill._check_target_partitions_subset_is_valid = _dagster_check_target_partitions_subset_is_valid
    AssetGraphView.get_subset_not_in_graph = _dagster_get_subset_not_in_graph


install()

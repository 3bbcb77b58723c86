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
valid for the same dimension keys: the daemon's row cache (backfill_rows.py) hands the same target
object to every iteration. A removed key raises Dagster's DagsterDefinitionChangedDeserializationError
with Dagster's message, which the daemon turns into a failed backfill, or a wait for a code location
that does not load (backfill_waits.py). Every other case is Dagster's own check.

Installed in every process that loads the project's instance plug-ins (imported by event_log.py and
scheduler.py, as backfill_runs.py is); pinned in tests/orchestration/test_dagster_internals.py.
"""

from __future__ import annotations

import threading
import weakref

from dagster._core.definitions.partitions.definition import MultiPartitionsDefinition
from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
from dagster._core.errors import DagsterDefinitionChangedDeserializationError
from dagster._core.execution import asset_backfill

_dagster_check_target_partitions_subset_is_valid = asset_backfill._check_target_partitions_subset_is_valid

# id(target subset's key set) -> (weak reference to that set, asset key, dimension keys it was valid for).
# Weak: a target let go by the row cache is not kept alive here (a Python set can be weakly referenced).
_valid: dict[int, tuple[weakref.ref, object, tuple[frozenset[str], ...]]] = {}
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
    if held is not None and held[0]() is keys and held[1] == asset_key and held[2] == dimension_keys:
        return
    removed = removed_keys(keys, dimension_keys)
    if removed:
        raise DagsterDefinitionChangedDeserializationError(
            f"Targeted partitions for asset {asset_key} have been removed since this backfill was stored. "
            f"The following partitions were removed: {set(removed)}"
        )
    ident = id(keys)
    with _lock:
        _valid[ident] = (weakref.ref(keys, lambda _, ident=ident: _forget(ident)), asset_key, dimension_keys)


def _forget(ident: int) -> None:
    with _lock:
        held = _valid.get(ident)
        if held is not None and held[0]() is None:
            del _valid[ident]


def install() -> None:
    """The check without every key, in this process (idempotent)."""
    asset_backfill._check_target_partitions_subset_is_valid = check_target_partitions_subset_is_valid


def uninstall() -> None:
    """Dagster's own check again (tests compare the two)."""
    asset_backfill._check_target_partitions_subset_is_valid = _dagster_check_target_partitions_subset_is_valid


install()

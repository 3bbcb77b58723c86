"""The backfill daemon's copy of the backfill rows it works on, keyed by the row's version.

Dagster keeps a whole asset backfill (target, requested, materialized and failed partitions) in one
`bulk_actions.body` row: 18-54 MB of JSON for 500 symbols x 504 sessions x 4 assets, 97-290 MB once
deserialized. One iteration of the backfill daemon reads that row 5-6 times (the in-progress list,
the backfill it processes, re-reads around run submission, and `update_backfill`'s existence
check) and writes it once; each read deserializes a copy of its own (docs/benchmarks.md, "Where a
whole-market backfill's memory goes"). The daemon is the only process that changes a row between
two of its own reads, except when the webserver cancels, so a read can ask PostgreSQL for the row's
version (`xmin`, the transaction that wrote it) and deserialize the body only when this process does
not already hold that version. Every caller then gets the same object: Dagster treats a
PartitionBackfill and its subsets as immutable values (each subset operation builds new sets).

The cache is bounded three ways: only backfills in progress are held (a row read or written with a
terminal status is dropped), at most MAX_ROWS of them (least recently used first out), and only in
the backfill daemon's threads (`in_backfill_daemon`): the webserver and every other thread of the
daemon read as Dagster does, so a process that shows backfills never holds these rows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

# Rows held at most: a whole-market backfill is ~100-300 MB deserialized; the daemon rarely works on
# more than one or two at once, and a row pushed out is only read again, not lost.
MAX_ROWS = 4

IN_PROGRESS = frozenset({BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING})

# The threads in which dagster-daemon's backfill loop runs (dagster/_daemon/controller.py names each
# daemon's thread `dagster-daemon-<type>`; BackfillDaemon's pools prefix their workers so), pinned in
# tests/orchestration/test_dagster_internals.py.
BACKFILL_DAEMON_THREADS = ("dagster-daemon-BACKFILL", "backfill_daemon_worker", "backfill_submit_worker")

SUBSET_FIELDS = ("target_subset", "requested_subset", "materialized_subset", "failed_and_downstream_subset")


def in_backfill_daemon(thread: threading.Thread | None = None) -> bool:
    """Whether `thread` (the calling one by default) is one of dagster-daemon's backfill threads."""
    return (thread or threading.current_thread()).name.startswith(BACKFILL_DAEMON_THREADS)


def _partitions_subsets(backfill: PartitionBackfill):
    """(field, asset key, subset) of every per-asset partitions subset the backfill holds."""
    data = backfill.asset_backfill_data
    if data is None:
        return
    for field in SUBSET_FIELDS:
        for asset_key, subset in getattr(data, field).partitions_subsets_by_asset_key.items():
            yield field, asset_key, subset


def plain_keys(backfill: PartitionBackfill, known_plain: frozenset[int] = frozenset()) -> PartitionBackfill:
    """`backfill` with every DefaultPartitionsSubset whose keys are MultiPartitionKey objects rebuilt
    with plain str keys, as a read of the row gives them. The requested subset the daemon builds
    from its run requests' ranges holds MultiPartitionKeys (~700 B each, against ~60 B for the
    string): 1 M of them would keep ~700 MB alive in the cache. Equal as values (a MultiPartitionKey
    is the str of its key) and serialized the same. Subsets whose id is in `known_plain` (taken
    from the cached copy, so alive and already plain) are not scanned again."""
    data = backfill.asset_backfill_data
    if data is None:
        return backfill
    rebuilt: dict[str, dict] = {}
    for field, asset_key, subset in _partitions_subsets(backfill):
        if (isinstance(subset, DefaultPartitionsSubset) and id(subset) not in known_plain
                and any(type(key) is not str for key in subset.subset)):
            rebuilt.setdefault(field, {})[asset_key] = DefaultPartitionsSubset({str(key) for key in subset.subset})
    if not rebuilt:
        return backfill
    fields = {}
    for field, changed in rebuilt.items():
        graph_subset = getattr(data, field)
        fields[field] = graph_subset._replace(
            partitions_subsets_by_asset_key={**graph_subset.partitions_subsets_by_asset_key, **changed})
    return backfill._replace(asset_backfill_data=data._replace(**fields))


class BackfillRowCache:
    """Deserialized backfill rows by key, each with the row version (`xmin`) it was read or written as."""

    def __init__(self, max_rows: int = MAX_ROWS):
        self.max_rows = max_rows
        self._rows: OrderedDict[str, tuple[str, PartitionBackfill]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, version: str) -> PartitionBackfill | None:
        """The row held for `key` if it is that version."""
        with self._lock:
            held = self._rows.get(key)
            if held is None or held[0] != version:
                return None
            self._rows.move_to_end(key)
            return held[1]

    def put(self, key: str, version: str, backfill: PartitionBackfill) -> None:
        """Hold `backfill` as row `key` at `version`, or drop the row once it is no longer in progress."""
        with self._lock:
            if backfill.status not in IN_PROGRESS:
                self._rows.pop(key, None)
                return
            self._rows[key] = (version, backfill)
            self._rows.move_to_end(key)
            while len(self._rows) > self.max_rows:
                self._rows.popitem(last=False)

    def drop(self, key: str) -> None:
        with self._lock:
            self._rows.pop(key, None)

    def plain(self, backfill: PartitionBackfill) -> PartitionBackfill:
        """plain_keys(backfill), skipping the subsets it shares with the copy held of its row."""
        with self._lock:
            held = self._rows.get(backfill.backfill_id)
        known = frozenset(id(subset) for _, _, subset in _partitions_subsets(held[1])) if held else frozenset()
        return plain_keys(backfill, known)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._rows)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

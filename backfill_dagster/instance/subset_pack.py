"""A large DefaultPartitionsSubset is packed for serialization once, not once per write.

The backfill daemon writes the whole backfill row every iteration (Dagster's `update_backfill`),
and serdes packs each DefaultPartitionsSubset by sorting its keys (`sorted(..., key=str)`) and
transforming each: 0.9-2.4 s an iteration for 500 symbols x 504 sessions x 4 assets, about half of
it sorting, though the target and the requested subsets never change after the first iterations
and the materialized one only when something new was materialized. With the daemon's row cache
(backfill_rows.py) an unchanged subset is the same object from one write to the next, so the packed
items of a subset of at least MEMO_MIN_KEYS keys are remembered for its key set and handed back
for the next write of that set: the same JSON, without the sort.

What is remembered is held weakly through the key set (a Python set can be weakly referenced): it
goes when the subset goes, so a process holds packed items only for subsets it holds anyway (the
items share the set's strings; their list is ~8 bytes a key). A key set is never changed in place
(Dagster's subset operations build new sets); its size is checked as well.

Installed in every process that loads the project's instance plug-ins (imported by event_log.py and
scheduler.py, as backfill_runs.py is); serdes's pack_items is pinned in
tests/orchestration/test_dagster_internals.py.
"""

from __future__ import annotations

import threading
import weakref

from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset  # noqa: F401  (registers it)
from dagster_shared.serdes.serdes import _WHITELIST_MAP

# Smaller subsets pack in well under a millisecond: not worth remembering.
MEMO_MIN_KEYS = 1000

_serializer = _WHITELIST_MAP.object_serializers["DefaultPartitionsSubset"]
_dagster_pack_items = type(_serializer).pack_items

# id(key set) -> (weak reference to the set, its size, the object handler, the packed items)
_packed: dict[int, tuple[weakref.ref, int, object, list]] = {}
_lock = threading.RLock()  # re-entrant: a weak reference's callback may run while it is held


def pack_items(value, whitelist_map, object_handler, descent_path):
    """serdes's pack_items for a DefaultPartitionsSubset, remembered per key set when large."""
    keys = value.subset
    if len(keys) < MEMO_MIN_KEYS:
        return _dagster_pack_items(_serializer, value, whitelist_map, object_handler, descent_path)
    ident = id(keys)
    with _lock:
        held = _packed.get(ident)
    if held is not None and held[0]() is keys and held[1] == len(keys) and held[2] is object_handler:
        return iter(held[3])
    items = list(_dagster_pack_items(_serializer, value, whitelist_map, object_handler, descent_path))
    with _lock:
        _packed[ident] = (weakref.ref(keys, lambda _, ident=ident: _forget(ident)), len(keys), object_handler, items)
    return iter(items)


def _forget(ident: int) -> None:
    with _lock:
        held = _packed.get(ident)
        if held is not None and held[0]() is None:
            del _packed[ident]


def install() -> None:
    """Remember large subsets' packed items in this process (idempotent)."""
    _serializer.pack_items = pack_items


def uninstall() -> None:
    """serdes's own packing again (tests compare the two)."""
    _serializer.__dict__.pop("pack_items", None)
    with _lock:
        _packed.clear()


install()

"""A deserialized backfill row's equal partition subsets share one key set.

An asset backfill's row (`bulk_actions.body`) holds, per asset, its target, requested, materialized
and failed partitions, each a DefaultPartitionsSubset whose keys json.loads makes into a set of
strings of its own. A whole-market backfill's assets share their partitions, so most of these sets
are equal: the four targets; the requested sets once every run is requested (equal to the
targets); the materialized sets between box runs. At 500 symbols x 504 sessions x 4 assets, half
way through, that is 12 sets of 126,000-252,000 keys (~73 B a string, 8-16 MB a set table), 234 MB
deserialized, for 2 distinct sets. Every process that reads the row pays for all of them: the
webserver on every status poll of a running backfill (the UI's backfill page,
bench/scale_backfill.py) and the gap sensor's ticks did, the daemon for the copy it holds
(backfill_rows.py).

Here, as a DefaultPartitionsSubset of at least SHARE_MIN_KEYS keys is unpacked, its key set is
replaced by an equal one already unpacked in the same deserialization (kept by size on Dagster's
UnpackContext, which lives for one deserialized value), so its own strings and set are freed at
once: the row above deserializes to 51 MB. Equal sets, so every comparison, set operation and
serialization gives what it gave. Sharing one set object between subsets relies on what the project
already relies on (subset_pack.py, backfill_rows.py): Dagster never changes a subset's key set in
place; every subset operation builds a new one.

Installed in every process that loads the project's instance plug-ins (imported by event_log.py and
scheduler.py, as subset_pack.py is); the serdes hook it uses (ObjectSerializer.unpack hands the
unpacked fields to the serializer's `before_unpack` first) is pinned in
tests/orchestration/test_dagster_internals.py.
"""

from __future__ import annotations

from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset  # noqa: F401  (registers it)
from dagster_shared.serdes.serdes import _WHITELIST_MAP

# Smaller sets are not worth comparing.
SHARE_MIN_KEYS = 1000

_serializer = _WHITELIST_MAP.object_deserializers["DefaultPartitionsSubset"]
# The attribute of Dagster's UnpackContext holding this deserialization's large key sets by size.
_SEEN = "_backfill_dagster_key_sets"


def before_unpack(context, unpacked_dict):
    """serdes's before_unpack for a DefaultPartitionsSubset (Dagster's returns the fields as they
    are), with a large key set equal to one already unpacked in this deserialization swapped for it."""
    keys = unpacked_dict.get("subset")
    if isinstance(keys, set) and len(keys) >= SHARE_MIN_KEYS:
        seen = getattr(context, _SEEN, None)
        if seen is None:
            seen = {}
            setattr(context, _SEEN, seen)
        earlier_sets = seen.setdefault(len(keys), [])
        for earlier in earlier_sets:
            if earlier == keys:  # C: stops at the first key the earlier set lacks
                unpacked_dict["subset"] = earlier
                break
        else:
            earlier_sets.append(keys)
    return unpacked_dict


def install() -> None:
    """Share equal large key sets within each of this process's deserializations (idempotent)."""
    _serializer.before_unpack = before_unpack


def uninstall() -> None:
    """serdes's own unpacking again (tests compare the two)."""
    _serializer.__dict__.pop("before_unpack", None)


install()

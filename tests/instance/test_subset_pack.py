"""A large DefaultPartitionsSubset is packed once per key set (instance/subset_pack.py): the same
JSON as serdes's own, the sort skipped on the next write, nothing kept once the subset goes."""

from __future__ import annotations

import gc

from dagster._core.definitions.events import AssetKey
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.partitions.definition.multi import MultiPartitionKey
from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
from dagster._serdes import deserialize_value, serialize_value
from dagster_shared.serdes.serdes import pack_value

import backfill_dagster.instance.event_log  # noqa: F401  (installs it, as the daemon's instance does)
from backfill_dagster.instance import subset_pack
from backfill_dagster.instance.subset_pack import MEMO_MIN_KEYS


def keys(n: int, symbol: str = "S") -> set[str]:
    return {f"2024-01-{1 + i % 28:02d}|{symbol}{i:05d}" for i in range(n)}


def stock(fn, *args):
    subset_pack.uninstall()
    try:
        return fn(*args)
    finally:
        subset_pack.install()


def test_installed_where_the_instance_plug_ins_load():
    from dagster_shared.serdes.serdes import _WHITELIST_MAP

    assert _WHITELIST_MAP.object_serializers["DefaultPartitionsSubset"].pack_items is subset_pack.pack_items


def test_the_same_json_as_serdes_s_own_first_and_again():
    small, large = DefaultPartitionsSubset(keys(3)), DefaultPartitionsSubset(keys(5 * MEMO_MIN_KEYS))
    multi = DefaultPartitionsSubset({MultiPartitionKey({"date": "2024-01-02", "symbol": f"S{i}"})
                                     for i in range(MEMO_MIN_KEYS)})
    graph = AssetGraphSubset(partitions_subsets_by_asset_key={AssetKey("a"): large, AssetKey("b"): small,
                                                              AssetKey("c"): multi})
    expected = stock(serialize_value, graph)
    assert serialize_value(graph) == expected  # packed now
    assert id(large.subset) in subset_pack._packed and id(small.subset) not in subset_pack._packed
    assert serialize_value(graph) == expected  # from what was remembered
    assert pack_value(large) == stock(pack_value, large)  # another object handler: its own items
    assert pack_value(large) == stock(pack_value, large)
    assert deserialize_value(serialize_value(graph), AssetGraphSubset) == graph


def test_a_new_key_set_of_the_same_keys_or_a_changed_one_is_packed_anew():
    first = DefaultPartitionsSubset(keys(MEMO_MIN_KEYS))
    serialize_value(first)
    grown = DefaultPartitionsSubset(first.subset | {"2024-02-01|NEW"})
    assert serialize_value(grown) == stock(serialize_value, grown)
    first.subset.add("2024-02-02|NEW")  # never done by Dagster; the size check still sees it
    assert serialize_value(first) == stock(serialize_value, first)


def test_nothing_is_kept_once_the_subset_goes():
    subset = DefaultPartitionsSubset(keys(MEMO_MIN_KEYS))
    serialize_value(subset)
    ident = id(subset.subset)
    assert ident in subset_pack._packed
    del subset
    gc.collect()
    assert ident not in subset_pack._packed

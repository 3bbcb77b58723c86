"""A deserialized row's equal large DefaultPartitionsSubsets share one key set
(instance/subset_unpack.py): the same values as serdes's own, the same JSON when written again,
one set object per distinct large key set in one deserialization, small sets, unequal sets and
other deserializations left alone."""

from __future__ import annotations

from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKey
from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
from dagster._serdes import deserialize_value, serialize_value

import backfill_dagster.instance.event_log  # noqa: F401  (installs it, as every instance's process does)
from backfill_dagster.instance import subset_unpack
from backfill_dagster.instance.subset_unpack import SHARE_MIN_KEYS

A, B, C, D = AssetKey("a"), AssetKey("b"), AssetKey("c"), AssetKey("d")


def keys(n: int, first: int = 0) -> set[str]:
    return {f"2024-01-{1 + i % 28:02d}|S{i:05d}" for i in range(first, first + n)}


def stock(fn, *args):
    subset_unpack.uninstall()
    try:
        return fn(*args)
    finally:
        subset_unpack.install()


def row() -> str:
    """A backfill row's subsets: three assets' targets over the same keys, a fourth of the same size
    over other keys, a small one; then the first two assets' materialized part."""
    every, part = keys(3 * SHARE_MIN_KEYS), keys(2 * SHARE_MIN_KEYS)
    return serialize_value([
        AssetGraphSubset(partitions_subsets_by_asset_key={
            A: DefaultPartitionsSubset(set(every)), B: DefaultPartitionsSubset(set(every)),
            C: DefaultPartitionsSubset(set(every)), D: DefaultPartitionsSubset(keys(3 * SHARE_MIN_KEYS, first=1))}),
        AssetGraphSubset(partitions_subsets_by_asset_key={
            A: DefaultPartitionsSubset(set(part)), B: DefaultPartitionsSubset(set(part)),
            C: DefaultPartitionsSubset(keys(5))}),
    ])


def sets(graph: AssetGraphSubset, *assets: AssetKey) -> list[set]:
    return [graph.get_partitions_subset(a).subset for a in assets]


def test_installed_where_the_instance_plug_ins_load():
    from dagster_shared.serdes.serdes import _WHITELIST_MAP

    assert _WHITELIST_MAP.object_deserializers["DefaultPartitionsSubset"].before_unpack is subset_unpack.before_unpack


def test_the_same_value_and_json_with_equal_key_sets_shared():
    text = row()
    ours, theirs = deserialize_value(text), stock(deserialize_value, text)
    assert ours == theirs
    assert serialize_value(ours) == text == serialize_value(theirs)
    target, materialized = ours
    a, b, c, d = sets(target, A, B, C, D)
    assert a is b is c and d is not a and d != a  # the same size, other keys: its own
    done_a, done_b, small = sets(materialized, A, B, C)
    assert done_a is done_b and done_a is not a
    stock_target, _ = theirs
    stock_a, stock_b = sets(stock_target, A, B)
    assert stock_a == stock_b and stock_a is not stock_b  # serdes: one set per subset


def test_small_sets_and_other_deserializations_keep_their_own():
    small = {"x": DefaultPartitionsSubset(keys(5)), "y": DefaultPartitionsSubset(keys(5))}
    first, second = deserialize_value(serialize_value(small)), deserialize_value(serialize_value(small))
    assert first["x"].subset is not first["y"].subset
    text = row()
    one, other = deserialize_value(text), deserialize_value(text)
    assert sets(one[0], A)[0] is not sets(other[0], A)[0] and one == other


def test_a_backfill_read_from_the_instance_is_the_same_either_way(tmp_path):
    import dagster as dg

    from backfill_dagster.orchestration.backfills import launch_backfill

    partitions = dg.MultiPartitionsDefinition({
        "date": dg.StaticPartitionsDefinition([f"2024-01-{d:02d}" for d in range(1, 29)]),
        "symbol": dg.DynamicPartitionsDefinition(name="syms")})

    @dg.asset(partitions_def=partitions)
    def up() -> None:
        pass

    @dg.asset(partitions_def=partitions, deps=[up])
    def down() -> None:
        pass

    graph = dg.Definitions(assets=[up, down]).resolve_asset_graph()
    symbols = [f"S{i:03d}" for i in range(60)]
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions("syms", symbols)
        backfill_id = launch_backfill(instance, graph, [f"2024-01-{d:02d}|{s}" for d in range(1, 29) for s in symbols],
                                      [up.key, down.key], title="t")
        ours, theirs = instance.get_backfill(backfill_id), stock(instance.get_backfill, backfill_id)
        assert ours == theirs
        target = ours.asset_backfill_data.target_subset
        assert len(target.get_partitions_subset(up.key)) == 28 * 60 >= SHARE_MIN_KEYS
        assert target.get_partitions_subset(up.key).subset is target.get_partitions_subset(down.key).subset

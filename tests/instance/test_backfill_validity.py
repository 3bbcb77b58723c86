"""The backfill daemon's target check (instance/backfill_validity.py) answers as Dagster's does for
sessions x symbols, without building the definition's keys: valid targets pass, a removed symbol or
a removed session raises Dagster's DagsterDefinitionChangedDeserializationError (what the daemon
fails the backfill with, or waits on: backfill_waits.py), and anything else is Dagster's check."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.definitions.partitions.definition.multi import MultiPartitionsDefinition
from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
from dagster._core.errors import DagsterDefinitionChangedDeserializationError
from dagster._core.execution import asset_backfill

import backfill_dagster.instance.event_log  # noqa: F401  (installs it, as the daemon's instance does)
from backfill_dagster.instance import backfill_validity
from backfill_dagster.instance.backfill_validity import check_target_partitions_subset_is_valid, removed_keys

stock_check = backfill_validity._dagster_check_target_partitions_subset_is_valid

SESSIONS = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-03-01")
PARTITIONS = dg.MultiPartitionsDefinition({"date": SESSIONS, "symbol": dg.DynamicPartitionsDefinition(name="syms")})


@dg.asset(partitions_def=PARTITIONS)
def bars() -> None:
    pass


@dg.asset
def unpartitioned() -> None:
    pass


@dg.asset(partitions_def=SESSIONS)
def daily() -> None:
    pass


GRAPH = dg.Definitions(assets=[bars, unpartitioned, daily]).resolve_asset_graph()
DATES = ["2024-01-02", "2024-01-03", "2024-02-29"]


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("syms", ["AAA", "BBB", "CCC"])
        with partition_loading_context(dynamic_partitions_store=instance):
            yield instance


def target(*keys: str) -> DefaultPartitionsSubset:
    return DefaultPartitionsSubset(set(keys))


def outcome(check, asset_key, subset, instance):
    try:
        check(asset_key, GRAPH, subset, instance)
    except DagsterDefinitionChangedDeserializationError as e:
        return type(e), str(e)
    return None


def test_it_is_the_check_the_daemon_calls():
    assert asset_backfill._check_target_partitions_subset_is_valid is check_target_partitions_subset_is_valid


def test_valid_targets_pass_as_with_dagster_and_the_key_list_is_never_built(instance):
    cached = MultiPartitionsDefinition._get_partition_keys.cache_info()
    for subset in (target(*[f"{d}|{s}" for d in DATES for s in ("AAA", "BBB", "CCC")]), target("2024-01-02|BBB")):
        assert outcome(check_target_partitions_subset_is_valid, bars.key, subset, instance) is None
        assert outcome(check_target_partitions_subset_is_valid, bars.key, subset, instance) is None  # remembered
    assert MultiPartitionsDefinition._get_partition_keys.cache_info() == cached
    for subset in (target(*[f"{d}|{s}" for d in DATES for s in ("AAA", "BBB", "CCC")]), target("2024-01-02|BBB")):
        assert outcome(stock_check, bars.key, subset, instance) is None


@pytest.mark.parametrize("removed", ["2024-01-03|DDD", "2023-12-31|AAA", "2024-03-01|AAA", "AAA|2024-01-02",
                                     "2024-01-02", "2024-01-02|AAA|x"])
def test_a_removed_symbol_or_session_raises_dagster_s_error(instance, removed):
    subset = target("2024-01-02|AAA", "2024-01-02|BBB", removed)
    ours = outcome(check_target_partitions_subset_is_valid, bars.key, subset, instance)
    assert ours == outcome(stock_check, bars.key, subset, instance)
    assert ours[0] is DagsterDefinitionChangedDeserializationError and repr(removed) in ours[1]


def test_a_symbol_removed_after_a_target_was_found_valid_is_seen(instance):
    subset = target("2024-01-02|AAA", "2024-01-02|CCC")
    assert outcome(check_target_partitions_subset_is_valid, bars.key, subset, instance) is None
    instance.delete_dynamic_partition("syms", "CCC")
    ours = outcome(check_target_partitions_subset_is_valid, bars.key, subset, instance)
    assert ours is not None and ours == outcome(stock_check, bars.key, subset, instance)
    assert "'2024-01-02|CCC'" in ours[1]


@pytest.mark.parametrize("asset_key, subset", [
    (dg.AssetKey("gone"), target("2024-01-02|AAA")),    # the asset no longer exists
    (unpartitioned.key, target("2024-01-02|AAA")),       # no longer partitioned
    (bars.key, None),                                    # was not partitioned at storage time
    (daily.key, target("2024-01-02", "2023-01-01")),     # one dimension: Dagster's own check
    (daily.key, target("2024-01-02")),
])
def test_every_other_case_is_dagster_s_check(instance, asset_key, subset):
    assert outcome(check_target_partitions_subset_is_valid, asset_key, subset, instance) == \
        outcome(stock_check, asset_key, subset, instance)


def test_removed_keys_are_those_not_in_every_dimension():
    dims = (frozenset({"2024-01-02"}), frozenset({"AAA"}))
    assert removed_keys(["2024-01-02|AAA", "2024-01-02|BBB", "AAA|2024-01-02", "x"], dims) == \
        ["2024-01-02|BBB", "AAA|2024-01-02", "x"]


def test_a_key_of_more_or_fewer_parts_is_removed_even_if_a_dimension_key_holds_the_delimiter():
    # a dimension key with '|' makes no valid multi-partition key (Dagster leaves those out)
    dims = (frozenset({"d", ""}), frozenset({"s", "s|t", ""}))
    keys = ["d|s", "d|s|t", "d|", "|s", "|", "", "d", "s", "d|t"]
    assert removed_keys(keys, dims) == ["d|s|t", "", "d", "s", "d|t"]
    three = (frozenset({"d"}), frozenset({"s"}), frozenset({"t"}))  # other dimension counts: split as before
    assert removed_keys(["d|s|t", "d|s", "d|s|t|u"], three) == ["d|s", "d|s|t|u"]


def test_what_is_remembered_does_not_outlive_the_target(instance):
    import gc

    subset = target("2024-01-02|AAA")
    check_target_partitions_subset_is_valid(bars.key, GRAPH, subset, instance)
    ident = id(subset.subset)
    assert ident in backfill_validity._valid
    del subset
    gc.collect()
    assert ident not in backfill_validity._valid


# ------------------------------------------------------------- the launch's check (get_subset_not_in_graph)
def not_in_graph(fn, instance, asset_key, subset):
    """What `fn` (Dagster's AssetGraphView.get_subset_not_in_graph or the project's) says of `subset`."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset

    view = AssetGraphView(temporal_context=TemporalContext(effective_dt=NOW, last_event_id=None),
                          instance=instance, asset_graph=GRAPH)
    candidate = view.get_entity_subset_from_asset_graph_subset(
        AssetGraphSubset(partitions_subsets_by_asset_key={asset_key: subset}), asset_key)
    return fn(view, key=asset_key, candidate_subset=candidate).get_internal_value()


NOW = __import__("datetime").datetime(2024, 3, 5, tzinfo=__import__("datetime").timezone.utc)
stock_not_in_graph = backfill_validity._dagster_get_subset_not_in_graph


def test_it_is_the_check_the_webserver_s_launch_calls():
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView

    assert AssetGraphView.get_subset_not_in_graph is backfill_validity.get_subset_not_in_graph


@pytest.mark.parametrize("extra", [(), ("2024-01-03|DDD",), ("2023-12-31|AAA", "2024-03-01|AAA"), ("AAA|2024-01-02",),
                                   ("2024-01-02",), ("2024-01-02|AAA|x",)])
def test_the_launch_s_check_names_the_keys_dagster_s_names_without_the_key_list(instance, extra):
    valid = [f"{d}|{s}" for d in DATES for s in ("AAA", "BBB", "CCC")]
    subset = target(*valid, *extra)
    cached = MultiPartitionsDefinition._get_partition_keys.cache_info()
    ours = not_in_graph(backfill_validity.get_subset_not_in_graph, instance, bars.key, subset)
    assert MultiPartitionsDefinition._get_partition_keys.cache_info() == cached
    assert ours == not_in_graph(stock_not_in_graph, instance, bars.key, subset)
    assert isinstance(ours, DefaultPartitionsSubset) and set(ours.subset) == set(extra)


def test_multi_partition_key_objects_are_checked_as_their_strings(instance):
    from dagster._core.definitions.partitions.definition.multi import MultiPartitionKey

    subset = DefaultPartitionsSubset({MultiPartitionKey({"date": "2024-01-02", "symbol": s}) for s in ("AAA", "DDD")})
    ours = not_in_graph(backfill_validity.get_subset_not_in_graph, instance, bars.key, subset)
    assert ours == not_in_graph(stock_not_in_graph, instance, bars.key, subset)
    assert set(map(str, ours.subset)) == {"2024-01-02|DDD"}


def test_a_one_dimension_asset_is_dagster_s_launch_check(instance):
    subset = target("2024-01-02", "2023-01-01")
    ours = not_in_graph(backfill_validity.get_subset_not_in_graph, instance, daily.key, subset)
    assert ours == not_in_graph(stock_not_in_graph, instance, daily.key, subset)
    assert not ours.is_empty

"""The backfill daemon's run submission with plain partition keys (instance/backfill_submit.py): the
range of a sessions x symbols run as Dagster lists it, the planned events' subset and the backfill's
requested subset equal to Dagster's (same keys, same order, same serialization) but of plain
strings, Dagster's own code for everything else; and a backfill's first iteration on PostgreSQL,
boxes submitted by Dagster's daemon, stores the same runs, planned events and backfill row with and
without it."""

from __future__ import annotations

import contextlib
import logging
import uuid

import dagster as dg
import pytest
import yaml
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.definitions.partitions.definition.multi import MultiPartitionsDefinition
from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
from dagster._core.definitions.partitions.utils import multi as multi_keys
from dagster._core.definitions.temporal_context import TemporalContext
from dagster._core.events import DagsterEventType
from dagster._core.execution import asset_backfill
from dagster._core.storage.dagster_run import DagsterRun, RunsFilter
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG, BACKFILL_ID_TAG
from dagster._serdes import serialize_value
from dagster._time import get_current_datetime

import backfill_dagster.instance.event_log  # noqa: F401  (installs the daemon's patches, as its instance does)
from backfill_dagster.instance import backfill_submit
from backfill_dagster.instance.backfill_submit import (
    get_requested_asset_graph_subset_from_run_requests,
    get_resolved_partitions_subset_for_events,
    handles,
    range_keys,
)
from backfill_dagster.orchestration.backfills import launch_backfill
from tests.conftest import PG_ADMIN_URL
from tests.deploy import create_database, drop_database, in_thread, storage_yaml

stock_requested = backfill_submit._dagster_get_requested_asset_graph_subset_from_run_requests
stock_resolved = backfill_submit._dagster_get_resolved_partitions_subset_for_events

SYMBOLS = ["CCC", "AAA", "BBB", "DDD"]  # insertion order, not alphabetical: a range follows it
DATES = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-01-11",
                                     exclusions=["0 0 * * 6", "0 0 * * 0"])  # 8 weekdays
SESSIONS = DATES.get_partition_keys()
PARTITIONS = dg.MultiPartitionsDefinition({"symbol": dg.DynamicPartitionsDefinition(name="submit_symbols"),
                                           "date": DATES})  # declared out of order: Dagster sorts them
OTHER_PARTITIONS = dg.MultiPartitionsDefinition({"date": DATES, "venue": dg.StaticPartitionsDefinition(["X", "Y"])})


@dg.asset(partitions_def=PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run())
def upstream() -> None:
    pass


@dg.asset(partitions_def=PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run(), deps=[upstream])
def downstream() -> None:
    pass


@dg.asset_check(asset=upstream)
def upstream_check() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


@dg.asset(partitions_def=OTHER_PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run())
def by_venue() -> None:
    pass


@dg.asset(partitions_def=DATES, backfill_policy=dg.BackfillPolicy.single_run())
def daily() -> None:
    pass


@dg.asset
def unpartitioned() -> None:
    pass


class OwnRange(MultiPartitionsDefinition):
    """A definition with a range of its own: left to it."""

    def get_partition_keys_in_range(self, partition_key_range, dynamic_partitions_store=None):
        return [partition_key_range.start]


submit_defs = dg.Definitions(assets=[upstream, downstream, by_venue, daily, unpartitioned],
                             asset_checks=[upstream_check], executor=dg.in_process_executor)
GRAPH = submit_defs.resolve_asset_graph()
BOXED = [upstream.key, downstream.key]


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("submit_symbols", SYMBOLS)
        with partition_loading_context(dynamic_partitions_store=instance):
            yield instance


def key(date: str, symbol: str) -> str:
    return f"{date}|{symbol}"


def test_it_is_what_dagster_calls():
    assert asset_backfill._get_requested_asset_graph_subset_from_run_requests is \
        get_requested_asset_graph_subset_from_run_requests
    assert DagsterRun.get_resolved_partitions_subset_for_events is get_resolved_partitions_subset_for_events


RANGES = [
    (key(SESSIONS[0], "CCC"), key(SESSIONS[-1], "DDD")),  # everything
    (key(SESSIONS[2], "AAA"), key(SESSIONS[5], "BBB")),   # a box in the symbols' insertion order
    (key(SESSIONS[3], "BBB"), key(SESSIONS[3], "BBB")),   # one partition
    (key(SESSIONS[1], "DDD"), key(SESSIONS[6], "DDD")),   # one symbol
]


@pytest.mark.parametrize("start, end", RANGES)
def test_a_range_s_keys_are_dagster_s_as_strings_in_dagster_s_order(instance, start, end):
    stock = PARTITIONS.get_partition_keys_in_range(dg.PartitionKeyRange(start, end))
    ours = range_keys(PARTITIONS, dg.PartitionKeyRange(start, end))
    assert ours == [str(k) for k in stock] and ours == stock
    assert {type(k) for k in ours} == {str} and {type(k) for k in stock} == {dg.MultiPartitionKey}
    assert [DefaultPartitionsSubset(set(ours)).subset] == [DefaultPartitionsSubset(set(stock)).subset]
    assert list(set(ours)) == list(set(stock))  # the same set iteration order (str hashes)


def test_a_range_with_a_missing_key_fails_as_dagster_s(instance):
    bad = dg.PartitionKeyRange(key(SESSIONS[0], "AAA"), key(SESSIONS[1], "ZZZ"))
    with pytest.raises(Exception) as stock:
        PARTITIONS.get_partition_keys_in_range(bad)
    with pytest.raises(Exception) as ours:
        range_keys(PARTITIONS, bad)
    assert (type(ours.value), str(ours.value)) == (type(stock.value), str(stock.value))


def test_only_dagster_s_multi_partitions_range_is_handled():
    assert handles(PARTITIONS) and handles(OTHER_PARTITIONS)
    assert not handles(DATES) and not handles(None) and not handles(dg.StaticPartitionsDefinition(["a"]))
    assert not handles(OwnRange({"a": dg.StaticPartitionsDefinition(["1"]), "b": dg.StaticPartitionsDefinition(["2"])}))


# ------------------------------------------------------------------------------------------ planned events
def run_with(tags, partitions_subset=None) -> DagsterRun:
    return DagsterRun(job_name="j", run_id=str(uuid.uuid4()), tags=tags, partitions_subset=partitions_subset)


def outcome(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001  (compared with Dagster's)
        return type(e), str(e)


def key_types(subset) -> set[type]:
    return {type(k) for k in subset.subset}


@pytest.mark.parametrize("start, end", RANGES)
def test_a_range_run_s_planned_subset_is_dagster_s_with_plain_keys(instance, start, end):
    run = run_with({ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end})
    ours, stock = get_resolved_partitions_subset_for_events(run, PARTITIONS), stock_resolved(run, PARTITIONS)
    assert ours == stock and list(ours.subset) == list(stock.subset)
    assert serialize_value(ours) == serialize_value(stock)
    assert key_types(ours) == {str} and key_types(stock) == {dg.MultiPartitionKey}


@pytest.mark.parametrize("tags, partitions_def", [
    ({"dagster/partition": key(SESSIONS[0], "AAA")}, PARTITIONS),        # one partition
    ({}, PARTITIONS),                                                     # not partitioned
    ({ASSET_PARTITION_RANGE_START_TAG: SESSIONS[0], ASSET_PARTITION_RANGE_END_TAG: SESSIONS[3]}, DATES),
    ({ASSET_PARTITION_RANGE_START_TAG: key(SESSIONS[0], "AAA"), ASSET_PARTITION_RANGE_END_TAG: key(SESSIONS[1], "BBB")},
     None),                                                               # a check: no partitions
    ({ASSET_PARTITION_RANGE_START_TAG: key(SESSIONS[0], "AAA")}, PARTITIONS),  # half a range: Dagster's error
    ({ASSET_PARTITION_RANGE_START_TAG: key(SESSIONS[0], "AAA"), ASSET_PARTITION_RANGE_END_TAG: key(SESSIONS[1], "ZZZ")},
     PARTITIONS),                                                         # a missing key: Dagster's error
])
def test_every_other_run_is_dagster_s(instance, tags, partitions_def):
    run = run_with(tags)
    assert outcome(get_resolved_partitions_subset_for_events, run, partitions_def) == \
        outcome(stock_resolved, run, partitions_def)


def test_a_run_s_stored_subset_is_dagster_s(instance):
    stored = DATES.subset_with_partition_keys(SESSIONS[:2])  # what Dagster stores on a run: a time window
    run = run_with({ASSET_PARTITION_RANGE_START_TAG: key(SESSIONS[0], "AAA"),
                    ASSET_PARTITION_RANGE_END_TAG: key(SESSIONS[2], "BBB")}, partitions_subset=stored)
    assert get_resolved_partitions_subset_for_events(run, PARTITIONS) is stock_resolved(run, PARTITIONS) is stored


# --------------------------------------------------------------------------------------- requested subset
def view(instance) -> AssetGraphView:
    return AssetGraphView(temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
                          instance=instance, asset_graph=GRAPH)


def range_request(assets, start, end, checks=()) -> dg.RunRequest:
    return dg.RunRequest(asset_selection=list(assets), asset_check_keys=list(checks),
                         tags={ASSET_PARTITION_RANGE_START_TAG: start, ASSET_PARTITION_RANGE_END_TAG: end})


def subsets_of(graph_subset):
    return {k: (s.subset, [type(x) for x in s.subset]) for k, s in graph_subset.partitions_subsets_by_asset_key.items()
            if isinstance(s, DefaultPartitionsSubset)}


def test_box_requests_are_dagster_s_subset_with_plain_keys_one_set_per_request(instance):
    requests = [range_request(BOXED, *RANGES[1], checks=[upstream_check.check_key]),
                range_request(BOXED, *RANGES[3]), range_request(BOXED, *RANGES[2])]
    ours = get_requested_asset_graph_subset_from_run_requests(requests, view(instance))
    stock = stock_requested(requests, view(instance))
    assert ours == stock and ours.non_partitioned_asset_keys == stock.non_partitioned_asset_keys == set()
    for asset in BOXED:
        mine, theirs = ours.partitions_subsets_by_asset_key[asset], stock.partitions_subsets_by_asset_key[asset]
        assert list(mine.subset) == list(theirs.subset) and serialize_value(mine) == serialize_value(theirs)
        assert key_types(mine) == {str} and key_types(theirs) == {dg.MultiPartitionKey}
    one = get_requested_asset_graph_subset_from_run_requests(requests[:1], view(instance))
    assert one.partitions_subsets_by_asset_key[upstream.key] is one.partitions_subsets_by_asset_key[downstream.key]


@pytest.mark.parametrize("requests", [
    [dg.RunRequest(asset_selection=BOXED, partition_key=key(SESSIONS[0], "AAA"))],          # one partition
    [range_request([daily.key], SESSIONS[1], SESSIONS[4])],                                  # one dimension
    [range_request([unpartitioned.key], key(SESSIONS[0], "AAA"), key(SESSIONS[1], "AAA"))],  # Dagster's error
    [range_request([upstream.key, by_venue.key], key(SESSIONS[0], "AAA"), key(SESSIONS[1], "AAA"))],  # differ
    [range_request([by_venue.key], key(SESSIONS[0], "X"), key(SESSIONS[2], "Y")),
     range_request(BOXED, *RANGES[0]), dg.RunRequest(asset_selection=[unpartitioned.key])],  # mixed
])
def test_every_other_request_is_dagster_s(instance, requests):
    ours = outcome(get_requested_asset_graph_subset_from_run_requests, requests, view(instance))
    stock = outcome(stock_requested, requests, view(instance))
    assert ours == stock
    if isinstance(ours, AssetGraphSubset):
        assert {k: s for k, (s, _) in subsets_of(ours).items()} == {k: s for k, (s, _) in subsets_of(stock).items()}


# ------------------------------------------------- a backfill's first iteration on PostgreSQL, both ways
@contextlib.contextmanager
def pg_instance(tmp_path):
    name = f"bfd_submit_{uuid.uuid4().hex[:10]}"
    create_database(PG_ADMIN_URL, name)
    try:
        url = f"{PG_ADMIN_URL.rpartition('/')[0]}/{name}".replace("postgresql://", "postgresql+psycopg2://")
        overrides = yaml.safe_load(storage_yaml(url, "bulk", tmp_path))
        overrides["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
        with dg.instance_for_test(overrides=overrides) as instance:
            yield instance
    finally:
        drop_database(PG_ADMIN_URL, name)


def first_iteration(tmp_path, monkeypatch, plain: bool):
    """What the backfill daemon's first iteration stores, the backfill id replaced, and how many
    MultiPartitionKey objects it built."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.backfill import execute_backfill_iteration

    monkeypatch.setenv("BACKFILL_BOX_PARTITIONS", "9")  # boxes of 9 partitions at most
    built = [0]
    dagster_new = multi_keys.MultiPartitionKey.__dict__["__new__"]

    def counted(cls, keys_by_dimension):
        built[0] += 1
        return dagster_new.__func__(cls, keys_by_dimension)

    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name=__name__, attribute="submit_defs"),
                                         location_name="submit")
    (backfill_submit.install if plain else backfill_submit.uninstall)()
    try:
        with pg_instance(tmp_path) as instance, \
                create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as context:
            instance.add_dynamic_partitions("submit_symbols", SYMBOLS)
            keys = [key(d, s) for d in SESSIONS[1:7] for s in SYMBOLS[:3]] + [key(SESSIONS[0], "DDD")]
            backfill_id = launch_backfill(instance, GRAPH, keys, BOXED, title="submit")
            multi_keys.MultiPartitionKey.__new__ = staticmethod(counted)
            try:
                errors = in_thread("dagster-daemon-BACKFILL",
                                   lambda: [e for e in execute_backfill_iteration(context, logging.getLogger("t")) if e])
            finally:
                multi_keys.MultiPartitionKey.__new__ = dagster_new
            assert not errors, errors[0].to_string()
            runs = instance.get_runs(filters=RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
            stored_runs, planned = [], []
            for run in sorted(runs, key=lambda r: (r.tags[ASSET_PARTITION_RANGE_START_TAG], r.tags[ASSET_PARTITION_RANGE_END_TAG])):
                tags = {k: ("<backfill>" if v == backfill_id else v) for k, v in run.tags.items()}
                stored_runs.append((tags, run.status, run.asset_selection, run.asset_check_selection, run.job_name))
                records = instance.get_records_for_run(run.run_id, of_type={
                    DagsterEventType.ASSET_MATERIALIZATION_PLANNED, DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED}).records
                planned.append([(r.event_log_entry.dagster_event_type, r.event_log_entry.step_key,
                                 r.event_log_entry.dagster_event.message,
                                 serialize_value(r.event_log_entry.dagster_event.event_specific_data))
                                for r in records])
            row = instance.get_backfill(backfill_id)
            data = row.asset_backfill_data
            stored = (row.status, row.tags, row.title, len(row.reserved_run_ids or []), row.submitting_run_requests,
                      data.requested_runs_for_target_roots,
                      *(serialize_value(getattr(data, f)) for f in asset_backfill_subsets()))
            return stored_runs, planned, stored, built[0]
    finally:
        backfill_submit.install()


def asset_backfill_subsets():
    return ("target_subset", "requested_subset", "materialized_subset", "failed_and_downstream_subset")


@pytest.mark.postgres
def test_the_first_iteration_stores_the_same_runs_events_and_row_as_dagster_s(tmp_path, monkeypatch):
    plain = first_iteration(tmp_path / "plain", monkeypatch, plain=True)
    stock = first_iteration(tmp_path / "stock", monkeypatch, plain=False)
    runs, planned, row, built = plain
    assert runs == stock[0] and planned == stock[1] and row == stock[2]
    assert len(runs) > 2 and all(ASSET_PARTITION_RANGE_START_TAG in tags for tags, *_ in runs)  # boxes
    partitions = sum(len(events) for events in planned) - sum(1 for events in planned for e in events
                                                               if e[0] == DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED)
    assert partitions == 2 * 19  # every partition of both assets planned once
    # Dagster builds an object per partition and asset twice (planned events, requested subset): those are gone
    assert stock[3] - built >= 2 * 2 * 19

"""What unfinished backfills target, read without their rows (instance/backfill_selection.py,
PooledPostgresRunStorage.backfill_selections), on a real PostgreSQL with the deployed storages:
the same ids, kinds and asset selections, in the same order and under the same filter and limit,
as Dagster's get_backfills gives once deserialized; and the gap sensor's view of them the same."""

from __future__ import annotations

import uuid

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin, RemotePartitionSetOrigin, RemoteRepositoryOrigin
from dagster._core.storage.runs.schema import BulkActionsTable

from backfill_dagster.instance.backfill_selection import (
    BackfillSelection,
    backfill_selections,
    backfill_selections_read_whole,
)
from backfill_dagster.instance.run_storage import PooledPostgresRunStorage
from backfill_dagster.orchestration.backfills import launch_backfill
from backfill_dagster.orchestration.gap_sensor import UNFINISHED_BACKFILLS, in_flight_partitions
from tests.conftest import PG_ADMIN_URL
from tests.deploy import scratch_storage_database, storage_yaml

pytestmark = pytest.mark.postgres

SYMBOLS = ["AAA", "BBB"]
DATES = ["2024-01-02", "2024-01-03", "2024-01-04"]
PARTITIONS = dg.MultiPartitionsDefinition({
    "date": dg.StaticPartitionsDefinition(DATES),
    "symbol": dg.DynamicPartitionsDefinition(name="symbols"),
})
KEYS = [f"{d}|{s}" for d in DATES for s in SYMBOLS]


@dg.asset(partitions_def=PARTITIONS)
def bars_m15() -> None:
    pass


@dg.asset(partitions_def=PARTITIONS, deps=[bars_m15])
def bars_h1() -> None:
    pass


@dg.asset(partitions_def=PARTITIONS)
def bars_d1() -> None:
    pass


GRAPH = dg.Definitions(assets=[bars_m15, bars_h1, bars_d1]).resolve_asset_graph()


def storage_database():
    return scratch_storage_database(PG_ADMIN_URL, "bfd_selection")


@pytest.fixture
def instance(tmp_path):
    with storage_database() as url, \
            dg.instance_for_test(overrides=yaml.safe_load(storage_yaml(url, "bulk", tmp_path))) as instance:
        assert isinstance(instance.run_storage, PooledPostgresRunStorage)
        instance.add_dynamic_partitions("symbols", SYMBOLS)
        yield instance


def asset_backfill(instance, assets, keys=KEYS) -> str:
    return launch_backfill(instance, GRAPH, keys, [a.key for a in assets], title="t")


def job_backfill(instance, asset_selection=None) -> str:
    """A backfill of a job's partition set (the UI's job page), with or without an asset selection."""
    origin = RemotePartitionSetOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=GrpcServerCodeLocationOrigin(host="localhost", port=4000, location_name="loc"),
            repository_name="__repository__"),
        partition_set_name="all_bars_partition_set")
    backfill_id = uuid.uuid4().hex[:8]
    instance.add_backfill(PartitionBackfill(
        backfill_id=backfill_id, partition_set_origin=origin, status=BulkActionStatus.REQUESTED,
        partition_names=KEYS[:2], from_failure=False, reexecution_steps=None, tags={}, backfill_timestamp=1.0,
        asset_selection=asset_selection))
    return backfill_id


def set_status(instance, backfill_id: str, status: BulkActionStatus) -> None:
    instance.update_backfill(instance.get_backfill(backfill_id).with_status(status))


def test_the_selections_are_those_of_dagster_s_rows_in_its_order(instance):
    ids = [
        asset_backfill(instance, [bars_m15, bars_h1]),
        job_backfill(instance),
        asset_backfill(instance, [bars_d1], keys=KEYS[:1]),
        job_backfill(instance, asset_selection=[bars_d1.key]),
        asset_backfill(instance, [bars_m15, bars_h1, bars_d1]),
    ]
    set_status(instance, ids[2], BulkActionStatus.CANCELING)
    set_status(instance, ids[4], BulkActionStatus.COMPLETED_SUCCESS)  # finished: not listed
    read = backfill_selections(instance, UNFINISHED_BACKFILLS, 100)
    assert read == backfill_selections_read_whole(instance, UNFINISHED_BACKFILLS, 100)
    assert read == [
        BackfillSelection(ids[3], False, (bars_d1.key,)),
        BackfillSelection(ids[2], True, (bars_d1.key,)),
        BackfillSelection(ids[1], False, None),
        BackfillSelection(ids[0], True, (bars_m15.key, bars_h1.key)),
    ]
    # The newest `limit` of them, as Dagster's limit takes them.
    assert backfill_selections(instance, UNFINISHED_BACKFILLS, 2) == read[:2]
    assert backfill_selections(instance, [BulkActionStatus.COMPLETED_SUCCESS], 100) == [
        BackfillSelection(ids[4], True, (bars_m15.key, bars_h1.key, bars_d1.key))]
    assert backfill_selections(instance, [BulkActionStatus.FAILED], 100) == []


def test_no_row_body_is_deserialized(instance, monkeypatch):
    from backfill_dagster.instance import run_storage

    asset_backfill(instance, [bars_m15])
    job_backfill(instance)

    def refused(*args, **kwargs):
        raise AssertionError("a row was deserialized")

    monkeypatch.setattr(PooledPostgresRunStorage, "get_backfill", refused)
    monkeypatch.setattr(PooledPostgresRunStorage, "get_backfills", refused)
    real = run_storage.deserialize_value

    def only_selections(value, *args, **kwargs):
        assert len(value) < 1000 and PartitionBackfill not in args, "a row body was deserialized"
        return real(value, *args, **kwargs)

    monkeypatch.setattr(run_storage, "deserialize_value", only_selections)
    assert [s.is_asset_backfill for s in backfill_selections(instance, UNFINISHED_BACKFILLS, 100)] == [False, True]


def test_a_row_without_its_kind_is_read_whole(instance):
    """A row stored before Dagster wrote `action_type` says its kind only in its body."""
    asset_id, job_id = asset_backfill(instance, [bars_h1]), job_backfill(instance)
    storage = instance.run_storage
    with storage.connect() as conn:
        conn.execute(sa.update(BulkActionsTable).values(action_type=None))
    assert backfill_selections(instance, UNFINISHED_BACKFILLS, 100) == [
        BackfillSelection(job_id, False, None), BackfillSelection(asset_id, True, (bars_h1.key,))]


def test_another_run_storage_reads_the_rows_as_dagster_does(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:  # SQLite: Dagster's own storage
        assert not hasattr(instance.run_storage, "backfill_selections")
        instance.add_dynamic_partitions("symbols", SYMBOLS)
        backfill_id = asset_backfill(instance, [bars_d1])
        assert backfill_selections(instance, UNFINISHED_BACKFILLS, 100) == [
            BackfillSelection(backfill_id, True, (bars_d1.key,))]


def test_the_gap_sensor_holds_the_same_timeframes_either_way(instance, monkeypatch):
    from backfill_dagster.domain.calendar import xnys
    from backfill_dagster.domain.timeframes import Timeframe
    from backfill_dagster.orchestration import gap_sensor

    def held():
        unfinished = in_flight_partitions(instance, SYMBOLS, xnys())
        return unfinished.backfills, [t for t in Timeframe if unfinished.busy.holds(t)]

    def read_whole():
        with monkeypatch.context() as patch:
            patch.setattr(gap_sensor, "unfinished_backfills", lambda i: backfill_selections_read_whole(
                i, UNFINISHED_BACKFILLS, gap_sensor.UNFINISHED_BACKFILL_LIMIT))
            return held()

    d1 = asset_backfill(instance, [bars_d1], keys=KEYS[:1])
    assert held() == read_whole() == ([d1], [Timeframe.D1])
    job = job_backfill(instance)  # perhaps of all_bars: every timeframe
    assert held() == read_whole() == ([job, d1], list(Timeframe))

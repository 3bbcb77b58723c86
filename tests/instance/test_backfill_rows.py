"""The backfill daemon's backfill rows (instance/backfill_rows.py, PooledPostgresRunStorage), on a
real PostgreSQL with the deployed storages: in dagster-daemon's backfill threads a row is
deserialized once per version, a change made through another connection is read back, a write says
which version it made, terminal rows are let go; every other thread reads as Dagster does. And a
backfill driven to completion by Dagster's backfill daemon, a partition failing, ends with the
same row with and without the cache."""

from __future__ import annotations

import logging
import threading

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.partitions.definition.multi import MultiPartitionKey
from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
from dagster._core.errors import DagsterInvariantViolationError
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus, PartitionBackfill
from dagster_postgres.run_storage import PostgresRunStorage

from backfill_dagster.instance.backfill_rows import BackfillRowCache, in_backfill_daemon, plain_keys
from backfill_dagster.instance.run_storage import PooledPostgresRunStorage
from backfill_dagster.orchestration.backfills import FINISHED, launch_backfill
from tests.conftest import PG_ADMIN_URL
from tests.deploy import in_thread, scratch_storage_database, storage_yaml

pytestmark = pytest.mark.postgres

DAEMON_THREAD = "dagster-daemon-BACKFILL"
SYMBOLS = ["AAA", "BBB"]
DATES = ["2024-01-02", "2024-01-03", "2024-01-04"]
PARTITIONS = dg.MultiPartitionsDefinition({
    "date": dg.StaticPartitionsDefinition(DATES),
    "symbol": dg.DynamicPartitionsDefinition(name="rows_symbols"),
})
FAILING = "2024-01-03|BBB"  # a multi-partition key: the dimensions' keys in name order


@dg.asset(partitions_def=PARTITIONS)
def upstream(context) -> None:
    if context.partition_key == FAILING:
        raise RuntimeError(f"{FAILING} fails")


@dg.asset(partitions_def=PARTITIONS, deps=[upstream])
def downstream() -> None:
    pass


rows_defs = dg.Definitions(assets=[upstream, downstream], executor=dg.in_process_executor)
ASSETS = [upstream.key, downstream.key]
KEYS = [f"{d}|{s}" for d in DATES for s in SYMBOLS]


def daemon(fn):
    return in_thread(DAEMON_THREAD, fn)


def storage_database(tmp_path):
    return scratch_storage_database(PG_ADMIN_URL, "bfd_rows")


@pytest.fixture
def instance(tmp_path):
    with storage_database(tmp_path) as url, \
            dg.instance_for_test(overrides=yaml.safe_load(storage_yaml(url, "bulk", tmp_path))) as instance:
        instance.add_dynamic_partitions("rows_symbols", SYMBOLS)
        yield instance


@pytest.fixture
def storage(instance) -> PooledPostgresRunStorage:
    assert isinstance(instance.run_storage, PooledPostgresRunStorage)
    return instance.run_storage


@pytest.fixture
def other(instance):
    """Dagster's own run storage on the same database: another process's connection."""
    stock = PostgresRunStorage(instance.run_storage.postgres_url, should_autocreate_tables=False)
    yield stock
    stock.dispose()


def new_backfill(instance, keys=KEYS) -> str:
    return launch_backfill(instance, rows_defs.resolve_asset_graph(), keys, ASSETS, title="rows")


def test_the_backfill_daemon_s_threads_and_no_others():
    assert in_backfill_daemon(threading.Thread(name="dagster-daemon-BACKFILL"))
    assert in_backfill_daemon(threading.Thread(name="backfill_daemon_worker_0"))
    assert in_backfill_daemon(threading.Thread(name="backfill_submit_worker_3"))
    assert not in_backfill_daemon(threading.Thread(name="dagster-daemon-SENSOR"))
    assert not in_backfill_daemon(threading.Thread(name="MainThread"))
    assert not in_backfill_daemon()  # pytest's thread


def test_the_names_are_those_dagster_s_backfill_daemon_gives_its_threads():
    from dagster._daemon.daemon import BackfillDaemon

    # the controller names each daemon's thread dagster-daemon-<type> (pinned with its __init__)
    assert in_backfill_daemon(threading.Thread(name=f"dagster-daemon-{BackfillDaemon.daemon_type()}"))
    with BackfillDaemon({"num_workers": 1, "num_submit_workers": 1}) as backfill_daemon:
        for pool in (backfill_daemon._threadpool_executor, backfill_daemon._submit_threadpool_executor):
            assert pool.submit(in_backfill_daemon).result(timeout=30)


def test_outside_the_daemon_every_read_is_a_copy_and_nothing_is_held(instance, storage):
    backfill_id = new_backfill(instance)
    first, second = storage.get_backfill(backfill_id), storage.get_backfill(backfill_id)
    assert first == second and first is not second
    assert storage.get_backfills()[0] is not storage.get_backfills()[0]
    assert len(storage.backfill_rows) == 0


def test_the_daemon_reads_a_row_once_per_version(instance, storage, other):
    backfill_id = new_backfill(instance)
    first = daemon(lambda: storage.get_backfill(backfill_id))
    assert daemon(lambda: storage.get_backfill(backfill_id)) is first
    assert first == storage.get_backfill(backfill_id)  # what Dagster reads
    # another connection (the webserver cancelling, say) changes the row: the next read is the new body
    other.update_backfill(first.with_status(BulkActionStatus.CANCELING))
    changed = daemon(lambda: storage.get_backfill(backfill_id))
    assert changed is not first and changed.status == BulkActionStatus.CANCELING
    assert changed == other.get_backfill(backfill_id)
    assert daemon(lambda: storage.get_backfill(backfill_id)) is changed
    assert daemon(lambda: storage.get_backfill("nosuchbackfill")) is None


def test_the_daemon_s_lists_share_its_rows_in_dagster_s_order_and_filters(instance, storage):
    ids = [new_backfill(instance) for _ in range(3)]
    storage.update_backfill(storage.get_backfill(ids[1]).with_status(BulkActionStatus.COMPLETED_SUCCESS))
    for kwargs in ({}, {"filters": BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED])},
                   {"status": BulkActionStatus.COMPLETED_SUCCESS}, {"limit": 2}, {"cursor": ids[2], "limit": 1},
                   {"filters": BulkActionsFilter(backfill_ids=[ids[0]])}):
        listed = daemon(lambda kwargs=kwargs: storage.get_backfills(**kwargs))
        assert listed == storage.get_backfills(**kwargs), kwargs  # Dagster's read, outside the daemon
        assert listed
    listed = daemon(lambda: storage.get_backfills(filters=BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED])))
    assert [b.backfill_id for b in listed] == [ids[2], ids[0]]
    assert all(daemon(lambda b=b: storage.get_backfill(b.backfill_id)) is b for b in listed)
    with pytest.raises(DagsterInvariantViolationError):  # Dagster's refusal of both at once
        daemon(lambda: storage.get_backfills(filters=BulkActionsFilter(), status=BulkActionStatus.REQUESTED))


def test_a_write_is_held_as_written_and_stored_as_dagster_stores_it(instance, storage, other):
    backfill_id = new_backfill(instance)
    read = daemon(lambda: storage.get_backfill(backfill_id))
    written = read._replace(title="renamed")
    daemon(lambda: storage.update_backfill(written))
    held = daemon(lambda: storage.get_backfill(backfill_id))
    assert held is written  # no read of the body it wrote
    assert other.get_backfill(backfill_id) == written
    # outside the daemon a write is Dagster's (nothing held), and the daemon then reads the new row
    storage.update_backfill(written._replace(title="again"))
    assert daemon(lambda: storage.get_backfill(backfill_id)).title == "again"


@pytest.mark.parametrize("thread", [DAEMON_THREAD, "MainThread-like"])
def test_a_write_of_a_missing_backfill_fails_as_dagster_s(instance, storage, other, thread):
    backfill_id = new_backfill(instance)
    missing = storage.get_backfill(backfill_id)._replace(backfill_id="nosuchbackfill")
    with pytest.raises(DagsterInvariantViolationError) as stock:
        other.update_backfill(missing)
    with pytest.raises(DagsterInvariantViolationError) as ours:
        in_thread(thread, lambda: storage.update_backfill(missing))
    assert str(ours.value) == str(stock.value) == "Backfill nosuchbackfill is not present in storage"
    assert other.get_backfill("nosuchbackfill") is None and "nosuchbackfill" not in storage.backfill_rows.keys()


@pytest.mark.parametrize("status", [BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED_FAILED,
                                    BulkActionStatus.CANCELED, BulkActionStatus.FAILED])
def test_a_finished_backfill_is_let_go(instance, storage, other, status):
    backfill_id = new_backfill(instance)
    read = daemon(lambda: storage.get_backfill(backfill_id))
    assert storage.backfill_rows.keys() == [backfill_id]
    daemon(lambda: storage.update_backfill(read.with_status(status)))
    assert storage.backfill_rows.keys() == []
    assert daemon(lambda: storage.get_backfill(backfill_id)).status == status
    assert storage.backfill_rows.keys() == []  # read terminal: not held either
    other.update_backfill(read)  # back to REQUESTED by someone else: held again once read
    daemon(lambda: storage.get_backfill(backfill_id))
    assert storage.backfill_rows.keys() == [backfill_id]


def test_at_most_max_rows_are_held_least_recently_used_first_out(instance, storage):
    ids = [new_backfill(instance) for _ in range(storage.backfill_rows.max_rows + 1)]
    for backfill_id in ids:
        daemon(lambda backfill_id=backfill_id: storage.get_backfill(backfill_id))
    assert storage.backfill_rows.keys() == ids[1:]
    daemon(lambda: storage.get_backfill(ids[1]))
    assert storage.backfill_rows.keys()[-1] == ids[1]


def with_multi_partition_keys(backfill: PartitionBackfill) -> PartitionBackfill:
    """The backfill with its requested subset holding MultiPartitionKey objects, as the daemon builds
    it from its run requests' ranges."""
    data = backfill.asset_backfill_data
    target = data.target_subset.partitions_subsets_by_asset_key
    requested = {
        key: DefaultPartitionsSubset({MultiPartitionKey({"date": k.split("|")[0], "symbol": k.split("|")[1]})
                                      for k in subset.subset})
        for key, subset in target.items()
    }
    return backfill._replace(asset_backfill_data=data._replace(
        requested_subset=data.requested_subset._replace(partitions_subsets_by_asset_key=requested)))


def key_types(backfill: PartitionBackfill) -> set[type]:
    subsets = backfill.asset_backfill_data.requested_subset.partitions_subsets_by_asset_key.values()
    return {type(key) for subset in subsets for key in subset.subset}


def test_multi_partition_keys_are_held_as_plain_strings(instance, storage, other):
    backfill_id = new_backfill(instance)
    written = with_multi_partition_keys(storage.get_backfill(backfill_id))
    assert key_types(written) == {MultiPartitionKey}
    daemon(lambda: storage.update_backfill(written))
    held = daemon(lambda: storage.get_backfill(backfill_id))
    assert key_types(held) == {str}
    assert held == written == other.get_backfill(backfill_id)  # equal values, stored the same
    assert key_types(other.get_backfill(backfill_id)) == {str}


def test_plain_keys_leaves_plain_and_known_subsets_as_they_are(instance, storage):
    backfill = storage.get_backfill(new_backfill(instance))
    assert plain_keys(backfill) is backfill
    multi = with_multi_partition_keys(backfill)
    requested = multi.asset_backfill_data.requested_subset.partitions_subsets_by_asset_key
    assert plain_keys(multi, frozenset(id(s) for s in requested.values())) is multi
    cache = BackfillRowCache()
    assert cache.plain(multi) is not multi and key_types(cache.plain(multi)) == {str}


# ----------------------------------------------------------- the backfill daemon, in-process, to the end
def drive_to_completion(instance, context, backfill_id, thread_name):
    """The finished backfill, and the rows held after each iteration."""
    from dagster._daemon.backfill import execute_backfill_iteration

    logger = logging.getLogger("backfill_rows_test")
    held = []
    for _ in range(30):
        errors = in_thread(thread_name, lambda: [e for e in execute_backfill_iteration(context, logger) if e])
        assert not errors, errors[0].to_string()
        held.append(instance.run_storage.backfill_rows.keys())
        backfill = instance.get_backfill(backfill_id)
        if backfill.status in FINISHED:
            return backfill, held
    raise AssertionError(f"backfill {backfill_id} still {backfill.status}")


def subsets(backfill: PartitionBackfill):
    data = backfill.asset_backfill_data
    return {name: {key: set(map(str, s.subset)) for key, s in getattr(data, name).partitions_subsets_by_asset_key.items()}
            for name in ("target_subset", "requested_subset", "materialized_subset", "failed_and_downstream_subset")}


def test_a_backfill_with_a_failure_ends_the_same_with_and_without_the_cache(tmp_path):
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name=__name__, attribute="rows_defs"),
                                         location_name="rows")
    ends = {}
    for thread_name in (DAEMON_THREAD, "not-the-daemon"):
        with storage_database(tmp_path) as url, \
                dg.instance_for_test(overrides=yaml.safe_load(storage_yaml(url, "bulk", tmp_path)),
                                     synchronous_run_launcher=True, synchronous_run_coordinator=True) as instance, \
                create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as context:
            instance.add_dynamic_partitions("rows_symbols", SYMBOLS)
            backfill_id = new_backfill(instance)
            end, held = drive_to_completion(instance, context, backfill_id, thread_name)
            ends[thread_name] = (end.status, subsets(end), [[k == backfill_id for k in keys] for keys in held])
    cached, stock = ends[DAEMON_THREAD], ends["not-the-daemon"]
    assert cached[0] == stock[0] == BulkActionStatus.COMPLETED_FAILED
    assert cached[1] == stock[1]
    failed = cached[1]["failed_and_downstream_subset"]
    assert failed == {upstream.key: {FAILING}, downstream.key: {FAILING}}
    assert cached[1]["materialized_subset"] == {key: set(KEYS) - {FAILING} for key in ASSETS}
    assert len(cached[2]) > 1 and cached[2][0] == [True]  # held while in progress ...
    assert cached[2][-1] == [] and set(map(tuple, stock[2])) == {()}  # ... let go once finished; never outside

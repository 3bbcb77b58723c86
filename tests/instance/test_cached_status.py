"""The partition status cache read as stored when nothing happened (instance/cached_status.py): the
bulk event log answers the asset pages with the same materialized, failed and in-progress
partitions as Dagster's update, and skips the update only when it would change nothing."""

from __future__ import annotations

from datetime import date

import dagster as dg
import pytest
from dagster._core.loader import LoadingContextForTest
from dagster._core.storage import partition_status_cache

from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME, range_tags
from tests.instance.test_event_log import _two_range_runs, dagster_pg  # noqa: F401  (fixture)

pytestmark = pytest.mark.postgres

ASSETS = ("bars_m15", "bars_h1", "bars_d1")


class Builds:
    """Counts Dagster's updates of the cache (`_build_status_cache`), per asset."""

    def __init__(self, monkeypatch):
        self.assets: list[str] = []
        dagsters = partition_status_cache._build_status_cache

        def counted(instance, asset_key, *args, **kwargs):
            self.assets.append(asset_key.to_user_string())
            return dagsters(instance, asset_key, *args, **kwargs)

        monkeypatch.setattr(partition_status_cache, "_build_status_cache", counted)

    def take(self) -> list[str]:
        taken, self.assets = self.assets, []
        return taken


def statuses(value, partitions_def) -> tuple:
    def keys(subset):
        return frozenset(subset.get_partition_keys())

    return (
        value.latest_storage_id,
        keys(value.deserialize_materialized_partition_subsets(partitions_def)),
        keys(value.deserialize_failed_partition_subsets(partitions_def)),
        keys(value.deserialize_in_progress_partition_subsets(partitions_def)),
    )


def read(instance, defs) -> dict[str, tuple]:
    """What an asset page gets (a request's own loading context), and what Dagster's update gives
    for the same row right after: they must agree."""
    wanted = [(dg.AssetKey(a), defs.resolve_assets_def(a).partitions_def) for a in ASSETS]
    values = instance.event_log_storage.get_asset_status_cache_values(wanted, LoadingContextForTest(instance))
    ours = {key.to_user_string(): statuses(value, pdef) for (key, pdef), value in zip(wanted, values)}
    dagsters = {
        key.to_user_string(): statuses(
            partition_status_cache.get_and_update_asset_status_cache_value(instance, key, pdef), pdef
        )
        for key, pdef in wanted
    }
    assert ours == dagsters
    return ours


def test_the_stored_status_is_the_answer_only_while_nothing_happened(dagster_pg, tmp_path, monkeypatch):  # noqa: F811
    instance = dagster_pg("bulk")
    store_url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    defs, _, _ = _two_range_runs(instance, tmp_path, store_url, monkeypatch)
    builds = Builds(monkeypatch)

    seen = read(instance, defs)  # the first read builds each asset's row
    assert builds.take() == list(ASSETS) * 2  # ours, then Dagster's in read()
    assert seen["bars_m15"][2] == {"2024-11-26|MSFT"} and "2024-11-26|MSFT" not in seen["bars_m15"][1]

    assert read(instance, defs) == seen  # nothing happened: the stored rows are the answer
    assert builds.take() == list(ASSETS)  # only Dagster's own calls in read()

    # A run planned and not finished: the planned event is newer than the rows -> Dagster's update
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_m15")})
    instance.create_run_for_job(job, tags=range_tags(("AAPL", date(2024, 11, 22)), ("AAPL", date(2024, 11, 25))))
    seen = read(instance, defs)
    assert seen["bars_m15"][3] == {"2024-11-22|AAPL", "2024-11-25|AAPL"}
    assert builds.take() == ["bars_m15"] + list(ASSETS)
    # While it is in progress the row is always brought up to date: the run may end in failure
    # without writing an event on the asset
    assert read(instance, defs) == seen
    assert builds.take() == ["bars_m15"] + list(ASSETS)

    # A new symbol changes the partitions definition: the rows were built for the old one
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["NVDA"])
    read(instance, defs)
    assert sorted(builds.take()) == sorted(list(ASSETS) * 2)


def test_an_asset_never_materialized_is_dagsters_answer(dagster_pg, monkeypatch):  # noqa: F811
    instance = dagster_pg("bulk")
    builds = Builds(monkeypatch)
    context = LoadingContextForTest(instance)
    storage = instance.event_log_storage
    assert storage.get_asset_status_cache_values([(dg.AssetKey("never"), None)], context) == [None]
    assert builds.take() == ["never"]

"""The webserver's partitions bar (instance/partition_health.py): the same ranges as Dagster's own
function, for the project's session x symbol partitions and for a definition whose primary
dimension is not time; installed by the webserver's start-up hook only."""

from __future__ import annotations

import random
from datetime import date

import dagster as dg
import pytest
from dagster._core.definitions.partitions.subset import DefaultPartitionsSubset
from dagster._core.definitions.partitions.utils.time_window import PartitionRangeStatus

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.instance import partition_health
from backfill_dagster.orchestration.partitions import (
    SYMBOLS_PARTITIONS_NAME,
    bar_partitions,
)
from tests.instance.test_event_log import dagster_pg  # noqa: F401  (fixture)

DAGSTERS = partition_health._dagster_build_multi_partition_ranges_generic
SYMBOLS = ["AAPL", "BRK.B", "MSFT", "NVDA", "TSLA"]


def secondary_as_keys(subsets):
    """What the bar shows of a primary key's group: each status's secondary keys."""
    return {status: sorted(subset.get_partition_keys()) for status, subset in subsets.items()}


def both(subsets, partitions_def, store):
    ours = partition_health.build_multi_partition_ranges_generic(subsets, partitions_def, store, secondary_as_keys)
    dagsters = DAGSTERS(subsets, partitions_def, store, secondary_as_keys)
    return ours, dagsters


@pytest.fixture
def store(instance):
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, SYMBOLS)
    return instance


def subset(keys) -> DefaultPartitionsSubset:
    return DefaultPartitionsSubset(set(keys))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_same_ranges_as_dagster_for_session_x_symbol_partitions(store, seed):
    partitions_def = bar_partitions(date(2024, 11, 1), xnys())
    keys = [f"{d}|{s}" for d in ("2024-11-01", "2024-11-04", "2024-11-05", "2024-11-06", "2024-11-07", "2024-11-08")
            for s in SYMBOLS]
    rng = random.Random(seed)
    materialized = [k for k in keys if rng.random() < 0.7]
    failed = [k for k in keys if k not in materialized and rng.random() < 0.5]
    in_progress = [k for k in keys if k not in materialized and k not in failed][:3]
    subsets = {
        PartitionRangeStatus.MATERIALIZED: subset(materialized + ["not-a-multi-key", "a|b|c"]),
        PartitionRangeStatus.FAILED: subset(failed),
        PartitionRangeStatus.MATERIALIZING: subset(in_progress),
    }
    ours, dagsters = both(subsets, partitions_def, store)
    assert ours == dagsters
    assert len(ours) > 1  # several ranges: the run-length encoding was exercised
    assert ours[0].primary_dim_start_time is not None  # the time bounds of a time dimension


def test_the_same_ranges_when_the_primary_dimension_is_not_time_and_statuses_are_empty(store):
    partitions_def = dg.MultiPartitionsDefinition(
        {"zone": dg.StaticPartitionsDefinition(["b", "a", "c"]), "kind": dg.StaticPartitionsDefinition(["x", "y"])}
    )
    keys = ["x|a", "x|b", "y|b", "y|c"]  # the string is the dimensions' keys in name order: kind|zone
    subsets = {
        PartitionRangeStatus.MATERIALIZED: subset(keys),
        PartitionRangeStatus.FAILED: subset([]),
        PartitionRangeStatus.MATERIALIZING: None,
    }
    ours, dagsters = both(subsets, partitions_def, store)
    assert ours == dagsters and ours and ours[0].primary_dim_start_time is None
    assert both({PartitionRangeStatus.MATERIALIZED: None}, partitions_def, store) == ([], [])


def test_the_keys_grouped_by_primary_key(store):
    partitions_def = bar_partitions(date(2024, 11, 1), xnys())
    grouped = partition_health.secondary_keys_by_primary(
        subset(["2024-11-01|AAPL", "2024-11-01|BRK.B", "2024-11-04|AAPL", "bad", "1|2|3"]),
        partitions_def,
    )
    assert grouped == {"2024-11-01": {"AAPL", "BRK.B"}, "2024-11-04": {"AAPL"}}


@pytest.mark.postgres
def test_the_webserver_start_up_installs_it_and_nothing_else_does(dagster_pg):  # noqa: F811
    partition_health.uninstall()
    try:
        instance = dagster_pg("bulk")  # opening the instance (every process does) leaves Dagster's
        assert partition_health.fetch_assets.build_multi_partition_ranges_generic is DAGSTERS
        instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=2)  # the webserver's call
        for module in partition_health._MODULES:  # fetch_assets, fetch_asset_checks, partition_status_utils
            assert module.build_multi_partition_ranges_generic is partition_health.build_multi_partition_ranges_generic
        assert instance.get_runs() == []  # the storages still answer after the webserver's set-up
    finally:
        partition_health.uninstall()

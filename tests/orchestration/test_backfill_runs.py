"""How the backfill daemon turns a backfill's partitions into runs: boxes of many symbols with the
project's plug-in, one run per symbol with Dagster's own code, the same partitions either way."""

import dagster as dg
import pytest
from dagster._core.definitions import automation_tick_evaluation_context as dagster_runs
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.definitions.partitions.context import partition_loading_context

from backfill_dagster.instance import backfill_runs
from backfill_dagster.orchestration.partitions import partition_key
from tests.orchestration.conftest import add_symbols

ASSETS = [dg.AssetKey(a) for a in ("bars_m15", "bars_h1", "bars_h4", "bars_d1")]


@pytest.fixture
def formation():
    before = dagster_runs._build_run_requests_with_backfill_policy
    yield
    dagster_runs._build_run_requests_with_backfill_policy = before


def run_requests(defs, instance, keys, boxes: bool):
    (backfill_runs.install if boxes else backfill_runs.uninstall)()
    with partition_loading_context(dynamic_partitions_store=instance):  # as the daemon calls it
        return dagster_runs.build_run_requests_with_backfill_policies(
            {AssetKeyPartitionKey(a, k) for a in ASSETS for k in keys}, defs.resolve_asset_graph(), instance)


def partitions_of(defs, instance, requests):
    partitions_def = defs.resolve_asset_graph().get(ASSETS[0]).partitions_def
    out = []
    for request in requests:
        assert set(request.asset_selection) == set(ASSETS)  # all four assets in each run
        key_range = dg.PartitionKeyRange(request.tags["dagster/asset_partition_range_start"],
                                         request.tags["dagster/asset_partition_range_end"])
        out.extend(str(k) for k in partitions_def.get_partition_keys_in_range(key_range, instance))
    return out


def test_a_box_of_sessions_x_symbols_is_few_runs_covering_exactly_it(defs, instance, store_url, calendar, formation):
    symbols = [f"S{i:03d}" for i in range(60)]
    add_symbols(instance, store_url, symbols)
    sessions = calendar.sessions("2024-01-02", "2024-12-31")  # 252 sessions x 60 symbols
    keys = [partition_key(s, d) for s in symbols for d in sessions]
    stock = run_requests(defs, instance, keys, boxes=False)
    boxed = run_requests(defs, instance, keys, boxes=True)
    assert len(stock) == len(symbols)  # Dagster: one run per symbol
    assert len(boxed) == 2  # 12,000 // 252 = 47 symbols a box
    for requests in (stock, boxed):
        covered = partitions_of(defs, instance, requests)
        assert len(covered) == len(set(covered)) and set(covered) == set(keys)


def test_a_ragged_selection_is_covered_exactly(defs, instance, store_url, calendar, formation):
    add_symbols(instance, store_url, ["AAPL", "MSFT", "NVDA", "AMD", "TSLA"])
    sessions = calendar.sessions("2024-03-01", "2024-03-29")
    # MSFT not selected (a hole in the symbols' order); TSLA only for the last week
    keys = [partition_key(s, d) for s in ("AAPL", "NVDA", "AMD") for d in sessions]
    keys += [partition_key("TSLA", d) for d in sessions[-5:]]
    boxed = run_requests(defs, instance, keys, boxes=True)
    covered = partitions_of(defs, instance, boxed)
    assert len(covered) == len(set(covered)) and set(covered) == set(keys)
    assert len(boxed) == 3  # AAPL | NVDA..AMD | TSLA's week


def test_a_key_it_cannot_place_is_left_to_dagster(defs, instance, store_url, formation):
    add_symbols(instance, store_url, ["AAPL"])
    partitions_def = defs.resolve_asset_graph().get(ASSETS[0]).partitions_def
    assert backfill_runs.box_ranges(["2024-03-01|AAPL", "2024-03-01|NOPE"], partitions_def, instance, 100) is None
    assert backfill_runs.box_ranges(["2024-03-01|AAPL"], partitions_def, instance, 100) == [
        ("2024-03-01|AAPL", "2024-03-01|AAPL")]


def test_the_box_size_is_the_daemons_setting_and_0_is_dagsters_own_formation(
        defs, instance, store_url, calendar, formation, monkeypatch):
    assert backfill_runs.box_partitions({}) == 12_000
    assert backfill_runs.box_partitions({"BACKFILL_BOX_PARTITIONS": " 500 "}) == 500
    for bad in ("maybe", "-1", "1e9", "2000000"):
        with pytest.raises(ValueError, match=f"BACKFILL_BOX_PARTITIONS='{bad}': use a whole number"):
            backfill_runs.box_partitions({"BACKFILL_BOX_PARTITIONS": bad})
    add_symbols(instance, store_url, ["AAPL", "MSFT", "NVDA"])
    keys = [partition_key(s, d) for s in ("AAPL", "MSFT", "NVDA") for d in calendar.sessions("2024-03-01", "2024-03-28")]
    monkeypatch.setenv("BACKFILL_BOX_PARTITIONS", "40")  # 20 sessions: two symbols a box
    assert len(run_requests(defs, instance, keys, boxes=True)) == 2
    monkeypatch.setenv("BACKFILL_BOX_PARTITIONS", "0")
    assert len(run_requests(defs, instance, keys, boxes=True)) == 3  # one per symbol


def test_with_flat_files_first_a_box_is_every_symbol_over_few_sessions(
        defs, instance, store_url, calendar, formation, monkeypatch):
    # a session's flat file serves every symbol: each session is read by one run, not by every run
    symbols = [f"S{i:03d}" for i in range(60)]
    add_symbols(instance, store_url, symbols)
    sessions = calendar.sessions("2024-01-02", "2024-12-31")
    keys = [partition_key(s, d) for s in symbols for d in sessions]
    monkeypatch.setenv("BACKFILL_BOX_PARTITIONS", "1200")
    monkeypatch.setenv("BACKFILL_PROVIDERS", "flatfiles,alpaca")
    boxed = run_requests(defs, instance, keys, boxes=True)
    assert len(boxed) == 13  # 60 symbols x 20 sessions a box: 252 sessions in 13
    partitions_def = defs.resolve_asset_graph().get(ASSETS[0]).partitions_def
    runs_of_session: dict[str, int] = {}
    for request in boxed:
        key_range = dg.PartitionKeyRange(request.tags["dagster/asset_partition_range_start"],
                                         request.tags["dagster/asset_partition_range_end"])
        in_run = {str(k).split("|")[0] for k in partitions_def.get_partition_keys_in_range(key_range, instance)}
        for session in in_run:
            runs_of_session[session] = runs_of_session.get(session, 0) + 1
    assert len(runs_of_session) == len(sessions) and set(runs_of_session.values()) == {1}
    covered = partitions_of(defs, instance, boxed)
    assert len(covered) == len(set(covered)) and set(covered) == set(keys)
    # the same partitions with a REST provider first: few symbols over every session (15 runs of 4)
    monkeypatch.setenv("BACKFILL_PROVIDERS", "alpaca,flatfiles")
    assert len(run_requests(defs, instance, keys, boxes=True)) == 15
    # said explicitly, the setting wins over the providers' order
    monkeypatch.setenv("BACKFILL_BOX_SHAPE", "sessions")
    assert len(run_requests(defs, instance, keys, boxes=True)) == 13


def test_the_box_shape_setting_refuses_what_it_does_not_know():
    assert backfill_runs.box_shape({}) == "symbols"
    assert backfill_runs.box_shape({"BACKFILL_PROVIDERS": " FlatFiles , alpaca"}) == "sessions"
    assert backfill_runs.box_shape({"BACKFILL_PROVIDERS": "flatfiles", "BACKFILL_BOX_SHAPE": "Symbols"}) == "symbols"
    with pytest.raises(ValueError, match="BACKFILL_BOX_SHAPE='wide': use 'symbols'"):
        backfill_runs.box_shape({"BACKFILL_BOX_SHAPE": "wide"})

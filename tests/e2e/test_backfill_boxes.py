"""A UI-style backfill over sessions x symbols runs as boxes of many symbols, end to end: the
backfill added to the instance as the UI's launch adds it, Dagster's backfill daemon forming and
launching its runs (in-process, runs executed synchronously), the providers the fakes on loopback,
the store on PostgreSQL. Compared with Dagster's own run formation (one run per symbol) in the same
test: the same partitions materialized, the same ones failed, the same ledger — in one run."""

from __future__ import annotations

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.definitions import automation_tick_evaluation_context

from backfill_dagster.fakes.actions import CorporateActions
from backfill_dagster.instance import backfill_runs
from backfill_dagster.orchestration.backfills import FINISHED, launch_backfill
from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME, partition_key
from backfill_dagster.store import Watchlist, shared_engine
from tests.e2e.test_split_repair import ASSETS, SESSIONS, check_results, code_location, deployment

pytestmark = pytest.mark.postgres

# ZZZX is unknown to every fake provider: each of its partitions fails (answered without bars).
SYMBOLS = ["AAPL", "MSFT", "ZZZX", "NVDA", "AMD"]
DAYS = SESSIONS[:5]


@pytest.fixture
def run_formation():
    """Sets the daemon's run formation for one test (boxes or Dagster's own), then restores it."""
    before = automation_tick_evaluation_context._build_run_requests_with_backfill_policy

    def use(boxes: bool) -> None:
        (backfill_runs.install if boxes else backfill_runs.uninstall)()

    yield use
    automation_tick_evaluation_context._build_run_requests_with_backfill_policy = before


def backfill(instance, daemons, symbols, title):
    keys = [partition_key(s, d) for s in symbols for d in DAYS]
    backfill_id = launch_backfill(instance, code_location().resolve_asset_graph(), keys, ASSETS, title=title)
    done = daemons.backfills(backfill_id, limit=20)
    assert done.status in FINISHED
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    return done, runs, keys


def ledger(url) -> dict[tuple[str, str], str]:
    with shared_engine(url).connect() as conn:
        rows = conn.execute(sa.text("SELECT symbol, timeframe, status FROM bar_coverage")).all()
    return {(s, t): st for s, t, st in sorted(set(rows))}


@pytest.mark.parametrize("boxes", [True, False], ids=["boxes", "dagster-per-symbol"])
def test_a_backfill_box_is_one_run_and_a_failing_symbol_fails_only_its_partitions(
    pg_url, tmp_path, monkeypatch, run_formation, boxes
):
    run_formation(boxes)
    with deployment(pg_url, tmp_path, monkeypatch, CorporateActions()) as (fakes, _clock, instance, daemons):
        Watchlist(shared_engine(pg_url)).add(SYMBOLS)
        instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, SYMBOLS)

        done, runs, keys = backfill(instance, daemons, SYMBOLS, "box with a failing symbol")
        assert len(runs) == (1 if boxes else len(SYMBOLS))
        bad = {k for k in keys if k.endswith("|ZZZX")}
        data = done.asset_backfill_data
        failed = {(k.asset_key.to_user_string(), k.partition_key)
                  for k in data.failed_and_downstream_subset.iterate_asset_partitions()}
        # Exactly ZZZX's partitions failed, of every asset; every other partition is materialized.
        assert failed == {(a.to_user_string(), k) for a in ASSETS for k in bad}
        for asset in ASSETS:
            materialized = instance.get_materialized_partitions(asset)
            assert materialized == set(keys) - bad, asset
        # The ledger agrees: complete for the known symbols, never complete for ZZZX.
        statuses = ledger(pg_url)
        assert {st for (s, _t), st in statuses.items() if s != "ZZZX"} == {"complete"}
        assert {(s, t) for (s, t) in statuses if s == "ZZZX"} == {("ZZZX", "m15"), ("ZZZX", "d1")}
        assert "complete" not in {st for (s, _t), st in statuses.items() if s == "ZZZX"}

        # A box without a failure: one run, and each check's summary exactly once in it, passed.
        done, runs, _ = backfill(instance, daemons, ["NVDA", "AMD"], "good box")
        assert len(runs) == (1 if boxes else 2)
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        _, checks = check_results(instance, done.backfill_id)
        names = [(c.asset_key.to_user_string(), c.check_name) for c in checks]
        assert len(names) == len(runs) * len(set(names)) and len(set(names)) >= 5
        assert all(c.passed for c in checks), [c.description for c in checks if not c.passed]

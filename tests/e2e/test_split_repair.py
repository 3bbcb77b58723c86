"""Splits never break the history, end to end: the store on PostgreSQL, the providers the fakes on
loopback, Dagster in-process driven by its own daemons' iterations — the scheduler (frozen clock),
the sensor daemon and the backfill daemon — on an instance whose runs execute synchronously and
whose storages are the deployed ones (the project's event log and run storage on PostgreSQL).

AAPL is backfilled for 60 sessions while a split at session 40 is not known yet, so the history
before it is stored on the old share basis. The fake then announces it; after the corporate-actions
schedule and the split_repair sensor have done their cycle, every AAPL bar the user reads (m15, h1,
h4, d1) equals the fake's split-adjusted history, the checks pass, and the ledger and the
corporate_actions table say what happened — for a 4-for-1 split, a 1-for-10 reverse split, and a
split whose announcement comes after its ex-date. And a repair costs the API no more than a fresh
backfill of the same history.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import uuid
from datetime import date

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml
from dagster._core.events import DagsterEventType

from backfill_dagster.definitions import build_definitions
from backfill_dagster.domain.bars import BAR_COLUMNS
from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.corporate_actions import RepairState
from backfill_dagster.domain.resample import resample_bars
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.fakes.actions import CorporateActions, Split
from backfill_dagster.orchestration.backfills import FINISHED, SUCCEEDED, launch_backfill
from backfill_dagster.orchestration.corporate_actions import build_corporate_actions_schedule
from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME, partition_key
from backfill_dagster.orchestration.sensors import watchlist_sync
from backfill_dagster.providers import alpaca
from backfill_dagster.orchestration.split_repair import build_split_repair_sensor
from backfill_dagster.settings import Settings
from backfill_dagster.store import BarStore, Watchlist, shared_engine
from backfill_dagster.store.actions import ActionStore
from tests.conftest import PG_ADMIN_URL
from tests.deploy import create_database, drop_database, storage_yaml

pytestmark = pytest.mark.postgres

NY = "America/New_York"
CAL = xnys()
SESSIONS = CAL.sessions("2024-08-01", "2024-12-31")[:60]
EX = SESSIONS[40]
BACKFILLED_AT = CAL.close(SESSIONS[-1]) + pd.Timedelta(days=1)  # the fake's clock during the backfill
LATER = CAL.next_session(CAL.next_session(SESSIONS[-1]))  # the session the split becomes known
ASSETS = [dg.AssetKey(t.asset_name) for t in Timeframe]
HISTORY_START = date(2023, 1, 1)


def code_location() -> dg.Definitions:
    """The project's assets, jobs, checks and resources on Alpaca (the fakes), with the sensors and
    the schedule of the cycle under test. The store's URL and the fakes' reach the resources as
    environment variables, read when a run or tick uses them: Dagster keeps an in-process code
    location loaded once per process, across tests."""
    settings = Settings(data_dir=os.environ["SPLIT_TEST_DATA_DIR"], database_url=os.environ["BACKFILL_DATABASE_URL"],
                        history_start=HISTORY_START, providers=("alpaca",), rate_limits={}, http_backoff_s=0.01)
    base = build_definitions(settings, env_has_database_url=True)
    return dg.Definitions(
        assets=base.assets, asset_checks=base.asset_checks, jobs=base.jobs, resources=base.resources,
        sensors=[watchlist_sync, build_split_repair_sensor(HISTORY_START, minimum_interval_seconds=30)],
        schedules=[build_corporate_actions_schedule()], executor=dg.in_process_executor,
    )


split_defs = dg.definitions(code_location)  # what the daemons load


class Daemons:
    """One iteration at a time of Dagster's scheduler, sensor and backfill daemons, in-process."""

    def __init__(self, context, logger):
        self.context, self.logger = context, logger
        self.sensor_clock = pd.Timestamp("2026-01-01", tz="UTC")
        self.schedule_times: dict = {}

    def schedule(self, at: pd.Timestamp) -> None:
        from dagster._core.test_utils import freeze_time
        from dagster._scheduler.scheduler import launch_scheduled_runs

        with freeze_time(at.to_pydatetime()):
            list(launch_scheduled_runs(self.context, self.logger, at.to_pydatetime(), self.schedule_times))

    def sensors(self) -> None:
        from dagster._core.test_utils import freeze_time
        from dagster._daemon.sensor import execute_sensor_iteration

        self.sensor_clock += pd.Timedelta(minutes=1)  # past every sensor's minimum interval
        with freeze_time(self.sensor_clock.to_pydatetime()):
            list(execute_sensor_iteration(self.context, self.logger, None, None))

    def backfills(self, backfill_id: str, limit: int = 10):
        from dagster._daemon.backfill import execute_backfill_iteration

        for _ in range(limit):
            list(execute_backfill_iteration(self.context, self.logger))
            backfill = self.context.instance.get_backfill(backfill_id)
            if backfill.status in FINISHED:
                return backfill
        raise AssertionError(f"backfill {backfill_id} still {backfill.status} after {limit} iterations")


@contextlib.contextmanager
def dagster_storage(home):
    """The instance's storages as deployed (dagster.yaml): the project's event log and run storage
    on PostgreSQL, in a database of their own for this test."""
    name = f"bfd_dagster_{uuid.uuid4().hex[:10]}"
    create_database(PG_ADMIN_URL, name)
    try:
        url = f"{PG_ADMIN_URL.rpartition('/')[0]}/{name}".replace("postgresql://", "postgresql+psycopg2://")
        yield yaml.safe_load(storage_yaml(url, "bulk", home))
    finally:
        drop_database(PG_ADMIN_URL, name)


@contextlib.contextmanager
def deployment(pg_url, tmp_path, monkeypatch, registry, fake_now=BACKFILLED_AT):
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    clock = [fake_now]
    monkeypatch.setenv("BACKFILL_DATABASE_URL", pg_url)
    monkeypatch.setenv("SPLIT_TEST_DATA_DIR", str(tmp_path))
    config = FakeConfig(now=lambda: clock[0], corporate_actions=registry)
    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name=__name__, attribute="split_defs"),
                                         location_name="splits")
    with FakeProviders(config) as fakes, dagster_storage(tmp_path) as storage:
        for name, value in fakes.env().items():
            monkeypatch.setenv(name, value)
        with dg.instance_for_test(overrides=storage, synchronous_run_launcher=True,
                                  synchronous_run_coordinator=True) as instance, \
                create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as context:
            yield fakes, clock, instance, Daemons(context, logging.getLogger("split_repair_e2e"))


def backfill_history(instance, daemons, symbol, sessions) -> dg.PartitionBackfill:
    """A fresh backfill of the four timeframes, as ensure-coverage or the UI launches one."""
    graph = code_location().resolve_asset_graph()
    backfill_id = launch_backfill(instance, graph, [partition_key(symbol, d) for d in sessions], ASSETS, title="fresh")
    backfill = daemons.backfills(backfill_id)
    assert backfill.status in SUCCEEDED
    return backfill


def alpaca_calls(fakes, path="/v2/stocks/bars", **query) -> int:
    return sum(1 for e in fakes.log if e.provider == "alpaca" and e.path == path
               and all(e.query.get(k) == v for k, v in query.items()))


def stored(url, timeframe, sessions):
    bars = BarStore(shared_engine(url), CAL).read_bars(timeframe, [("AAPL", d) for d in sessions])
    return bars.drop(columns=["session", "provider", "adjustment"]).reset_index(drop=True)


def served(fakes, timeframe, sessions):
    frames = [fakes.bars(timeframe, "AAPL", d, extended=False) for d in sessions]
    return pd.concat(frames, ignore_index=True)


def assert_store_is_the_fakes_history(url, fakes):
    for timeframe in (Timeframe.M15, Timeframe.D1):
        pd.testing.assert_frame_equal(stored(url, timeframe, SESSIONS), served(fakes, timeframe, SESSIONS),
                                      check_exact=True, obj=timeframe.value)
    m15 = served(fakes, Timeframe.M15, SESSIONS)
    for timeframe in (Timeframe.H1, Timeframe.H4):
        expected = resample_bars(m15, timeframe, CAL)[list(BAR_COLUMNS)].reset_index(drop=True)
        pd.testing.assert_frame_equal(stored(url, timeframe, SESSIONS)[list(BAR_COLUMNS)], expected,
                                      check_exact=False, rtol=1e-12, obj=timeframe.value)


def check_results(instance, backfill_id):
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    out = []
    for run in runs:
        for record in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
            out.append(record.get_dagster_event().event_specific_data)
    return runs, out


LATE_LISTING = "dated before its ex-date, listed late"
ANNOUNCED_AFTER = "announced after its ex-date"


@pytest.mark.parametrize("numerator, denominator, how", [
    (4, 1, LATE_LISTING), (1, 10, LATE_LISTING), (4, 1, ANNOUNCED_AFTER),
])
def test_a_split_found_after_the_backfill_is_repaired_and_the_history_is_consistent(
    pg_url, tmp_path, monkeypatch, numerator, denominator, how
):
    if how == LATE_LISTING:  # unknown to the provider until the test lists it (announced date: before EX)
        registry = CorporateActions(splits=[Split("AAPL", EX, numerator, denominator, date(2099, 1, 1))])
    else:  # the registry knows it, dated after EX: the fake does not list or apply it before then
        registry = CorporateActions(splits=[Split("AAPL", EX, numerator, denominator, LATER)])
    with deployment(pg_url, tmp_path, monkeypatch, registry) as (fakes, clock, instance, daemons):
        Watchlist(shared_engine(pg_url)).add(["AAPL"])
        daemons.sensors()  # watchlist_sync: the partition, and AAPL's first corporate-actions refresh
        assert instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME) == ["AAPL"]
        actions = ActionStore(shared_engine(pg_url))
        assert list(actions.checks().symbol) == ["AAPL"] and actions.splits() == []

        fresh = backfill_history(instance, daemons, "AAPL", SESSIONS)
        fresh_calls = alpaca_calls(fakes)
        old_basis = stored(pg_url, Timeframe.D1, SESSIONS)
        jump = old_basis.close.iloc[39] / old_basis.open.iloc[40]
        assert abs(jump / (numerator / denominator) - 1) < 0.1  # the stored history has two share bases

        if how == ANNOUNCED_AFTER:  # after its ex-date, before its announcement: not listed, nothing to do
            clock[0] = CAL.open(LATER) - pd.Timedelta(days=1)
            daemons.schedule(pd.Timestamp(f"{CAL.previous_session(LATER)} 07:59", tz=NY))
            daemons.schedule(pd.Timestamp(f"{CAL.previous_session(LATER)} 08:01", tz=NY))
            daemons.sensors()
            assert actions.splits() == [] and len(instance.get_backfills()) == 1
        else:
            fakes.config.corporate_actions = CorporateActions(
                splits=[Split("AAPL", EX, numerator, denominator, SESSIONS[35])])
        clock[0] = CAL.open(LATER)
        # The scheduler's 08:00 tick on the next session refreshes the corporate actions...
        daemons.schedule(pd.Timestamp(f"{LATER} 07:59", tz=NY))
        daemons.schedule(pd.Timestamp(f"{LATER} 08:01", tz=NY))
        (split,) = actions.splits()
        assert split.state is RepairState.PENDING and split.ex_date == EX
        # ...and the split_repair sensor launches one backfill over what is stale.
        daemons.sensors()
        (split,) = actions.splits()
        assert split.state is RepairState.REPAIRING and split.backfill_id
        repair = instance.get_backfill(split.backfill_id)
        target = {(k.asset_key.to_user_string(), k.partition_key) for k in repair.asset_backfill_data.target_subset.iterate_asset_partitions()}
        assert target == {(a.to_user_string(), partition_key("AAPL", d)) for a in ASSETS for d in SESSIONS[:40]}
        daemons.sensors()  # a tick while it runs launches nothing more
        assert len(instance.get_backfills()) == 2
        before_repair = alpaca_calls(fakes)
        assert daemons.backfills(split.backfill_id).status in SUCCEEDED
        repair_calls = alpaca_calls(fakes) - before_repair
        daemons.sensors()  # the ledger shows nothing stale: repaired
        (done,) = actions.splits(states=[RepairState.REPAIRED])
        assert "no partition left on the old basis (the stored m15 bars run on across the ex-date" in done.note

        # Every bar the user reads is the provider's split-adjusted history, on one share basis.
        assert_store_is_the_fakes_history(pg_url, fakes)
        now_basis = stored(pg_url, Timeframe.D1, SESSIONS)
        assert abs(now_basis.close.iloc[39] / now_basis.open.iloc[40] - 1) < 0.1
        assert np.allclose(now_basis.volume.iloc[:40] * denominator / numerator, old_basis.volume.iloc[:40], rtol=1e-3)
        # The checks of the repair's runs pass; the ledger says why each partition was rewritten.
        runs, checks = check_results(instance, done.backfill_id)
        assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert {c.check_name for c in checks} >= {"bounds_m15", "matches_m15_resampled", "no_unrecorded_split"}
        assert all(c.passed for c in checks), [c.description for c in checks if not c.passed]
        ledger = BarStore(shared_engine(pg_url)).coverage(symbols=["AAPL"])
        rewritten = ledger[ledger.session < EX]
        ratio = f"{numerator}:{denominator}"
        assert len(rewritten) == 4 * 40 and set(rewritten.rewrite_reason) == {
            f"split {ratio} of AAPL ex {EX}: re-fetched on the new share basis"}
        assert ledger[ledger.session >= EX].rewrite_reason.isna().all()
        assert set(ledger.status) == {"complete"}
        # What the repair cost: no more than the fresh backfill of those 40 of its 60 sessions.
        assert repair_calls <= fresh_calls and fresh.backfill_id != done.backfill_id


def test_a_split_with_no_history_stored_before_its_ex_date_is_no_work(pg_url, tmp_path, monkeypatch):
    registry = CorporateActions(splits=[Split("AAPL", EX, 4, 1, date(2099, 1, 1))])
    with deployment(pg_url, tmp_path, monkeypatch, registry) as (fakes, clock, instance, daemons):
        Watchlist(shared_engine(pg_url)).add(["AAPL"])
        daemons.sensors()
        backfill_history(instance, daemons, "AAPL", SESSIONS[40:])  # from the ex-date on only
        fakes.config.corporate_actions = CorporateActions(splits=[Split("AAPL", EX, 4, 1, SESSIONS[35])])
        clock[0] = CAL.open(LATER)
        daemons.schedule(pd.Timestamp(f"{LATER} 07:59", tz=NY))
        daemons.schedule(pd.Timestamp(f"{LATER} 08:01", tz=NY))
        calls = len(fakes.log)
        daemons.sensors()
        (split,) = ActionStore(shared_engine(pg_url)).splits(states=[RepairState.NOT_NEEDED])
        assert split.note == "no history stored before the ex-date"
        assert len(instance.get_backfills()) == 1 and len(fakes.log) == calls  # no backfill, no request


def test_repairing_beyond_one_requests_span_costs_no_more_than_a_fresh_backfill(pg_url, tmp_path, monkeypatch):
    """Alpaca pages hold 10,000 bars of 04:00-20:00 m15 (64 a session) and a request spans at most
    260 sessions: a repair of 280 sessions (two requests, the first of two pages) costs
    ceil(bars / 10,000) calls a request, as a fresh backfill's do, and no more in total."""
    history = CAL.sessions("2023-01-03", "2024-12-31")[-300:]
    split_at = history[280]
    registry = CorporateActions(splits=[Split("AAPL", split_at, 4, 1, date(2099, 1, 1))])
    after = CAL.close(history[-1]) + pd.Timedelta(days=1)
    with deployment(pg_url, tmp_path, monkeypatch, registry, fake_now=after) as (
        fakes, clock, instance, daemons
    ):
        Watchlist(shared_engine(pg_url)).add(["AAPL"])
        daemons.sensors()
        fakes.reset()
        backfill_history(instance, daemons, "AAPL", history)
        fresh = {tf: alpaca_calls(fakes, timeframe=tf) for tf in ("15Min", "1Day")}
        fakes.config.corporate_actions = CorporateActions(splits=[Split("AAPL", split_at, 4, 1, history[275])])
        later = CAL.next_session(history[-1])
        clock[0] = CAL.open(later)
        daemons.schedule(pd.Timestamp(f"{later} 07:59", tz=NY))
        daemons.schedule(pd.Timestamp(f"{later} 08:01", tz=NY))
        daemons.sensors()
        (split,) = ActionStore(shared_engine(pg_url)).splits()
        fakes.reset()
        assert daemons.backfills(split.backfill_id).status in SUCCEEDED
        repair = {tf: alpaca_calls(fakes, timeframe=tf) for tf in ("15Min", "1Day")}
    per_request = alpaca.MAX_SESSIONS  # sessions an Alpaca request spans, per timeframe
    assert per_request[Timeframe.M15] < 280  # the repair needs two m15 requests
    floor = {"15Min": sum(math.ceil(n * 64 / 10_000) for n in _chunks(280, per_request[Timeframe.M15])),
             "1Day": len(_chunks(280, per_request[Timeframe.D1]))}
    print(f"\nAlpaca calls, fresh backfill of {len(history)} sessions: {fresh}; "
          f"repair of the 280 sessions before the split: {repair}; floor {floor}")
    assert repair == floor
    assert repair["15Min"] <= fresh["15Min"] and repair["1Day"] <= fresh["1Day"]


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - i) for i in range(0, total, size)]

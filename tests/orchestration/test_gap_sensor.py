"""The coverage_gaps sensor on real instances and stores (SQLite and PostgreSQL): what it requests,
what it leaves alone, and — driven by Dagster's own sensor daemon iteration — a new symbol filled
to the horizon with no run requested twice."""

import contextlib
import logging
import os
from datetime import date, timedelta

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from backfill_dagster.definitions import build_definitions
from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.gap_policy import GapPolicy, horizons
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.orchestration.gap_sensor import GAP_SENSOR_NAME, build_gap_sensor
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME, partition_key
from backfill_dagster.orchestration.resources import StoreResource
from backfill_dagster.orchestration.tags import REQUESTED_BY_TAG
from backfill_dagster.settings import Settings
from backfill_dagster.store import BarStore, CoverageEntry, Watchlist, shared_engine
from tests.conftest import utc
from tests.orchestration.conftest import add_symbols

M15, H1, H4, D1 = Timeframe.M15, Timeframe.H1, Timeframe.H4, Timeframe.D1
INTRADAY = {dg.AssetKey(t.asset_name) for t in (M15, H1, H4)}
DAILY = {dg.AssetKey("bars_d1")}
START, END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
# Friday 2024-12-06, 20:00 New York: the week's sessions have all closed and settled.
NOW = pd.Timestamp("2024-12-06 20:00", tz="America/New_York").tz_convert("UTC")
POLICY = GapPolicy(history_days={M15: 7, H1: 7, H4: 7, D1: 7})
DAYS = xnys().sessions("2024-11-29", "2024-12-06")  # the 6 sessions of every horizon above


def evaluate(sensor, instance, url):
    return sensor(dg.build_sensor_context(instance=instance, resources={"store": StoreResource(database_url=url)}))


def sensor_for(policy=POLICY, now=NOW):
    return build_gap_sensor(Settings().history_start, policy, clock=lambda: now)


def write_ledger(url, timeframe, symbol, sessions, *, bars=None, closed=True, at=None):
    store = BarStore(shared_engine(url))
    entries = [CoverageEntry(symbol, d, 26 if bars is None else bars, 26, closed) for d in sessions]
    # Ledger states set directly: fewer bars than before are fine here.
    store.replace_partitions(timeframe, store.read_bars(timeframe, []), entries, provider="demo",
                             adjustment="split", fetched_at=at or utc("2024-12-09 12:00"), allow_fewer=True)


def boxes(requests):
    return {(frozenset(r.asset_selection), r.tags[START], r.tags[END]) for r in requests}


def box(assets, first_symbol, first_day, last_symbol, last_day):
    return (frozenset(assets), partition_key(first_symbol, first_day), partition_key(last_symbol, last_day))


def test_requests_missing_partial_and_failed_partitions_as_boxes(instance, store_url):
    add_symbols(instance, store_url, ["AAPL", "MSFT", "NVDA"])
    # AAPL: fetched while 12-05 was open (now closed), a failed d1 fetch, and a closed session of an
    # illiquid day with fewer bars than the grid (no trades is not a hole: left alone).
    for timeframe in (M15, H1, H4):
        write_ledger(store_url, timeframe, "AAPL", [DAYS[4]], closed=False, at=utc("2024-12-05 17:00"))
    for symbol in ("AAPL", "MSFT"):
        for timeframe in Timeframe:
            days = [d for d in DAYS if not (symbol == "AAPL" and timeframe is not D1 and d == DAYS[4])]
            write_ledger(store_url, timeframe, symbol, days)
    write_ledger(store_url, M15, "AAPL", [DAYS[2]], bars=11)
    BarStore(shared_engine(store_url)).record_failures(
        D1, {("AAPL", DAYS[1]): "HTTP 503"}, expected={DAYS[1]: 1}, at=NOW - timedelta(hours=1))
    # NVDA was never covered.

    requests = evaluate(sensor_for(), instance, store_url)
    assert boxes(requests) == {
        box(INTRADAY, "AAPL", DAYS[4], "AAPL", DAYS[4]),  # partial, now closed
        box(DAILY, "AAPL", DAYS[1], "AAPL", DAYS[1]),  # failed
        box(INTRADAY, "NVDA", DAYS[0], "NVDA", DAYS[-1]),  # never covered: one box per kind
        box(DAILY, "NVDA", DAYS[0], "NVDA", DAYS[-1]),
    }
    # Newest sessions first, and the queue priority says the same.
    assert [r.tags[END][:10] for r in requests] == ["2024-12-06", "2024-12-06", "2024-12-05", "2024-12-02"]
    assert [int(r.tags["dagster/priority"]) for r in requests] == [0, 0, -1, -4]
    assert all(r.job_name == ALL_BARS_JOB and r.tags[REQUESTED_BY_TAG] == GAP_SENSOR_NAME for r in requests)
    # The same ledger gives the same run keys: Dagster refuses a key it has seen.
    again = evaluate(sensor_for(now=NOW + timedelta(minutes=5)), instance, store_url)
    assert [r.run_key for r in again] == [r.run_key for r in requests]


def test_runs_in_flight_are_not_requested_again(defs, instance, store_url):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    sensor = sensor_for()
    first = evaluate(sensor, instance, store_url)
    assert len(first) == 2  # intraday and daily boxes over both symbols
    job = defs.resolve_job_def(ALL_BARS_JOB)
    runs = [
        instance.create_run_for_job(job, tags=r.tags, asset_selection=frozenset(r.asset_selection), status=status)
        for r, status in zip(first, (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.NOT_STARTED))
    ]
    # A slow provider: the runs have not finished at the next tick.
    second = evaluate(sensor, instance, store_url)
    assert isinstance(second, dg.SkipReason)
    assert "already being filled by unfinished runs" in second.skip_message
    # One run still going, one failed without writing anything: only the failed one's box is
    # asked for again, under the same run key (so the daemon would not launch it twice either).
    instance.report_run_failed(instance.get_run_by_id(runs[1].run_id))
    third = evaluate(sensor, instance, store_url)
    assert [r.run_key for r in third] == [first[1].run_key]


def test_a_ui_backfill_in_progress_holds_its_timeframes(defs, instance, store_url):
    """A backfill launches its runs over time: until it finishes, its timeframes are left to it."""
    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

    add_symbols(instance, store_url, ["AAPL"])
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id="uibackfill", asset_graph=defs.resolve_asset_graph(),
        partition_names=[partition_key("AAPL", d) for d in DAYS], asset_selection=[dg.AssetKey("bars_d1")],
        backfill_timestamp=NOW.timestamp(), tags={}, dynamic_partitions_store=instance, all_partitions=False,
        title=None, description=None, run_config=None,
    )
    instance.add_backfill(backfill)
    sensor = sensor_for()
    requests = evaluate(sensor, instance, store_url)
    assert [set(r.asset_selection) for r in requests] == [INTRADAY]
    instance.update_backfill(backfill.with_status(BulkActionStatus.COMPLETED_SUCCESS))
    assert [set(r.asset_selection) for r in evaluate(sensor, instance, store_url)] == [INTRADAY, DAILY]


def test_the_skip_message_counts_only_the_partitions_runs_are_filling(defs, instance, store_url):
    """A split repair's backfill of AAPL's d1 holds the d1 timeframe; one of its runs is filling 3
    sessions. Only those 3 are "being filled": the other symbols' gaps just wait for it to end."""
    from dagster._core.execution.backfill import PartitionBackfill

    symbols = ["AAPL", "MSFT", "NVDA"]
    add_symbols(instance, store_url, symbols)
    for symbol in symbols:
        for timeframe in (M15, H1, H4):
            write_ledger(store_url, timeframe, symbol, DAYS)
    instance.add_backfill(PartitionBackfill.from_asset_partitions(
        backfill_id="repair", asset_graph=defs.resolve_asset_graph(),
        partition_names=[partition_key("AAPL", d) for d in DAYS], asset_selection=[dg.AssetKey("bars_d1")],
        backfill_timestamp=NOW.timestamp(), tags={}, dynamic_partitions_store=instance, all_partitions=False,
        title=None, description=None, run_config=None,
    ))
    job = defs.resolve_job_def(ALL_BARS_JOB)
    instance.create_run_for_job(
        job, tags={START: partition_key("AAPL", DAYS[0]), END: partition_key("AAPL", DAYS[2])},
        asset_selection=frozenset(DAILY), status=dg.DagsterRunStatus.STARTED,
    )
    skipped = evaluate(sensor_for(), instance, store_url)
    assert isinstance(skipped, dg.SkipReason)
    message = skipped.skip_message
    assert "18 gap(s) (d1 18 missing)" in message
    assert "3 already being filled by unfinished runs" in message
    assert "15 in timeframes an unfinished backfill holds: left until it ends" in message
    assert "backfill(s) repair in progress" in message


def test_skip_reasons_say_why(instance, store_url):
    sensor = sensor_for()
    assert "no active symbols" in evaluate(sensor, instance, store_url).skip_message
    Watchlist(shared_engine(store_url)).add(["AAPL"])
    assert "is a symbol partition yet" in evaluate(sensor, instance, store_url).skip_message
    instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, ["AAPL"])
    for timeframe in Timeframe:
        write_ledger(store_url, timeframe, "AAPL", DAYS)
    skip = evaluate(sensor, instance, store_url)
    assert skip.skip_message == "1 symbol(s): no gaps: every partition in the horizon is covered"
    # Monday 11:00: the open session is the schedules' business, not a gap.
    assert isinstance(evaluate(sensor_for(now=utc("2024-12-09 16:00")), instance, store_url), dg.SkipReason)


def test_a_new_symbol_is_filled_newest_sessions_first_a_few_runs_per_tick(instance, store_url, calendar):
    add_symbols(instance, store_url, ["NEW"])
    policy = GapPolicy(history_days={M15: 30, H1: 30, H4: 30, D1: 30}, max_sessions_per_run=5, max_runs_per_tick=3)
    requests = evaluate(sensor_for(policy), instance, store_url)
    wanted = horizons(policy, calendar, NOW, Settings().history_start)[D1]
    assert [(r.tags[START][:10], r.tags[END][:10]) for r in requests] == [
        (wanted[-5].isoformat(), wanted[-1].isoformat()),  # intraday, newest five sessions
        (wanted[-5].isoformat(), wanted[-1].isoformat()),  # daily, the same
        (wanted[-10].isoformat(), wanted[-6].isoformat()),  # then the five before
    ]
    assert [int(r.tags["dagster/priority"]) for r in requests] == [0, 0, -5]


# ------------------------------------------------------------------------------------------------
# Driven by the sensor daemon's own iteration (dagster._daemon.sensor.execute_sensor_iteration) on
# a real instance whose run launcher executes each launched run in-process, synchronously.

DAEMON_POLICY = GapPolicy(
    history_days={M15: 5, H1: 8, H4: 8, D1: 10}, max_sessions_per_run=3, max_runs_per_tick=2
)


@dg.definitions
def daemon_defs() -> dg.Definitions:
    """The code location the daemon test loads: the project's assets, job and resources, with
    watchlist_sync and a coverage_gaps sensor on a fixed clock and small horizons."""
    from backfill_dagster.orchestration.sensors import watchlist_sync

    settings = Settings(data_dir=os.environ["GAP_TEST_DATA_DIR"], database_url=os.environ["GAP_TEST_URL"])
    base = build_definitions(settings)
    sensor = build_gap_sensor(settings.history_start, DAEMON_POLICY, clock=lambda: NOW, minimum_interval_seconds=30)
    return dg.Definitions(
        assets=base.assets, jobs=base.jobs, sensors=[watchlist_sync, sensor],
        resources=base.resources, executor=dg.in_process_executor,
    )


@pytest.fixture
def daemon_instance():
    with dg.instance_for_test(synchronous_run_launcher=True, synchronous_run_coordinator=True) as instance:
        yield instance


@contextlib.contextmanager
def sensor_daemon(instance, store_url, tmp_path, monkeypatch):
    """The sensor daemon's iteration over the `daemon_defs` code location: yields tick(n), which
    runs n iterations a minute apart (past the sensors' minimum interval) and returns the statuses
    of every coverage_gaps tick so far."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.sensor import execute_sensor_iteration

    monkeypatch.setenv("GAP_TEST_URL", store_url)
    monkeypatch.setenv("GAP_TEST_DATA_DIR", str(tmp_path))
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=__name__, attribute="daemon_defs"), location_name="gaps"
    )
    logger = logging.getLogger("gap_daemon_test")
    clock = [pd.Timestamp.now(tz="UTC").to_pydatetime()]
    with create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as context:
        repo = next(iter(context.create_request_context().get_code_location("gaps").get_repositories().values()))
        remote = repo.get_sensor(GAP_SENSOR_NAME)

        def tick(n: int) -> list[str]:
            for _ in range(n):
                clock[0] += timedelta(minutes=1)
                with freeze_time(clock[0]):
                    list(execute_sensor_iteration(context, logger, None, None))
            found = instance.get_ticks(remote.get_remote_origin_id(), remote.selector_id)
            return [t.status.value for t in reversed(found)]

        yield tick


def gap_runs(instance) -> list[dg.DagsterRun]:
    return list(reversed(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": GAP_SENSOR_NAME}))))


def requested_partitions(run, order, calendar) -> set[tuple[str, date]]:
    (s0, d0), (s1, d1) = ((k.split("|")[1], date.fromisoformat(k.split("|")[0])) for k in (run.tags[START], run.tags[END]))
    symbols = order[order.index(s0) : order.index(s1) + 1]
    return {(s, d) for s in symbols for d in calendar.sessions(d0, d1)}


def test_the_daemon_fills_a_new_symbol_with_no_run_requested_twice(
    daemon_instance, store_url, tmp_path, monkeypatch, calendar
):
    instance = daemon_instance
    wanted = horizons(DAEMON_POLICY, calendar, NOW, Settings().history_start)
    # OLD is covered already (its ledger says so); NEW is only added to the watchlist table.
    add_symbols(instance, store_url, ["OLD"])
    for timeframe in Timeframe:
        write_ledger(store_url, timeframe, "OLD", calendar.sessions(wanted[D1][0], wanted[D1][-1]))
    Watchlist(shared_engine(store_url)).add(["NEW"])

    with sensor_daemon(instance, store_url, tmp_path, monkeypatch) as daemon:
        statuses = daemon(5)
        runs = gap_runs(instance)
        # Behind the system's back, once filled: a session's d1 bars and ledger row deleted by hand.
        gone = wanted[D1][-3]
        with shared_engine(store_url).begin() as conn:
            conn.execute(sa.text("DELETE FROM ohlc_bars WHERE symbol = 'NEW' AND timeframe = 'd1' AND ts = :ts"),
                         {"ts": calendar.midnight(gone).to_pydatetime()})
            conn.execute(sa.text("DELETE FROM bar_coverage WHERE symbol = 'NEW' AND timeframe = 'd1' AND session = :d"),
                         {"d": gone})
        daemon(2)
    assert instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME) == ["OLD", "NEW"]  # watchlist_sync
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    # 6 intraday sessions in boxes of 3 (2 runs), 8 daily ones (3 runs); 2 runs per tick.
    assert (len(wanted[H1]), len(wanted[D1])) == (6, 8)
    assert len(runs) == 5 and statuses[-1] == "SKIPPED" and statuses.count("SUCCESS") == 3
    keys = [r.tags["dagster/run_key"] for r in runs]
    assert len(set(keys)) == len(keys)
    order = ["OLD", "NEW"]
    seen: dict[tuple, int] = {}
    for run in runs:
        for partition in requested_partitions(run, order, calendar):
            for asset in run.asset_selection:
                seen[(asset, partition)] = seen.get((asset, partition), 0) + 1
    assert max(seen.values()) == 1  # every partition of every asset requested once
    assert all(p[0] == "NEW" for _, p in seen)
    # Newest sessions first.
    assert [r.tags[END][:10] for r in runs[:2]] == [wanted[D1][-1].isoformat()] * 2

    # Covered to the horizon, the deleted session refilled by exactly one more run.
    ledger = BarStore(shared_engine(store_url)).coverage(symbols=["NEW"])
    for timeframe in Timeframe:
        rows = ledger[ledger.timeframe == timeframe.value]
        expected_days = wanted[H1] if timeframe.is_intraday else wanted[D1]  # m15 rides with h1/h4
        assert sorted(rows.session) == expected_days, timeframe
        assert set(rows.status) == {"complete"}

    refill = gap_runs(instance)[len(runs):]
    assert [(r.tags[START], r.tags[END], r.asset_selection) for r in refill] == [
        (partition_key("NEW", gone), partition_key("NEW", gone), DAILY)
    ]
    assert refill[0].status == dg.DagsterRunStatus.SUCCESS
    assert BarStore(shared_engine(store_url)).read_bars(D1, [("NEW", gone)]).shape[0] == 1

"""intraday_refresh and end_of_day against the NYSE calendar: sessions, holidays, ad-hoc closures,
early closes and DST Mondays, on real instances and stores (SQLite and PostgreSQL)."""

from datetime import timedelta

import dagster as dg
import pandas as pd
import pytest
from dagster._utils.schedules import cron_string_iterator

from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.orchestration.gap_sensor import build_gap_sensor
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.resources import ProvidersResource, StoreResource
from backfill_dagster.orchestration.schedules import (
    build_schedules,
    end_of_day_cron,
)
from backfill_dagster.orchestration.tags import REQUESTED_BY_TAG
from backfill_dagster.store import BarStore, Watchlist, shared_engine
from tests.orchestration.conftest import add_symbols

NY = "America/New_York"
INTRADAY_ASSETS = {dg.AssetKey(f"bars_{t}") for t in ("m15", "h1", "h4")}
ALL_ASSETS = {dg.AssetKey(t.asset_name) for t in Timeframe}
START, END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


@pytest.fixture
def schedules():
    intraday, eod = build_schedules()
    return {"intraday": intraday, "eod": eod}


def tick(schedule, instance, url, when: str, providers: ProvidersResource | None = None, **store):
    # As a context manager: the context opens its own instance from the ref, and must close it.
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=pd.Timestamp(when, tz=NY).to_pydatetime(),
        resources={"store": StoreResource(database_url=url, **store), "providers": providers or ProvidersResource()},
    ) as context:
        return schedule.evaluate_tick(context)


def boxes(data):
    return [(r.tags[START], r.tags[END], set(r.asset_selection)) for r in data.run_requests]


INTRADAY_TICKS = [
    ("2024-12-04 10:00", None),  # a normal Wednesday
    ("2024-12-04 09:15", "2024-12-04 opens at 09:30"),
    ("2024-12-04 09:30", "2024-12-04 opens at 09:30"),  # no bar has completed at the open
    ("2024-11-30 10:00", "2024-11-30 is not an NYSE trading session (a Saturday)"),
    ("2024-11-28 10:00", "2024-11-28 is not an NYSE trading session (NYSE holiday: Thanksgiving)"),
    ("2025-01-09 10:00", "2025-01-09 is not an NYSE trading session (NYSE closed (ad-hoc closure))"),
    ("2024-11-29 12:45", None),  # early close at 13:00
    ("2024-11-29 13:15", "2024-11-29 closed at 13:00 (early close): the end_of_day schedule finalizes it"),
    ("2024-12-04 16:00", "2024-12-04 closed at 16:00"),
    # DST Mondays: the open is 09:30 New York whatever the UTC offset.
    ("2024-03-11 09:15", "2024-03-11 opens at 09:30"),
    ("2024-03-11 09:45", None),
    ("2024-03-11 10:00", None),
    ("2024-11-04 09:15", "2024-11-04 opens at 09:30"),
    ("2024-11-04 09:45", None),
    ("2024-11-04 10:00", None),
]


def test_intraday_refresh_follows_the_calendar(schedules, instance, store_url):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    for when, expected in INTRADAY_TICKS:
        data = tick(schedules["intraday"], instance, store_url, when)
        if expected:
            assert not data.run_requests and data.skip_message.startswith(expected), (when, data.skip_message)
            continue
        day = when[:10]
        assert boxes(data) == [(f"{day}|AAPL", f"{day}|MSFT", INTRADAY_ASSETS)], when
        (request,) = data.run_requests
        assert request.run_key == f"intraday_refresh:{day}T{when[11:]}:AAPL..MSFT"
        assert request.job_name == ALL_BARS_JOB and request.tags[REQUESTED_BY_TAG] == "intraday_refresh"


@pytest.mark.parametrize("names,fallback", [(["polygon"], False), (["alpaca"], False), (["polygon", "yahoo"], True)])
def test_intraday_refresh_skips_when_no_provider_serves_the_open_session(schedules, instance, store_url, names, fallback):
    """Polygon and Alpaca's free SIP feed serve closed sessions only: every tick would be a run that
    fails for each symbol. It skips and says why; a provider that serves the open session is enough."""
    add_symbols(instance, store_url, ["AAPL"])
    keys = ProvidersResource(
        names=names, polygon_api_key="k", alpaca_api_key="k", alpaca_api_secret="s", alpaca_feed="sip",
    )
    data = tick(schedules["intraday"], instance, store_url, "2024-12-04 10:00", providers=keys)
    if fallback:
        assert [r.tags[START] for r in data.run_requests] == ["2024-12-04|AAPL"]
        return
    assert not data.run_requests
    assert data.skip_message == (
        f"no configured provider ({', '.join(names)}) serves m15 bars of an open session: "
        "2024-12-04 is fetched after its close, by the end_of_day schedule"
    )
    # after the close, end_of_day asks for the session with the same providers
    assert tick(schedules["eod"], instance, store_url, "2024-12-04 17:00", providers=keys).run_requests


def test_cron_ticks_keep_new_york_hours_across_dst(schedules):
    """The daemon's own cron iteration: 09:45 New York is 13:45 UTC in summer, 14:45 in winter."""
    intraday = schedules["intraday"]
    for day, utc_hour in (("2024-03-11", 13), ("2024-11-04", 14)):
        start = pd.Timestamp(f"{day} 00:00", tz=NY).timestamp()
        ticks = cron_string_iterator(start, intraday.cron_schedule, intraday.execution_timezone)
        first = [next(ticks) for _ in range(4)]
        assert first[3].astimezone(pd.Timestamp(0, tz="UTC").tzinfo).hour == utc_hour
        assert first[3].strftime("%H:%M") == "09:45"


def test_symbols_not_contiguous_in_partition_order_make_one_run_per_block(schedules, instance, store_url):
    add_symbols(instance, store_url, ["AAPL", "MSFT", "NVDA"])
    Watchlist(shared_engine(store_url)).remove(["MSFT"])  # its partition stays until watchlist_sync runs
    data = tick(schedules["intraday"], instance, store_url, "2024-12-04 11:30")
    assert [(s, e) for s, e, _ in boxes(data)] == [
        ("2024-12-04|AAPL", "2024-12-04|AAPL"), ("2024-12-04|NVDA", "2024-12-04|NVDA"),
    ]
    assert len({r.run_key for r in data.run_requests}) == 2


def test_skips_with_reasons_for_an_empty_watchlist_and_a_refresh_still_running(schedules, defs, instance, store_url):
    data = tick(schedules["intraday"], instance, store_url, "2024-12-04 10:00")
    assert data.skip_message == "the watchlist has no active symbols: nothing to fetch"
    assert tick(schedules["eod"], instance, store_url, "2024-12-04 17:00").skip_message.startswith("the watchlist")
    add_symbols(instance, store_url, ["AAPL"])
    (request,) = tick(schedules["intraday"], instance, store_url, "2024-12-04 10:00").run_requests
    instance.create_run_for_job(defs.resolve_job_def(ALL_BARS_JOB), tags=request.tags,
                                asset_selection=frozenset(request.asset_selection), status=dg.DagsterRunStatus.STARTED)
    data = tick(schedules["intraday"], instance, store_url, "2024-12-04 10:15")
    assert "is still running" in data.skip_message


def test_end_of_day_waits_for_the_delay_after_an_early_close_then_fires_once(schedules, defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    eod = schedules["eod"]
    data = tick(eod, instance, store_url, "2024-11-29 13:15")
    assert data.skip_message == "2024-11-29 ends at 13:00 (early close); finalizing at 13:30, 30 min later"
    data = tick(eod, instance, store_url, "2024-11-29 13:30")
    assert boxes(data) == [("2024-11-29|AAPL", "2024-11-29|MSFT", ALL_ASSETS)]
    (request,) = data.run_requests
    assert request.run_key == "end_of_day:2024-11-29:AAPL..MSFT"
    # The run it asks for is a valid range run of the job: it finalizes the session.
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection=set(request.asset_selection))
    assert job.execute_in_process(instance=instance, tags=request.tags).success
    ledger = BarStore(shared_engine(store_url), calendar).coverage()
    assert len(ledger) == 8 and set(ledger.status) == {"complete"}
    # Later ticks of the same session do nothing.
    data = tick(eod, instance, store_url, "2024-11-29 13:45")
    assert not data.run_requests and "already finalized by run" in data.skip_message
    # A regular day: 16:00 + 30 min; holidays skip.
    assert "finalizing at 16:30" in tick(eod, instance, store_url, "2024-12-04 16:15").skip_message
    assert tick(eod, instance, store_url, "2024-12-04 16:30").run_requests[0].run_key == "end_of_day:2024-12-04:AAPL..MSFT"
    assert "Thanksgiving" in tick(eod, instance, store_url, "2024-11-28 16:30").skip_message


def test_end_of_day_after_the_post_market_when_extended_hours_are_kept(schedules, instance, store_url):
    add_symbols(instance, store_url, ["AAPL"])
    skip = tick(schedules["eod"], instance, store_url, "2024-12-04 16:30", extended_hours=True)
    assert skip.skip_message == "2024-12-04 ends at 20:00 (post-market); finalizing at 20:30, 30 min later"
    assert tick(schedules["eod"], instance, store_url, "2024-12-04 20:30", extended_hours=True).run_requests


def test_end_of_day_cron():
    # Ticks cover an early close + delay through the post-market's end + delay.
    assert end_of_day_cron(timedelta(minutes=30)) == "*/15 13-21 * * 1-5"
    assert end_of_day_cron(timedelta(0)) == "*/15 13-21 * * 1-5"
    assert end_of_day_cron(timedelta(minutes=180)) == "*/15 16-23 * * 1-5"
    _, eod = build_schedules(timedelta(minutes=45))
    assert eod.cron_schedule == "*/15 13-21 * * 1-5" and eod.execution_timezone == NY


def test_the_sensor_and_schedules_load_with_the_projects_definitions(defs, settings):
    """What the lead wires into Definitions: both schedules and the sensor resolve their job and
    resources."""
    wired = dg.Definitions(
        assets=defs.assets, jobs=defs.jobs, resources=defs.resources,
        sensors=[build_gap_sensor(settings.history_start)], schedules=build_schedules(),
    )
    dg.Definitions.validate_loadable(wired)
    repo = wired.get_repository_def()
    assert {s.name for s in repo.schedule_defs} == {"intraday_refresh", "end_of_day"}
    assert repo.get_sensor_def("coverage_gaps").job_name == ALL_BARS_JOB

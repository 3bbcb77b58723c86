"""The offline demo provider and the router."""

from datetime import date

import pandas as pd
import pytest

from backfill_dagster.domain.bars import validate_bars
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers.base import Adjustment, Capabilities, FetchRequest, ProviderConfigError
from backfill_dagster.providers.demo import DemoProvider
from backfill_dagster.providers.planner import plan_requests
from backfill_dagster.providers.router import Router
from tests.conftest import THANKSGIVING_WEEK, aggregate_day, fixed_clock, utc

LATER = fixed_clock("2025-06-01 00:00")


def fetch(calendar, symbols, sessions, timeframe=Timeframe.M15, clock=LATER, extended=False):
    provider = DemoProvider(calendar, clock)
    (request,) = plan_requests([(s, d) for s in symbols for d in sessions], timeframe, provider.capabilities, calendar, extended=extended)
    return provider.fetch(request).bars


def test_demo_bars_are_valid_on_the_session_grid(calendar):
    bars = fetch(calendar, ["AAPL", "MSFT"], THANKSGIVING_WEEK)
    checked = validate_bars(bars, Timeframe.M15, calendar, symbols=["AAPL", "MSFT"])
    assert checked.rejected.empty and checked.outside_hours == 0
    expected = calendar.expected_bars(THANKSGIVING_WEEK, Timeframe.M15)
    assert list(bars[bars.symbol == "AAPL"]["ts"]) == list(expected["ts"])  # early close: 14 bars on the 29th


def test_demo_is_deterministic_per_symbol_and_session(calendar):
    one = fetch(calendar, ["AAPL"], THANKSGIVING_WEEK)
    alone = fetch(calendar, ["AAPL"], [date(2024, 11, 27)])
    pd.testing.assert_frame_equal(one[one.ts.dt.tz_convert("America/New_York").dt.date == date(2024, 11, 27)].reset_index(drop=True), alone)
    assert not fetch(calendar, ["MSFT"], [date(2024, 11, 27)])["close"].equals(alone["close"])


def test_demo_d1_is_the_regular_hours_m15_aggregated(calendar):
    d1 = fetch(calendar, ["AAPL"], THANKSGIVING_WEEK, Timeframe.D1)
    m15 = fetch(calendar, ["AAPL"], THANKSGIVING_WEEK)
    assert list(d1["ts"]) == [calendar.midnight(d) for d in THANKSGIVING_WEEK]
    day = m15[m15.ts.dt.tz_convert("America/New_York").dt.date == date(2024, 11, 29)]
    pd.testing.assert_frame_equal(d1.iloc[[-1]].reset_index(drop=True), aggregate_day(day, "AAPL", d1.ts.iloc[-1]))


def test_demo_serves_only_finished_bars_of_an_open_session(calendar):
    bars = fetch(calendar, ["AAPL"], [date(2024, 11, 29)], clock=fixed_clock("2024-11-29 15:29"))
    assert list(bars["ts"]) == [utc("2024-11-29 14:30"), utc("2024-11-29 14:45"), utc("2024-11-29 15:00")]


def test_demo_reports_its_clock_and_no_d1_bar_before_the_close(calendar):
    """The answer is final up to the demo's clock; a d1 bar has not ended before its close."""
    provider = DemoProvider(calendar, fixed_clock("2024-11-29 17:59"))  # 12:59 New York, close 13:00
    sessions = [date(2024, 11, 27), date(2024, 11, 29)]
    (request,) = plan_requests([("AAPL", d) for d in sessions], Timeframe.D1, provider.capabilities, calendar)
    result = provider.fetch(request)
    assert result.complete_through == utc("2024-11-29 17:59")
    assert list(result.bars["ts"]) == [calendar.midnight(date(2024, 11, 27))]
    closed = DemoProvider(calendar, fixed_clock("2024-11-29 18:00")).fetch(request)
    assert list(closed.bars["ts"]) == [calendar.midnight(d) for d in sessions]


def _fake(name, **caps):
    class Fake(DemoProvider):
        pass

    fake = Fake.__new__(Fake)
    fake.name = name
    fake.capabilities = Capabilities(**{"timeframes": frozenset(Timeframe), "adjustments": frozenset(Adjustment), **caps})
    return fake


def test_router_prefers_in_order_and_filters_by_capability(calendar):
    history = _fake("history", serves_open_session=False)
    today = _fake("today", history_days={Timeframe.M15: 30})
    raw_only = _fake("raw", adjustments=frozenset({Adjustment.RAW}))
    router = Router([raw_only, history, today], calendar)
    now = utc("2024-11-29 15:00")
    assert [p.name for p in router.candidates(Timeframe.M15, date(2024, 11, 27), now)] == ["history", "today"]
    assert [p.name for p in router.candidates(Timeframe.M15, date(2024, 11, 29), now)] == ["today"]
    assert [p.name for p in router.candidates(Timeframe.M15, date(2024, 1, 2), now)] == ["history"]


def test_router_refuses_when_no_provider_can_honour_the_adjustment(calendar):
    with pytest.raises(ProviderConfigError, match="split-adjusted"):
        Router([_fake("raw", adjustments=frozenset({Adjustment.RAW}))], calendar)
    with pytest.raises(ProviderConfigError, match="no providers configured"):
        Router([], calendar)


def test_fetch_request_describes_itself():
    r = FetchRequest(Timeframe.M15, tuple("ABCDEFG"), (date(2024, 1, 2), date(2024, 1, 3)), utc("2024-01-02 14:30"), utc("2024-01-03 21:00"))
    assert r.describe() == "m15 A,B,C,D,E,+2 2024-01-02..2024-01-03"
    assert len(r.partitions) == 14

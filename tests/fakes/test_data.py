"""The fakes' bars are the demo provider's: m15 bar for bar, d1 from the regular-hours m15 bars."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.synthetic import synthetic_session_m15
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.fakes.data import BarData
from backfill_dagster.providers.demo import DemoProvider
from backfill_dagster.providers.planner import plan_requests
from tests.conftest import aggregate_day

LATER = pd.Timestamp("2030-01-01", tz="UTC").value
SESSIONS = [
    date(2024, 1, 3),
    date(2024, 3, 11),  # first session after the DST change
    date(2024, 11, 29),  # early close at 13:00
    date(2016, 6, 1),
]


@pytest.fixture(scope="module")
def data() -> BarData:
    return BarData(xnys())


@pytest.mark.parametrize("session", SESSIONS)
@pytest.mark.parametrize("symbol", ["AAPL", "BRK.B", "XOM"])
def test_m15_and_d1_equal_the_demo_providers(data, symbol, session):
    cal = xnys()
    demo = synthetic_session_m15(symbol, session, cal)
    pd.testing.assert_frame_equal(data.frame("m15", symbol, session, LATER), demo)
    assert demo["ts"].iloc[-1] == cal.served_window(session)[1] - pd.Timedelta(minutes=15)  # 19:45, half days too
    lo, hi = cal.window(session)
    regular = demo[(demo["ts"] >= lo) & (demo["ts"] < hi)].reset_index(drop=True)
    pd.testing.assert_frame_equal(data.frame("m15", symbol, session, LATER, extended=False), regular)
    pd.testing.assert_frame_equal(data.frame("d1", symbol, session, LATER), aggregate_day(regular, symbol, cal.midnight(session)))


def test_the_demo_provider_serves_the_same_bars_inside_the_requested_hours(data):
    """A half day's served hours run to 20:00; the demo provider returns only its window's bars."""
    cal = xnys()
    session = date(2024, 11, 29)
    served = data.frame("m15", "AAPL", session, LATER)
    assert served["ts"].iloc[-1] == pd.Timestamp("2024-11-30T00:45:00Z")  # 19:45 New York
    for extended in (False, True):
        request = plan_requests([("AAPL", session)], Timeframe.M15, DemoProvider.capabilities, cal, extended=extended)[0]
        demo = DemoProvider(cal, lambda: pd.Timestamp(LATER, tz="UTC")).fetch(request).bars
        lo, hi = cal.window(session, extended=extended)
        inside = served[(served["ts"] >= lo) & (served["ts"] < hi)].reset_index(drop=True)
        pd.testing.assert_frame_equal(demo, inside)


def test_open_session_has_only_bars_started_before_now(data):
    now = pd.Timestamp("2024-01-03T15:10:00Z")
    bars = data.frame("m15", "AAPL", date(2024, 1, 3), now.value)
    assert bars["ts"].max() == pd.Timestamp("2024-01-03T15:00:00Z")
    day = data.frame("d1", "AAPL", date(2024, 1, 3), now.value)
    assert day["close"].iloc[0] == bars["close"].iloc[-1]  # today's d1 so far
    assert data.frame("d1", "AAPL", date(2024, 1, 3), pd.Timestamp("2024-01-03T14:00Z").value).empty


def test_no_trade_slots_are_deterministic_outside_regular_hours_only(data):
    cal = xnys()
    lo, hi = cal.window(date(2024, 1, 3), extended=True)
    slots = data.m15("AAPL", lo.value, hi.value, LATER, no_trade_rate=0.5)
    again = data.m15("AAPL", lo.value, hi.value, LATER, no_trade_rate=0.5)
    assert (slots.traded == again.traded).all() and not slots.traded.all()
    open_, close = cal.window(date(2024, 1, 3))
    regular = (slots.ts >= open_.value) & (slots.ts < close.value)
    assert slots.traded[regular].all()
    # switching no-trade slots on never changes the bars that do trade
    plain = data.m15("AAPL", lo.value, hi.value, LATER)
    assert (plain.values[slots.traded] == slots.values[slots.traded]).all()

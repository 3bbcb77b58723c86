"""One rule for "which partitions need a fetch": `ensure-coverage` (store.gaps.requested_gaps with
GapPolicy.on_request()) and the gap sensor (find_gaps + select_gaps with the sensor's GapPolicy)
read the same ledger the same way. Every difference between their selections is a named policy
difference, asserted here with its reason. On SQLite and PostgreSQL."""

from datetime import timedelta

import pandas as pd
import pytest

from backfill_dagster.domain.gap_planning import select_gaps
from backfill_dagster.domain.gap_policy import GapPolicy, ledger_horizons, settled_sessions
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.store import CoverageEntry
from backfill_dagster.store.gaps import find_gaps, requested_gaps
from tests.conftest import utc

M15, H1 = Timeframe.M15, Timeframe.H1
POLICY = GapPolicy()  # settle 60 min, failed retried after 15 min, empty after 4 h, 3 empty attempts
# The last session of the ledger, 2024-12-13, closes at 21:00 UTC.
CLOSED_NOT_SETTLED = utc("2024-12-13 21:30")  # closed 30 min ago: inside the sensor's settle time
STILL_OPEN = utc("2024-12-13 17:00")  # noon in New York


def write(store, timeframe, symbol, sessions, *, at, bars=26, closed=True, source_fetched_at=None):
    entries = [CoverageEntry(symbol, d, bars, 26, closed, source_fetched_at) for d in sessions]
    store.replace_partitions(timeframe, store.read_bars(timeframe, []), entries, provider="demo",
                             adjustment="split", fetched_at=at, allow_fewer=True)


def calendar_closed(day, now):
    from backfill_dagster.domain.calendar import xnys
    return xnys().has_closed(day, now)


def ledger(store, days, now):
    """One symbol per ledger state; every other session of each symbol is complete."""
    today, old = days[-1], now - pd.Timedelta(hours=5)
    known = ("DONE", "FEW", "PART", "FAILOLD", "FAILNEW", "EMPTYOLD", "EMPTYNEW", "GONE", "TODAY")
    for symbol in known:
        write(store, M15, symbol, [d for d in days[:-1] if d != days[3]], at=old)
        # today as the schedules leave it: partial while open, final once fetched after the close
        if symbol != "TODAY":
            write(store, M15, symbol, [today], closed=calendar_closed(today, now), at=now - pd.Timedelta(minutes=1))
    write(store, M15, "DONE", [days[3]], at=old)
    write(store, M15, "FEW", [days[3]], bars=9, at=old)  # closed with fewer bars: covered
    write(store, M15, "PART", [days[3]], closed=False, at=old)  # fetched while open, closed since
    write(store, M15, "TODAY", [days[3]], at=old)
    write(store, M15, "TODAY", [today], closed=False, at=utc("2024-12-13 17:00"), bars=10)  # before the close
    mid = {(s, days[3]): "HTTP 500" for s in ("FAILOLD", "FAILNEW")}
    store.record_failures(M15, {k: v for k, v in mid.items() if k[0] == "FAILOLD"}, expected={days[3]: 26},
                          at=now - pd.Timedelta(hours=1))
    store.record_failures(M15, {k: v for k, v in mid.items() if k[0] == "FAILNEW"}, expected={days[3]: 26},
                          at=now - pd.Timedelta(minutes=5))
    store.record_refusals(M15, {("EMPTYOLD", days[3]): "no bars"}, expected={days[3]: 26}, at=old)
    store.record_refusals(M15, {("EMPTYNEW", days[3]): "no bars"}, expected={days[3]: 26},
                          at=now - pd.Timedelta(hours=1))
    for hours in (30, 20, 10):
        store.record_refusals(M15, {("GONE", days[3]): "no bars"}, expected={days[3]: 26},
                              at=now - pd.Timedelta(hours=hours))
    return ["DONE", "FEW", "PART", "FAILOLD", "FAILNEW", "EMPTYOLD", "EMPTYNEW", "GONE", "TODAY", "NEW"]


def sensor_selection(store, calendar, timeframe, symbols, days, now):
    """What the coverage_gaps sensor asks for over these symbols and sessions (its calls)."""
    settled = [d for d in settled_sessions(calendar, days[0], now, settle=POLICY.settle) if d <= days[-1]]
    wanted = {timeframe: settled}
    span = None if timeframe.is_fetched else (settled[0], settled[-1])
    return select_gaps(find_gaps(store.engine, symbols, ledger_horizons(wanted), span), wanted,
                       policy=POLICY, now=now)


@pytest.mark.parametrize("now", [CLOSED_NOT_SETTLED, STILL_OPEN], ids=["closed-not-settled", "still-open"])
def test_ensure_coverage_and_the_sensor_agree_but_for_the_named_policy(store, calendar, now):
    days = calendar.sessions("2024-12-02", "2024-12-13")
    today, mid = days[-1], days[3]
    symbols = ledger(store, days, now)
    open_now = [d for d in days if not calendar.has_closed(d, now)]
    assert open_now == ([today] if now == STILL_OPEN else [])

    cli = requested_gaps(store.engine, M15, symbols, days, policy=POLICY.on_request(), now=now, still_open=open_now)
    sensor = sensor_selection(store, calendar, M15, symbols, days, now)

    both = {("PART", mid), ("FAILOLD", mid), ("EMPTYOLD", mid), *(("NEW", d) for d in days[:-1])}
    assert sensor.partitions == both
    assert sensor.held == 2  # FAILNEW (15 min retry wait), EMPTYNEW (4 h retry wait)
    differences = cli.partitions - sensor.partitions
    assert not sensor.partitions - cli.partitions
    expected = {
        ("FAILNEW", mid),  # retry_failed_after: a request asks again at once
        ("EMPTYNEW", mid),  # retry_empty_after: a request asks again at once
        ("NEW", today),  # settle (or still open): a request asks for today's bars so far
    }
    if now == CLOSED_NOT_SETTLED:
        expected.add(("TODAY", today))  # partial, closed since: the sensor leaves it to the end-of-day schedule
    # Still open: TODAY's partial row is what the providers have now, for neither of them a gap.
    assert differences == expected
    assert cli.held == 0
    # Left alone by both: every provider answered no bars for GONE three times.
    assert cli.exhausted == sensor.exhausted == 1
    assert ("GONE", mid) not in cli.partitions
    # Never a gap: complete, and complete with fewer bars than the grid.
    assert not {p for p in cli.partitions if p[0] in ("DONE", "FEW")}


def test_stale_and_underived_h1_are_gaps_for_both(store, calendar):
    days = calendar.sessions("2024-12-02", "2024-12-06")
    now = utc("2024-12-10 12:00")
    at = utc("2024-12-07 12:00")
    write(store, M15, "AAPL", days, at=at)
    write(store, H1, "AAPL", days, bars=7, at=at, source_fetched_at=at.to_pydatetime())
    write(store, M15, "AAPL", [days[1]], at=utc("2024-12-08 12:00"))  # m15 fetched again: h1 stale
    write(store, M15, "MSFT", days, at=at)  # m15 alone: h1 to derive, no fetch
    write(store, H1, "MSFT", days[:-1], bars=7, at=at, source_fetched_at=at.to_pydatetime())
    symbols = ["AAPL", "MSFT"]

    cli = requested_gaps(store.engine, H1, symbols, days, policy=POLICY.on_request(), now=now)
    sensor = sensor_selection(store, calendar, H1, symbols, days, now)
    assert cli.derived == sensor.derived == {("AAPL", days[1]), ("MSFT", days[-1])}
    assert not cli.intraday and not sensor.intraday  # m15 is stored: derive only, no provider call


def test_an_h1_row_left_empty_by_m15_turns_stale_once_m15_has_bars(store, calendar):
    day = calendar.sessions("2024-12-02", "2024-12-02")[0]
    now = utc("2024-12-10 12:00")
    store.record_refusals(M15, {("AAPL", day): "no bars"}, expected={day: 26}, at=utc("2024-12-03 12:00"))
    store.record_refusals(H1, {("AAPL", day): "m15 had no bars"}, expected={day: 7}, at=utc("2024-12-03 12:00"))
    for selection in (requested_gaps(store.engine, H1, ["AAPL"], [day], policy=POLICY.on_request(), now=now),
                      sensor_selection(store, calendar, H1, ["AAPL"], [day], now)):
        assert not selection.partitions  # empty h1 follows its m15 (asked for as m15)
    write(store, M15, "AAPL", [day], at=utc("2024-12-09 12:00"))  # e.g. ensure-coverage --timeframe m15
    for selection in (requested_gaps(store.engine, H1, ["AAPL"], [day], policy=POLICY.on_request(), now=now),
                      sensor_selection(store, calendar, H1, ["AAPL"], [day], now)):
        assert selection.derived == {("AAPL", day)}


def test_the_request_policy_drops_only_the_waits():
    policy = GapPolicy(empty_attempts=5, settle=timedelta(minutes=90))
    request = policy.on_request()
    assert (request.settle, request.retry_failed_after, request.retry_empty_after) == (timedelta(0),) * 3
    assert request.empty_attempts == 5 and request.history_days == policy.history_days

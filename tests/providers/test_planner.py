"""The planner: a box of partitions becomes the fewest requests the provider allows."""

from datetime import date

from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers.base import Adjustment, Capabilities
from backfill_dagster.providers.planner import plan_requests
from tests.conftest import THANKSGIVING_WEEK, utc

SINGLE = Capabilities(timeframes=frozenset(Timeframe), adjustments=frozenset(Adjustment))
MULTI = Capabilities(timeframes=frozenset(Timeframe), adjustments=frozenset(Adjustment), max_symbols_per_request=2)
WINDOWED = Capabilities(timeframes=frozenset(Timeframe), adjustments=frozenset(Adjustment), max_sessions_per_request=3)


def box(symbols, sessions):
    return [(s, d) for s in symbols for d in sessions]


def test_one_request_per_symbol_over_a_holiday(calendar):
    requests = plan_requests(box(["AAPL", "MSFT"], THANKSGIVING_WEEK), Timeframe.M15, SINGLE, calendar)
    assert [(r.symbols, r.sessions) for r in requests] == [
        (("AAPL",), tuple(THANKSGIVING_WEEK)),
        (("MSFT",), tuple(THANKSGIVING_WEEK)),
    ]
    assert requests[0].start == utc("2024-11-25 14:30") and requests[0].end == utc("2024-11-29 18:00")


def test_symbols_batched_up_to_the_provider_limit(calendar):
    requests = plan_requests(box(["A", "B", "C"], THANKSGIVING_WEEK), Timeframe.M15, MULTI, calendar)
    assert [r.symbols for r in requests] == [("A", "B"), ("C",)]
    assert all(r.sessions == tuple(THANKSGIVING_WEEK) for r in requests)


def test_gaps_split_runs_and_windows_cap_them(calendar):
    sessions = calendar.sessions("2024-11-18", "2024-11-27") + [date(2024, 12, 3)]
    requests = plan_requests(box(["A"], sessions), Timeframe.M15, WINDOWED, calendar)
    assert [len(r.sessions) for r in requests] == [3, 3, 2, 1]
    assert requests[-1].sessions == (date(2024, 12, 3),)


def test_request_bounds_for_d1_and_extended_hours(calendar):
    d1 = plan_requests(box(["A"], THANKSGIVING_WEEK), Timeframe.D1, SINGLE, calendar)[0]
    assert d1.start == utc("2024-11-25 05:00") and d1.end == utc("2024-11-30 05:00")
    ext = plan_requests(box(["A"], THANKSGIVING_WEEK), Timeframe.M15, SINGLE, calendar, extended=True)[0]
    assert ext.start == utc("2024-11-25 09:00") and ext.end == utc("2024-11-29 22:00") and ext.extended


def test_every_partition_is_covered_exactly_once(calendar):
    sessions = calendar.sessions("2024-01-01", "2024-03-31")
    partitions = box(["A", "B", "C", "D", "E"], sessions[::2]) + box(["F"], sessions)
    requests = plan_requests(partitions, Timeframe.M15, MULTI, calendar)
    covered = [p for r in requests for p in r.partitions]
    assert sorted(covered) == sorted(partitions)


def test_the_window_can_differ_by_timeframe(calendar):
    per_timeframe = Capabilities(
        timeframes=frozenset(Timeframe), adjustments=frozenset(Adjustment),
        max_sessions_per_request={Timeframe.M15: 3, Timeframe.D1: 10},
    )
    sessions = calendar.sessions("2024-11-18", "2024-11-27")  # 8 sessions
    assert [len(r.sessions) for r in plan_requests(box(["A"], sessions), Timeframe.M15, per_timeframe, calendar)] == [3, 3, 2]
    assert [len(r.sessions) for r in plan_requests(box(["A"], sessions), Timeframe.D1, per_timeframe, calendar)] == [8]
    assert [len(r.sessions) for r in plan_requests(box(["A"], sessions), Timeframe.H1, per_timeframe, calendar)] == [8]


def test_alpaca_asks_two_years_of_one_symbols_d1_in_one_request(calendar):
    from backfill_dagster.providers.alpaca import MAX_SESSIONS

    alpaca = Capabilities(timeframes=frozenset(Timeframe), adjustments=frozenset(Adjustment),
                          max_symbols_per_request=100, max_sessions_per_request=MAX_SESSIONS)
    sessions = calendar.sessions("2024-01-02", "2025-12-31")  # 502 sessions
    assert len(plan_requests(box(["A"], sessions), Timeframe.D1, alpaca, calendar)) == 1
    assert len(plan_requests(box(["A"], sessions), Timeframe.M15, alpaca, calendar)) == 2

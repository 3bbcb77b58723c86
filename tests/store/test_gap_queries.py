"""The gap sensor's ledger queries, on SQLite and PostgreSQL, against ledgers written by the store."""

from datetime import date

import sqlalchemy as sa

from backfill_dagster.domain.gap_planning import Gap, GapReason
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.store import CoverageEntry
from backfill_dagster.store.gaps import find_gaps, open_gaps, row_counts, uncovered_sessions
from tests.conftest import utc

M15, H1, D1 = Timeframe.M15, Timeframe.H1, Timeframe.D1
AT = utc("2024-12-09 12:00")


def covered(store, timeframe, symbol, sessions, *, bars=26, closed=True, at=AT, source_fetched_at=None):
    entries = [CoverageEntry(symbol, d, bars, 26, closed, source_fetched_at) for d in sessions]
    store.replace_partitions(timeframe, store.read_bars(timeframe, []), entries, provider="demo",
                             adjustment="split", fetched_at=at, allow_fewer=True)


def test_find_gaps_reports_missing_partial_and_failed_only(store, calendar):
    days = calendar.sessions("2024-11-25", "2024-12-06")  # 9 sessions, Thanksgiving skipped
    covered(store, M15, "AAPL", days)
    covered(store, M15, "AAPL", [days[1]], bars=9)  # closed with fewer bars: covered, not a gap
    covered(store, M15, "MSFT", days[:-2])
    covered(store, M15, "MSFT", [days[-2]], closed=False, at=utc("2024-12-05 18:00"))  # partial
    store.record_failures(M15, {("AAPL", days[3]): "HTTP 500"}, expected={days[3]: 26}, at=AT)
    covered(store, M15, "GONE", days[:2])  # no longer on the watchlist: ignored
    covered(store, D1, "AAPL", days)  # another timeframe: not asked for

    gaps = find_gaps(store.engine, ["AAPL", "MSFT", "NEW"], {M15: days})
    assert set(gaps) == {M15}
    found = {p: g.reason for p, g in gaps[M15].items()}
    assert found == {
        ("AAPL", days[3]): GapReason.FAILED,
        ("MSFT", days[-2]): GapReason.PARTIAL,
        ("MSFT", days[-1]): GapReason.MISSING,
        **{("NEW", d): GapReason.MISSING for d in days},
    }
    assert gaps[M15][("AAPL", days[3])].stamp == AT.to_pydatetime()
    assert gaps[M15][("MSFT", days[-2])].stamp == utc("2024-12-05 18:00").to_pydatetime()
    assert gaps[M15][("NEW", days[0])] == Gap(GapReason.MISSING)


def test_horizon_bounds_every_query(store, calendar):
    days = calendar.sessions("2024-11-25", "2024-12-06")
    covered(store, M15, "AAPL", days[2:])
    store.record_failures(M15, {("AAPL", days[0]): "old failure"}, expected={days[0]: 26}, at=AT)
    horizon = days[4:]
    assert row_counts(store.engine, {M15: (horizon[0], horizon[-1])}) == {M15: {"AAPL": len(horizon)}}
    assert open_gaps(store.engine, {M15: (horizon[0], horizon[-1])}) == {M15: {}}
    assert find_gaps(store.engine, ["AAPL"], {M15: horizon}) == {M15: {}}
    assert find_gaps(store.engine, ["AAPL"], {M15: days})[M15].keys() == {("AAPL", days[0]), ("AAPL", days[1])}


def test_uncovered_sessions_after_rows_deleted_behind_the_systems_back(store, calendar):
    days = calendar.sessions("2024-11-25", "2024-12-06")
    for symbol in ("AAPL", "MSFT"):
        covered(store, D1, symbol, days)
    assert uncovered_sessions(store.engine, D1, ["AAPL", "MSFT"], days) == {}
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM bar_coverage WHERE symbol = 'MSFT' AND session IN (:a, :b)"),
                     {"a": days[2], "b": days[5]})
    assert uncovered_sessions(store.engine, D1, ["AAPL", "MSFT"], days) == {"MSFT": [days[2], days[5]]}
    assert uncovered_sessions(store.engine, D1, [], days) == {}
    # A symbol with no row at all: every session.
    assert uncovered_sessions(store.engine, D1, ["NVDA"], days[:3]) == {"NVDA": days[:3]}


def test_find_gaps_on_an_empty_ledger_and_empty_horizon(store, calendar):
    days = calendar.sessions("2024-12-02", "2024-12-03")
    assert find_gaps(store.engine, ["AAPL"], {D1: days, M15: []}) == {
        D1: {("AAPL", d): Gap(GapReason.MISSING) for d in days},
        M15: {},
    }
    assert find_gaps(store.engine, [], {D1: days}) == {D1: {}}


def test_a_failure_after_a_success_is_still_a_gap(store, calendar):
    day = date(2024, 12, 2)
    covered(store, D1, "AAPL", [day])
    store.record_failures(D1, {("AAPL", day): "timeout"}, expected={day: 1}, at=utc("2024-12-09 13:00"))
    (gap,) = find_gaps(store.engine, ["AAPL"], {D1: [day]})[D1].values()
    assert gap.reason is GapReason.FAILED


def test_empty_rows_come_back_with_their_attempts(store, calendar):
    day = date(2024, 12, 2)
    for i in range(2):
        store.record_refusals(D1, {("AAPL", day): "x answered no bars"}, expected={day: 1}, at=utc(f"2024-12-0{3 + i} 12:00"))
    (gap,) = find_gaps(store.engine, ["AAPL"], {D1: [day]})[D1].values()
    assert (gap.reason, gap.attempts, gap.stamp) == (GapReason.EMPTY, 2, utc("2024-12-04 12:00").to_pydatetime())


def test_h1_derived_from_an_m15_fetch_since_replaced_is_stale(store, calendar):
    days = calendar.sessions("2024-12-02", "2024-12-04")
    span = (days[0], days[-1])
    covered(store, M15, "AAPL", days, at=AT)
    covered(store, H1, "AAPL", days, bars=7, source_fetched_at=AT.to_pydatetime())
    assert find_gaps(store.engine, ["AAPL"], {H1: days, M15: days}, span) == {H1: {}, M15: {}, Timeframe.H4: {
        ("AAPL", d): Gap(GapReason.MISSING) for d in days}}
    covered(store, M15, "AAPL", [days[1]], at=utc("2024-12-10 12:00"))  # m15 fetched again
    gaps = find_gaps(store.engine, ["AAPL"], {H1: days, M15: days}, span)
    assert {p: g.reason for p, g in gaps[H1].items()} == {("AAPL", days[1]): GapReason.STALE}
    assert gaps[M15] == {}


def test_m15_stored_alone_beyond_every_horizon_is_derived(store, calendar):
    old = calendar.sessions("2024-03-01", "2024-03-05")  # far beyond the h1/h4 horizons below
    recent = calendar.sessions("2024-12-02", "2024-12-04")
    covered(store, M15, "AAPL", old)
    store.record_failures(M15, {("MSFT", old[0]): "HTTP 500"}, expected={old[0]: 26}, at=AT)  # not stored: no
    gaps = find_gaps(store.engine, ["AAPL", "MSFT"], {H1: recent}, (old[0], recent[-1]))
    assert {p for p, g in gaps[H1].items() if g.reason is GapReason.MISSING} >= {("AAPL", d) for d in old}
    assert not any(p[0] == "MSFT" and p[1] in old for p in gaps[H1])
    assert set(gaps[Timeframe.H4]) == {("AAPL", d) for d in old}

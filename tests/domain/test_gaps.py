"""Gap planning, pure: horizons, what counts as a gap to chase, and how gaps become range boxes."""

from datetime import date, timedelta

import pandas as pd
import pytest

from backfill_dagster.domain.gap_planning import Gap, GapReason, InFlight, RunKind, plan_gap_runs
from backfill_dagster.domain.gap_policy import (
    DEFAULT_HISTORY_DAYS,
    GapPolicy,
    GapPolicyError,
    closed_horizons,
    horizons,
    ledger_horizons,
    settled_sessions,
)
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.settings import Settings

M15, H1, H4, D1 = Timeframe.M15, Timeframe.H1, Timeframe.H4, Timeframe.D1
MISSING = Gap(GapReason.MISSING)
HISTORY_START = date(2024, 1, 1)
# Friday 2024-12-06 at 20:00 New York: the 06th closed at 16:00 and has settled.
NOW = pd.Timestamp("2024-12-06 20:00", tz="America/New_York")
SMALL = {M15: 7, H1: 10, H4: 10, D1: 14}


def ny(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="America/New_York")


def policy(**overrides) -> GapPolicy:
    return GapPolicy(history_days=overrides.pop("history_days", SMALL), **overrides)


def missing(symbols, sessions) -> dict:
    return {(s, d): MISSING for s in symbols for d in sessions}


def plan(gaps, pol=None, order=("AAPL", "MSFT", "NVDA"), now=NOW, **kw):
    pol = pol or policy()
    wanted = horizons(pol, _calendar(), now, HISTORY_START)
    return plan_gap_runs(gaps, wanted, list(order), policy=pol, now=now, **kw), wanted


def _calendar():
    from backfill_dagster.domain.calendar import xnys

    return xnys()


# ------------------------------------------------------------------------------------ policy
def test_policy_defaults_are_the_seeds_windows():
    assert GapPolicy().history_days == DEFAULT_HISTORY_DAYS == {M15: 30, H1: 90, H4: 90, D1: 365}


def test_policy_refuses_incomplete_history_days():
    with pytest.raises(GapPolicyError, match="no value for h4, d1"):
        GapPolicy(history_days={M15: 1, H1: 1})


# ------------------------------------------------------------------------------------ horizons
def test_settled_sessions_wait_for_close_plus_settle_and_early_closes(calendar):
    first = date(2024, 11, 25)
    settle = timedelta(minutes=60)
    # Day after Thanksgiving closes at 13:00: settled from 14:00, not at 13:59.
    assert settled_sessions(calendar, first, ny("2024-11-29 13:59"), settle=settle)[-1] == date(2024, 11, 27)
    assert settled_sessions(calendar, first, ny("2024-11-29 14:00"), settle=settle)[-1] == date(2024, 11, 29)
    # Extended hours end at 17:00 after an early close.
    assert settled_sessions(calendar, first, ny("2024-11-29 17:30"), settle=settle, extended=True)[-1] == date(2024, 11, 27)
    # A weekend: Friday is the newest; Thanksgiving is never a session.
    days = settled_sessions(calendar, first, ny("2024-11-30 09:00"))
    assert days == [date(2024, 11, 25), date(2024, 11, 26), date(2024, 11, 27), date(2024, 11, 29)]


def test_horizons_per_timeframe_never_before_history_start(calendar):
    pol = policy(history_days={M15: 7, H1: 10, H4: 10, D1: 400})
    wanted = horizons(pol, calendar, NOW, date(2024, 11, 20))
    assert wanted[M15] == calendar.sessions("2024-11-29", "2024-12-06")  # 7 days back: from the 29th
    assert wanted[H1] == wanted[H4] == calendar.sessions("2024-11-26", "2024-12-06")
    assert wanted[D1][0] == date(2024, 11, 20)  # clamped to the history start
    # Before today's close + settle, today is the schedules' session, not the sensor's.
    assert horizons(pol, calendar, ny("2024-12-06 16:30"), HISTORY_START)[M15][-1] == date(2024, 12, 5)
    assert ledger_horizons(wanted)[M15] == wanted[H1]  # m15 read wherever h1/h4 need it


# ------------------------------------------------------------------------------------ planning
def test_new_adjacent_symbols_share_one_box_per_kind_newest_first(calendar):
    pol = policy()
    wanted = horizons(pol, calendar, NOW, HISTORY_START)
    read = ledger_horizons(wanted)  # what the sensor reads: m15 over h1/h4's horizon too
    gaps = {t: missing(["AAPL", "MSFT"], read[t]) for t in Timeframe}
    result, _ = plan(gaps)
    kinds = [(b.kind, b.symbols, b.sessions[0], b.sessions[-1]) for b in result.boxes]
    assert kinds == [
        (RunKind.INTRADAY, ("AAPL", "MSFT"), wanted[H1][0], date(2024, 12, 6)),
        (RunKind.DAILY, ("AAPL", "MSFT"), wanted[D1][0], date(2024, 12, 6)),
    ]
    assert result.boxes[0].reasons == {"m15 missing": 2 * len(wanted[H1]), "h1 missing": 2 * len(wanted[H1]),
                                       "h4 missing": 2 * len(wanted[H1])}
    assert result.gaps[M15] == {GapReason.MISSING: 2 * len(wanted[M15])}


def test_symbols_not_adjacent_in_partition_order_get_separate_boxes():
    sessions = [date(2024, 12, 5)]
    result, _ = plan({D1: missing(["AAPL", "NVDA"], sessions)})
    assert [b.symbols for b in result.boxes] == [("AAPL",), ("NVDA",)]
    # The partitions' order decides, not the alphabet.
    result, _ = plan({D1: missing(["AAPL", "NVDA"], sessions)}, order=("MSFT", "AAPL", "NVDA"))
    assert [b.symbols for b in result.boxes] == [("AAPL", "NVDA")]


def test_long_ranges_are_chunked_newest_first_and_capped_per_tick(calendar):
    pol = policy(history_days={**SMALL, D1: 60}, max_sessions_per_run=10, max_runs_per_tick=2)
    wanted = horizons(pol, calendar, NOW, HISTORY_START)
    result, _ = plan({D1: missing(["AAPL"], wanted[D1])}, pol)
    assert [b.sessions[-1] for b in result.boxes] == [wanted[D1][-1], wanted[D1][-11]]
    assert [len(b.sessions) for b in result.boxes] == [10, 10]
    assert [b.age for b in result.boxes] == [0, 10]
    assert result.later == len(range(0, len(wanted[D1]), 10)) - 2
    assert "requesting 2 run(s)" in result.summary() and f"{result.later} more run(s)" in result.summary()


def test_box_size_is_bounded_by_max_partitions(calendar):
    symbols = [f"S{i}" for i in range(10)]
    pol = policy(max_partitions_per_run=8)
    day = date(2024, 12, 5)
    result, _ = plan({D1: missing(symbols, [day, date(2024, 12, 6)])}, pol, order=symbols)
    assert [len(b.symbols) for b in result.boxes] == [4, 4, 2]
    assert all(b.size <= 8 for b in result.boxes)


def test_asset_partitions_per_tick_bound_what_one_tick_requests(calendar):
    # 500 new symbols must not make one tick create runs for a million asset partitions: the
    # daemon creates them inside the tick. Boxes go newest first until the budget is spent.
    symbols = [f"S{i}" for i in range(6)]
    days = [date(2024, 12, 4), date(2024, 12, 5), date(2024, 12, 6)]
    gaps = {t: missing(symbols, days) for t in (M15, H1, H4)}
    unbounded, _ = plan(gaps, policy(max_partitions_per_run=6, max_runs_per_tick=10), order=symbols)
    # 3 boxes of 2 symbols x 3 sessions x 3 assets (m15, h1, h4) = 18 asset partitions each.
    assert [b.size * len(b.kind.timeframes) for b in unbounded.boxes] == [18, 18, 18]
    bounded, _ = plan(gaps, policy(max_partitions_per_run=6, max_runs_per_tick=10,
                                   max_asset_partitions_per_tick=40), order=symbols)
    assert bounded.boxes == unbounded.boxes[:2] and bounded.later == 1
    assert "1 more run(s) left for later ticks" in bounded.summary()
    # A box larger than the budget still goes, alone: the sensor never stalls.
    alone, _ = plan(gaps, policy(max_partitions_per_run=6, max_asset_partitions_per_tick=5), order=symbols)
    assert alone.boxes == unbounded.boxes[:1] and alone.later == 2
    assert Settings.from_env({"BACKFILL_GAP_MAX_ASSET_PARTITIONS_PER_TICK": "500"}).gap_policy.max_asset_partitions_per_tick == 500
    with pytest.raises(GapPolicyError, match="max_asset_partitions_per_tick"):
        GapPolicy(max_asset_partitions_per_tick=0)


def test_in_flight_partitions_are_not_requested_again():
    day = date(2024, 12, 5)
    busy = InFlight()
    busy.add([M15, H1, H4], ["AAPL"], date(2024, 12, 2), date(2024, 12, 5))
    gaps = {t: missing(["AAPL", "MSFT"], [day]) for t in (M15, H1, H4)}
    result, _ = plan(gaps, in_flight=busy)
    assert [(b.kind, b.symbols) for b in result.boxes] == [(RunKind.INTRADAY, ("MSFT",))]
    assert result.in_flight == 3
    # The sensor's own unfinished runs count against its limit.
    result, _ = plan(gaps, policy(max_runs_in_flight=4), own_runs_in_flight=4)
    assert result.boxes == [] and result.later == 1


def test_failed_partitions_wait_for_their_retry_delay():
    day = date(2024, 12, 5)
    recent = Gap(GapReason.FAILED, (NOW - timedelta(minutes=5)).to_pydatetime())
    old = Gap(GapReason.FAILED, (NOW - timedelta(hours=2)).to_pydatetime())
    result, _ = plan({D1: {("AAPL", day): recent, ("MSFT", day): old}})
    assert [b.symbols for b in result.boxes] == [("MSFT",)]
    assert result.held == 1 and "1 failed or empty partition(s) waiting" in result.summary()


def test_derived_gaps_ride_with_m15_or_derive_alone():
    day, old_day = date(2024, 12, 5), date(2024, 11, 27)  # old_day: inside h1's horizon, not m15's
    partial = Gap(GapReason.PARTIAL, (NOW - timedelta(days=1)).to_pydatetime())
    gaps = {
        M15: {("AAPL", old_day): MISSING},  # read beyond m15's own horizon (ledger_horizons)
        H1: {("AAPL", old_day): MISSING, ("MSFT", day): partial},
        H4: {("MSFT", day): partial},
    }
    result, _ = plan(gaps)
    got = {(b.kind, b.symbols, b.sessions) for b in result.boxes}
    assert got == {
        (RunKind.DERIVED, ("MSFT",), (day,)),  # m15 covered: derive only, no provider call
        (RunKind.INTRADAY, ("AAPL",), (old_day,)),  # m15 missing: fetched with its h1/h4
    }
    # m15 outside its own horizon and without an h1/h4 gap is not chased.
    result, _ = plan({M15: {("AAPL", old_day): MISSING}})
    assert result.boxes == [] and result.total_gaps == 0


def test_run_keys_are_deterministic_and_follow_the_ledger_state():
    day = date(2024, 12, 5)
    first, _ = plan({D1: missing(["AAPL"], [day])})
    again, _ = plan({D1: missing(["AAPL"], [day])}, now=NOW + timedelta(minutes=30))
    assert first.boxes[0].run_key == again.boxes[0].run_key
    assert first.boxes[0].run_key.startswith("gaps:daily:2024-12-05..2024-12-05:AAPL..AAPL:")
    failed = Gap(GapReason.FAILED, (NOW - timedelta(hours=1)).to_pydatetime())
    changed, _ = plan({D1: {("AAPL", day): failed}})
    assert changed.boxes[0].run_key != first.boxes[0].run_key
    # A new day gives a box whose run died without writing anything one more chance.
    next_day, _ = plan({D1: missing(["AAPL"], [day])}, now=ny("2024-12-07 09:00"))
    assert next_day.boxes[0].run_key != first.boxes[0].run_key


def test_no_gaps_summary():
    result, _ = plan({})
    assert result.boxes == [] and result.summary() == "no gaps: every partition in the horizon is covered"


def test_closed_horizons_run_from_their_days_back_to_the_last_close(calendar):
    # m15, 7 days back from Fri 12-06: 11-29 (early close) and 12-02..06; h1, 10 days back: 11-26, 27,
    # 29 and 12-02..06.
    got = closed_horizons(policy(), calendar, NOW, HISTORY_START)
    assert got[Timeframe.M15].start == date(2024, 11, 29) and len(got[Timeframe.M15].sessions) == 6
    assert len(got[Timeframe.H1].sessions) == 8
    # While the 6th is open it is not due yet; nor are sessions before the partitions' start.
    assert len(closed_horizons(policy(), calendar, ny("2024-12-06 12:00"), HISTORY_START)[Timeframe.M15].sessions) == 5
    assert closed_horizons(policy(), calendar, NOW, date(2024, 12, 4))[Timeframe.H1].sessions == calendar.sessions(
        date(2024, 12, 4), date(2024, 12, 6))


def test_missing_sessions_split_at_the_horizon_start(calendar):
    horizon = closed_horizons(policy(), calendar, NOW, HISTORY_START)[Timeframe.M15]  # from 11-29
    closed = calendar.sessions(date(2024, 11, 25), date(2024, 12, 6))
    missing = [date(2024, 11, 26), date(2024, 11, 27), date(2024, 11, 29), date(2024, 12, 2), date(2024, 12, 5)]
    assert horizon.split(missing, closed) == [
        ([date(2024, 11, 26), date(2024, 11, 27)], False),
        ([date(2024, 11, 29), date(2024, 12, 2)], True),
        ([date(2024, 12, 5)], True),
    ]
    assert horizon.split([], closed) == []


def test_empty_sessions_are_rechecked_a_bounded_number_of_times():
    day = date(2024, 12, 5)

    def empty(attempts, hours_ago):
        return Gap(GapReason.EMPTY, (NOW - timedelta(hours=hours_ago)).to_pydatetime(), attempts)

    gaps = {D1: {("AAPL", day): empty(1, 5), ("MSFT", day): empty(2, 1), ("NVDA", day): empty(3, 50)}}
    result, _ = plan(gaps)
    assert [b.symbols for b in result.boxes] == [("AAPL",)]  # due again
    assert result.held == 1  # MSFT: asked an hour ago
    assert result.exhausted == 1  # NVDA: three answers without bars, left alone, and said so
    assert "1 empty partition(s) left alone after every provider answered without bars" in result.summary()
    # An h1 gap whose m15 is empty and exhausted does not fetch m15 again through the back door.
    result, _ = plan({M15: {("NVDA", day): empty(3, 50)}, H1: {("NVDA", day): MISSING}})
    assert result.boxes == [] and result.waiting_for_m15 == 1


def test_stale_derived_bars_are_derived_again_without_a_fetch():
    day = date(2024, 12, 5)
    stale = Gap(GapReason.STALE, (NOW - timedelta(days=1)).to_pydatetime())
    result, _ = plan({H1: {("AAPL", day): stale}, H4: {("AAPL", day): stale}})
    assert [(b.kind, b.symbols, b.sessions) for b in result.boxes] == [(RunKind.DERIVED, ("AAPL",), (day,))]

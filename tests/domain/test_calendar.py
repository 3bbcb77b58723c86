"""The session calendar against exchange_calendars and the known NYSE facts (providers.md §6)."""

from datetime import date
from importlib.metadata import version

import exchange_calendars as xcals
import numpy as np
import pandas as pd
import pytest

from backfill_dagster.domain.calendar import (
    NEW_YORK,
    NotASessionError,
    SessionCalendar,
    SessionNotOpenError,
    contiguous_runs,
    session_schedule,
)
from backfill_dagster.domain.timeframes import Timeframe
from tests.conftest import utc

HOLIDAYS = {
    2024: ["01-01", "01-15", "02-19", "03-29", "05-27", "06-19", "07-04", "09-02", "11-28", "12-25"],
    2025: ["01-01", "01-09", "01-20", "02-17", "04-18", "05-26", "06-19", "07-04", "09-01", "11-27", "12-25"],
    2026: ["01-01", "01-19", "02-16", "04-03", "05-25", "06-19", "07-03", "09-07", "11-26", "12-25"],
}
EARLY_CLOSES = ["2024-07-03", "2024-11-29", "2024-12-24", "2025-07-03", "2025-11-28", "2025-12-24", "2026-11-27", "2026-12-24"]


def test_sessions_equal_exchange_calendars(calendar):
    reference = xcals.get_calendar("XNYS", start="2023-12-01", end="2026-12-31")
    expected = [d.date() for d in reference.sessions_in_range("2024-01-01", "2026-12-31")]
    assert calendar.sessions("2024-01-01", "2026-12-31") == expected


@pytest.mark.parametrize("year", sorted(HOLIDAYS))
def test_holidays_are_weekdays_without_session(calendar, year):
    expected = [date.fromisoformat(f"{year}-{md}") for md in HOLIDAYS[year]]
    assert calendar.holidays(date(year, 1, 1), date(year, 12, 31)) == expected


@pytest.mark.parametrize("day", EARLY_CLOSES)
def test_early_closes_end_at_13(calendar, day):
    d = date.fromisoformat(day)
    assert calendar.is_early_close(d)
    assert calendar.close(d).tz_convert("America/New_York").strftime("%H:%M") == "13:00"
    assert calendar.expected_counts([d], Timeframe.M15)[0] == 14


def test_regular_session_hours_across_dst(calendar):
    # EDT before the change, EST after: 09:30 local is 13:30Z then 14:30Z.
    assert calendar.open(date(2024, 11, 1)) == utc("2024-11-01 13:30")
    assert calendar.open(date(2024, 11, 4)) == utc("2024-11-04 14:30")
    assert calendar.close(date(2024, 11, 4)) == utc("2024-11-04 21:00")
    assert not calendar.is_early_close(date(2024, 11, 4))


@pytest.mark.parametrize(
    "day, why",
    [
        ("2024-11-28", "NYSE holiday: Thanksgiving"),
        ("2025-01-09", "ad-hoc closure"),
        ("2025-01-11", "a Saturday"),
        ("2025-01-12", "a Sunday"),
    ],
)
def test_non_sessions_are_refused_with_the_reason(calendar, day, why):
    assert not calendar.is_session(day)
    with pytest.raises(NotASessionError, match=why):
        calendar.require_session(day)


def test_not_a_date_is_refused(calendar):
    with pytest.raises(NotASessionError, match="not a date"):
        calendar.require_session("2024-13-01")


@pytest.mark.parametrize("period", ["1h", "4h", "15min"])
def test_regular_grid_equals_trading_index_force(calendar, period):
    reference = xcals.get_calendar("XNYS", start="2023-12-01", end="2026-12-31")
    timeframe = {"1h": Timeframe.H1, "4h": Timeframe.H4, "15min": Timeframe.M15}[period]
    sessions = calendar.sessions("2024-01-01", "2026-06-30")
    ours = calendar.expected_bars(sessions, timeframe)
    theirs = reference.trading_index("2024-01-01", "2026-06-30", period, force=True)
    assert list(ours["ts"]) == list(theirs.left)


def test_h1_and_h4_grids_are_session_anchored(calendar):
    h1 = calendar.expected_bars([date(2024, 11, 4)], Timeframe.H1)["ts"].dt.tz_convert("America/New_York")
    assert [t.strftime("%H:%M") for t in h1] == ["09:30", "10:30", "11:30", "12:30", "13:30", "14:30", "15:30"]
    h4_early = calendar.expected_bars([date(2024, 11, 29)], Timeframe.H4)["ts"]
    assert list(h4_early) == [utc("2024-11-29 14:30")]


def test_extended_hours_segments(calendar):
    d = date(2024, 12, 2)
    h4 = calendar.expected_bars([d], Timeframe.H4, extended=True)["ts"].dt.tz_convert("America/New_York")
    assert [t.strftime("%H:%M") for t in h4] == ["04:00", "08:00", "09:30", "13:30", "16:00"]
    assert calendar.expected_counts([d], Timeframe.M15, extended=True)[0] == 64
    # Early close: post-market ends 17:00.
    assert calendar.window(date(2024, 11, 29), extended=True)[1] == utc("2024-11-29 22:00")


def test_d1_label_is_new_york_midnight(calendar):
    assert calendar.expected_bars([date(2024, 7, 1)], Timeframe.D1)["ts"].iloc[0] == utc("2024-07-01 04:00")
    assert calendar.expected_bars([date(2024, 12, 2)], Timeframe.D1)["ts"].iloc[0] == utc("2024-12-02 05:00")


def test_locate_buckets_and_membership(calendar):
    ts = pd.Series(pd.to_datetime(["2024-11-04 14:45Z", "2024-11-04 20:59Z", "2024-11-04 12:00Z", "2024-11-28 15:00Z"]))
    located = calendar.locate(ts, Timeframe.H1)
    assert list(located["inside"]) == [True, True, False, False]
    assert located["bucket"].iloc[1] == utc("2024-11-04 20:30")
    assert located["session"].iloc[3] is None
    extended = calendar.locate(ts, Timeframe.H1, extended=True)
    assert extended["inside"].iloc[2] and extended["bucket"].iloc[2] == utc("2024-11-04 12:00")


def test_session_opening_and_refusal(calendar):
    d = date(2024, 11, 29)
    before = utc("2024-11-29 14:00")
    assert not calendar.has_opened(d, before)
    with pytest.raises(SessionNotOpenError, match="has not opened yet"):
        calendar.require_opened(d, before)
    assert calendar.has_opened(d, utc("2024-11-29 14:30"))
    assert not calendar.has_closed(d, utc("2024-11-29 17:59"))
    assert calendar.has_closed(d, utc("2024-11-29 18:00"))


def test_recent_sessions_only_closed(calendar):
    # Saturday after Thanksgiving week: the last closed session is the early-close Friday.
    assert calendar.recent_sessions(2, utc("2024-11-30 12:00")) == [date(2024, 11, 27), date(2024, 11, 29)]
    # During Friday's session, Friday has not closed yet.
    assert calendar.recent_sessions(1, utc("2024-11-29 15:00")) == [date(2024, 11, 27)]


def test_contiguous_runs_skip_only_non_sessions(calendar):
    runs = contiguous_runs([date(2024, 11, 27), date(2024, 11, 29), date(2024, 12, 3), date(2024, 11, 26)], calendar)
    assert runs == [[date(2024, 11, 26), date(2024, 11, 27), date(2024, 11, 29)], [date(2024, 12, 3)]]


def test_naive_now_is_refused(calendar):
    with pytest.raises(ValueError, match="timezone-aware"):
        calendar.has_opened(date(2024, 11, 29), pd.Timestamp("2024-11-29 15:00"))


def test_served_hours_run_to_20_00_on_half_days(calendar):
    half = date(2024, 11, 29)
    lo, hi = calendar.served_window(half)
    assert (lo.tz_convert(NEW_YORK).hour, hi.tz_convert(NEW_YORK).hour) == (4, 20)
    assert calendar.window(half, extended=True)[1].tz_convert(NEW_YORK).hour == 17
    assert [s.name for s in calendar.segments(half, served=True)] == ["pre", "regular", "post"]
    # 04:00-09:30 (22 bars), 09:30-13:00 (14), 13:00-20:00 (28)
    assert calendar.expected_counts([half], Timeframe.M15, served=True).tolist() == [64]
    assert calendar.expected_counts([half], Timeframe.M15, extended=True).tolist() == [52]


# ------------------------------------------------------------------ the stored schedule
def _built(first: date, last: date):
    schedule = xcals.get_calendar("XNYS", start=first, end=last).schedule
    return (pd.DatetimeIndex(schedule.index), pd.DatetimeIndex(schedule["open"]).tz_convert("UTC"),
            pd.DatetimeIndex(schedule["close"]).tz_convert("UTC"))


def test_the_stored_schedule_is_exchange_calendars_own_and_is_read_back(tmp_path):
    first, last = date(2023, 1, 1), date(2026, 12, 31)
    labels, opens, closes = _built(first, last)
    made = session_schedule(first, last, tmp_path)
    (stored,) = tmp_path.iterdir()
    assert stored.name == f"XNYS-{version('exchange-calendars')}-2023-01-01-2026-12-31.npz"
    read = session_schedule(first, last, tmp_path)
    for got in (made, read):
        assert list(got[0]) == list(labels.asi8) and list(got[1]) == list(opens.asi8) and list(got[2]) == list(closes.asi8)
    calendar = SessionCalendar(first, last)  # the user's cache dir: the same sessions and hours either way
    assert calendar.sessions(first, last) == [ts.date() for ts in labels]
    assert calendar.close(date(2024, 12, 24)) == closes[labels.get_loc(pd.Timestamp("2024-12-24"))]
    assert calendar.describe_non_session(date(2025, 12, 25)) == "NYSE holiday: Christmas"


@pytest.mark.parametrize("content", [b"", b"not a numpy file", None])
def test_a_broken_stored_schedule_is_rebuilt_not_trusted(tmp_path, content):
    first, last = date(2024, 1, 1), date(2025, 12, 31)
    path = tmp_path / f"XNYS-{version('exchange-calendars')}-2024-01-01-2025-12-31.npz"
    if content is None:  # a file of the right name with other arrays in it
        np.savez(path, labels=np.arange(3, dtype=np.int64))
    else:
        path.write_bytes(content)
    labels, opens, _ = session_schedule(first, last, tmp_path)
    assert list(labels) == list(_built(first, last)[0].asi8) and len(opens) == len(labels)
    with np.load(path) as again:  # and the good one written in its place
        assert list(again["labels"]) == list(labels)


def test_an_unwritable_cache_dir_only_costs_the_build(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache directory would be")
    labels, _, _ = session_schedule(date(2024, 1, 1), date(2024, 12, 31), blocked / "cache")
    assert len(labels) == 252

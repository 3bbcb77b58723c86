"""NYSE trading sessions and the bar grids expected inside them (exchange_calendars XNYS).

A *session* is one NYSE trading day, named by its date. Its regular hours run from the open (09:30
America/New_York) to the close (16:00, or 13:00 on early closes); extended hours add the pre-market
from 04:00 and the post-market for four hours after the close (to 20:00, or 17:00 after an early
close). Providers serve bars from 04:00 to 20:00 on every session, early closes included: those
*served* hours are the widest a bar may have; the store keeps the configured hours of them.

Bars are session-anchored, the convention chart users expect: each segment of a session (pre,
regular, post) is cut into bars from its own start, and the last bar of a segment is clipped at the
segment's end. For regular hours this is exactly exchange_calendars'
``trading_index(..., period, force=True)``: h1 bars start 09:30, 10:30 ... 15:30 (the last one 30
minutes), h4 bars are 09:30-13:30 and 13:30-16:00, and an early-close session has one 09:30-13:00 h4
bar. Because every bucket is computed from the session's own open, DST changes cannot shift it.
A d1 bar is labelled 00:00 America/New_York of its session, as Alpaca and Polygon label daily bars.

Everything here is vectorised over many sessions; nothing imports Dagster or the store.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from backfill_dagster.domain.timeframes import Timeframe

NEW_YORK = ZoneInfo("America/New_York")
EXCHANGE = "XNYS"
PRE_MARKET_OPEN = pd.Timedelta(hours=4)  # after local midnight
POST_MARKET_LENGTH = pd.Timedelta(hours=4)  # after the close, early closes included
# Providers serve extended-hours bars from 04:00 to 20:00 on every session, early closes included
# (after a 13:00 close too): the widest hours a bar may legitimately carry.
SERVED_DAY_END = pd.Timedelta(hours=20)  # after local midnight
CALENDAR_FIRST_DAY = date(2000, 1, 1)

_NS = np.int64


class NotASessionError(ValueError):
    """A date that is not an NYSE trading session."""


class SessionNotOpenError(ValueError):
    """A session that has not opened yet: nothing can be fetched for it."""


@dataclass(frozen=True)
class Segment:
    name: str  # "pre", "regular" or "post"
    start: pd.Timestamp
    end: pd.Timestamp


def as_date(value: date | datetime | str | pd.Timestamp) -> date:
    """A plain date from a date, a 'YYYY-MM-DD' string or a timestamp (its New York date)."""
    if isinstance(value, pd.Timestamp):
        if value.tzinfo is not None:
            value = value.tz_convert(NEW_YORK)
        return value.date()
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(NEW_YORK)
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise NotASessionError(f"{value!r} is not a date: use YYYY-MM-DD") from None


class SessionCalendar:
    """The XNYS sessions between two dates, with opens, closes and expected bar grids."""

    def __init__(self, first: date, last: date):
        self.first_day = first
        self.last_day = last
        labels, opens, closes = session_schedule(first, last)
        # Session labels as naive midnight timestamps, ascending, for vectorised lookups.
        self._labels = pd.DatetimeIndex(labels.view("M8[ns]"))
        self._opens = pd.DatetimeIndex(opens.view("M8[ns]")).tz_localize("UTC")
        self._closes = pd.DatetimeIndex(closes.view("M8[ns]")).tz_localize("UTC")
        midnights = self._labels.tz_localize(NEW_YORK).tz_convert("UTC")
        self._midnights = midnights.as_unit("ns")
        self._midnights_ns = self._midnights.asi8
        next_days = (self._labels + pd.Timedelta(days=1)).tz_localize(NEW_YORK).tz_convert("UTC")
        self._next_midnights_ns = next_days.as_unit("ns").asi8
        self._pre_starts = (midnights + PRE_MARKET_OPEN).as_unit("ns")
        self._post_ends = self._closes + POST_MARKET_LENGTH
        self._served_ends = (midnights + SERVED_DAY_END).as_unit("ns")
        self._regular_close_length = (self._closes - self._opens).max()
        self._label_dates = np.array([ts.date() for ts in self._labels], dtype=object)
        self._index_of = {d: i for i, d in enumerate(self._label_dates)}

    # ------------------------------------------------------------------ sessions
    def is_session(self, day: date | str) -> bool:
        return self._position(as_date(day)) >= 0

    def sessions(self, start: date | str, end: date | str) -> list[date]:
        """Sessions from start to end, both inclusive, ascending."""
        lo = pd.Timestamp(as_date(start))
        hi = pd.Timestamp(as_date(end))
        mask = (self._labels >= lo) & (self._labels <= hi)
        return [ts.date() for ts in self._labels[mask]]

    def require_session(self, day: date | str) -> date:
        """The date itself if it is a session; otherwise an error that says what the day is."""
        d = as_date(day)
        if self._position(d) < 0:
            raise NotASessionError(
                f"{d.isoformat()} is not an NYSE trading session ({self.describe_non_session(d)})"
            )
        return d

    def describe_non_session(self, day: date) -> str:
        if not (self.first_day <= day <= self.last_day):
            return (
                f"outside the calendar's range {self.first_day.isoformat()}"
                f"..{self.last_day.isoformat()}"
            )
        if day.weekday() >= 5:
            return f"a {day.strftime('%A')}"
        names = _exchange_calendar(self.first_day, self.last_day).regular_holidays.holidays(day, day, return_name=True)
        if len(names):
            return f"NYSE holiday: {names.iloc[0]}"
        return "NYSE closed (ad-hoc closure)"

    def holidays(self, start: date, end: date) -> list[date]:
        """Weekdays between start and end (inclusive) that are not sessions."""
        days = pd.bdate_range(start, end)
        return [d.date() for d in days[~days.isin(self._labels)]]

    def previous_session(self, day: date) -> date:
        i = self._labels.searchsorted(pd.Timestamp(day), side="left") - 1
        if i < 0:
            raise NotASessionError(f"no session before {day} in the calendar")
        return self._labels[i].date()

    def next_session(self, day: date) -> date:
        i = self._labels.searchsorted(pd.Timestamp(day), side="right")
        if i >= len(self._labels):
            raise NotASessionError(f"no session after {day} in the calendar")
        return self._labels[i].date()

    def session_index(self, day: date) -> int:
        """Position of a session in the calendar: consecutive sessions differ by one."""
        i = self._position(day)
        if i < 0:
            self.require_session(day)
        return i

    def recent_sessions(self, count: int, now: pd.Timestamp, *, closed_only: bool = True) -> list[date]:
        """The last `count` sessions that have closed (or, if not closed_only, opened) by now."""
        now = _utc(now)
        edges = self._closes if closed_only else self._opens
        n = int(edges.searchsorted(now, side="right"))
        return [ts.date() for ts in self._labels[max(0, n - count) : n]]

    # ------------------------------------------------------------------ hours
    def open(self, day: date) -> pd.Timestamp:
        return self._opens[self.session_index(as_date(day))]

    def close(self, day: date) -> pd.Timestamp:
        return self._closes[self.session_index(as_date(day))]

    def is_early_close(self, day: date) -> bool:
        i = self.session_index(as_date(day))
        return bool(self._closes[i] - self._opens[i] < self._regular_close_length)

    def window(self, day: date, extended: bool = False) -> tuple[pd.Timestamp, pd.Timestamp]:
        """[start, end) of the hours bars may fall in: regular hours, or 04:00 to close + 4 h."""
        i = self.session_index(as_date(day))
        if extended:
            return self._pre_starts[i], self._post_ends[i]
        return self._opens[i], self._closes[i]

    def served_window(self, day: date) -> tuple[pd.Timestamp, pd.Timestamp]:
        """[04:00, 20:00) New York: the hours providers serve bars for, early closes included."""
        i = self.session_index(as_date(day))
        return self._pre_starts[i], self._served_ends[i]

    def segments(self, day: date, extended: bool = False, *, served: bool = False) -> list[Segment]:
        """The session's pre, regular and post segments (regular only unless extended or served);
        `served` runs the post-market to 20:00 whatever the close."""
        i = self.session_index(as_date(day))
        regular = Segment("regular", self._opens[i], self._closes[i])
        if not (extended or served):
            return [regular]
        post_end = self._served_ends[i] if served else self._post_ends[i]
        return [
            Segment("pre", self._pre_starts[i], self._opens[i]),
            regular,
            Segment("post", self._closes[i], post_end),
        ]

    def has_opened(self, day: date, now: pd.Timestamp, extended: bool = False) -> bool:
        return bool(_utc(now) >= self.window(day, extended)[0])

    def has_closed(self, day: date, now: pd.Timestamp, extended: bool = False) -> bool:
        """True once the last bar of the session (in the configured hours) has ended."""
        return bool(_utc(now) >= self.window(day, extended)[1])

    def require_opened(self, day: date, now: pd.Timestamp, extended: bool = False) -> date:
        d = self.require_session(day)
        if not self.has_opened(d, now, extended):
            opens = self.window(d, extended)[0].tz_convert(NEW_YORK)
            raise SessionNotOpenError(
                f"session {d.isoformat()} has not opened yet (it opens {opens:%Y-%m-%d %H:%M} "
                "America/New_York): there is nothing to fetch before then"
            )
        return d

    def midnight(self, day: date) -> pd.Timestamp:
        """00:00 America/New_York of a session, in UTC: the label of its d1 bar."""
        return self._midnights[self.session_index(as_date(day))]

    # ------------------------------------------------------------------ grids
    def expected_bars(
        self, sessions: Sequence[date], timeframe: Timeframe, extended: bool = False, *, served: bool = False
    ) -> pd.DataFrame:
        """The bar starts every session should have: columns session (date) and ts (UTC). With
        `served`, the grid of the hours providers serve (04:00-20:00)."""
        pos = self._positions(sessions)
        if timeframe is Timeframe.D1:
            ts = self._midnights[pos]
            return pd.DataFrame({"session": self._dates(pos), "ts": ts})
        seg_start, seg_end, seg_pos = self._segment_arrays(pos, extended, served)
        period = timeframe.period.value
        counts = -((seg_start - seg_end) // period)  # ceil((end - start) / period)
        total = int(counts.sum())
        first = np.repeat(np.cumsum(counts) - counts, counts)
        step = np.arange(total, dtype=_NS) - first
        starts = np.repeat(seg_start, counts) + step * period
        owner = np.repeat(seg_pos, counts)
        return pd.DataFrame(
            {
                "session": self._dates(owner),
                "ts": pd.DatetimeIndex(starts.astype("datetime64[ns]")).tz_localize("UTC"),
            }
        )

    def expected_counts(
        self, sessions: Sequence[date], timeframe: Timeframe, extended: bool = False, *, served: bool = False
    ) -> np.ndarray:
        """How many bars of a timeframe each session should have, in the order given."""
        pos = self._positions(sessions)
        if timeframe is Timeframe.D1:
            return np.ones(len(pos), dtype=np.int64)
        seg_start, seg_end, seg_pos = self._segment_arrays(pos, extended, served)
        counts = -((seg_start - seg_end) // timeframe.period.value)
        order = np.repeat(np.arange(len(pos)), len(seg_start) // max(len(pos), 1))
        return np.bincount(order, weights=counts, minlength=len(pos)).astype(np.int64)

    def locate(
        self, ts: pd.Series | pd.DatetimeIndex, timeframe: Timeframe, extended: bool = False
    ) -> pd.DataFrame:
        """For each timestamp: its session, whether it lies inside the session's hours, and the
        start of the `timeframe` bucket that contains it.

        Columns: session (date or None), inside (bool), bucket (UTC timestamp or NaT). A timestamp on
        a non-session day, or outside the hours, has inside=False.
        """
        pos, inside, bucket = self.locate_ns(epoch_ns(ts), timeframe, extended)
        known = pos >= 0
        bucket_index = pd.DatetimeIndex(
            np.where(inside, bucket, np.iinfo(_NS).min).astype("datetime64[ns]")
        ).tz_localize("UTC")
        return pd.DataFrame(
            {
                "session": np.where(known, self._label_dates[np.where(known, pos, 0)], None),
                "inside": inside,
                "bucket": bucket_index,
            },
            index=ts.index if isinstance(ts, pd.Series) else None,
        )

    def locate_ns(
        self, t: np.ndarray, timeframe: Timeframe, extended: bool = False, *, served: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`locate` on int64 UTC nanoseconds, numpy only: (session position or -1, inside,
        bucket start in ns). A session owns its New York calendar day, so a binary search over
        the sessions' midnights finds it without any timezone conversion. `served`: inside the
        hours providers serve (04:00-20:00), the widest a bar may have."""
        t = np.asarray(t, dtype=_NS)
        pos = np.searchsorted(self._midnights_ns, t, side="right") - 1
        safe = np.where(pos >= 0, pos, 0)
        known = (pos >= 0) & (t < self._next_midnights_ns[safe]) & (t != np.iinfo(_NS).min)
        pos = np.where(known, pos, -1)
        if timeframe is Timeframe.D1:
            # Any time on the session's New York date belongs to it; the bar's label is midnight.
            return pos, known, self._midnights_ns[safe]
        opens = self._opens.asi8[safe]
        closes = self._closes.asi8[safe]
        if extended or served:
            lo = self._pre_starts.asi8[safe]
            hi = (self._served_ends if served else self._post_ends).asi8[safe]
            seg_start = np.where(t < opens, lo, np.where(t < closes, opens, closes))
        else:
            lo, hi = opens, closes
            seg_start = opens
        inside = known & (t >= lo) & (t < hi)
        period = timeframe.period.value
        bucket = seg_start + ((t - seg_start) // period) * period
        return pos, inside, bucket

    def session_dates(self, positions: np.ndarray) -> np.ndarray:
        """Session dates (object array) for positions from locate_ns; None where -1."""
        return np.where(positions >= 0, self._label_dates[np.where(positions >= 0, positions, 0)], None)

    # ------------------------------------------------------------------ internals
    def _position(self, day: date) -> int:
        return self._index_of.get(day, -1)

    def _positions(self, sessions: Sequence[date]) -> np.ndarray:
        labels = pd.DatetimeIndex([pd.Timestamp(as_date(s)) for s in sessions]).as_unit("ns")
        pos = self._labels.get_indexer(labels)
        if (pos < 0).any():
            bad = as_date(labels[np.argmax(pos < 0)].date())
            self.require_session(bad)
        return pos

    def _dates(self, pos: np.ndarray) -> np.ndarray:
        return self._label_dates[pos]

    def _segment_arrays(self, pos: np.ndarray, extended: bool, served: bool = False):
        opens, closes = self._opens.asi8[pos], self._closes.asi8[pos]
        if not (extended or served):
            return opens, closes, pos
        pre = self._pre_starts.asi8[pos]
        post = (self._served_ends if served else self._post_ends).asi8[pos]
        # Interleave pre, regular, post per session so segments stay in time order.
        start = np.stack([pre, opens, closes], axis=1).ravel()
        end = np.stack([opens, closes, post], axis=1).ravel()
        return start, end, np.repeat(pos, 3)


def epoch_ns(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    """UTC nanoseconds since the epoch of tz-aware timestamps, as int64 (NaT: int64 min)."""
    return pd.DatetimeIndex(values).tz_convert("UTC").as_unit("ns").asi8


def _utc(now: pd.Timestamp | datetime) -> pd.Timestamp:
    ts = pd.Timestamp(now)
    if ts.tzinfo is None:
        raise ValueError(f"naive timestamp {ts!s}: pass a timezone-aware time")
    return ts.tz_convert("UTC")


@functools.lru_cache(maxsize=2)
def _exchange_calendar(first: date, last: date):
    # exchange_calendars computes every holiday rule of the range with pandas when a calendar is
    # built (seconds for 2000 to next year): only what the stored schedule cannot say needs it.
    import exchange_calendars as xcals

    return xcals.get_calendar(EXCHANGE, start=first, end=last)


def session_schedule(first: date, last: date, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(session labels at naive midnight, opens, closes in UTC) as int64 nanoseconds, from
    exchange_calendars, kept in a file per exchange_calendars release and range so that every
    process after the first (each run worker, code server, CLI call) reads it instead of building
    the calendar again. A cache that cannot be read or written is rebuilt or skipped, never trusted."""
    path = _schedule_path(first, last, cache_dir)
    if path is not None:
        try:
            with np.load(path, allow_pickle=False) as stored:
                labels, opens, closes = stored["labels"], stored["opens"], stored["closes"]
            if labels.dtype == opens.dtype == closes.dtype == np.int64 and len(labels) == len(opens) == len(closes) > 0:
                return labels, opens, closes
        except (OSError, ValueError, KeyError, EOFError):
            pass  # missing, partial or from something else: rebuilt below
    schedule = _exchange_calendar(first, last).schedule
    labels = pd.DatetimeIndex(schedule.index).as_unit("ns").asi8
    opens = pd.DatetimeIndex(schedule["open"]).tz_convert("UTC").as_unit("ns").asi8
    closes = pd.DatetimeIndex(schedule["close"]).tz_convert("UTC").as_unit("ns").asi8
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
                np.savez(tmp, labels=labels, opens=opens, closes=closes)
            os.replace(tmp.name, path)  # readers see the whole file or none
        except OSError:
            pass  # a read-only home: every process builds its own, as before
    return labels, opens, closes


def _schedule_path(first: date, last: date, cache_dir: Path | None) -> Path | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("exchange-calendars")
    except PackageNotFoundError:
        return None
    if cache_dir is None:
        cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "backfill_dagster"
    return cache_dir / f"{EXCHANGE}-{release}-{first.isoformat()}-{last.isoformat()}.npz"


@functools.lru_cache(maxsize=8)
def _calendar(first: date, last: date) -> SessionCalendar:
    return SessionCalendar(first, last)


def xnys(last_year: int | None = None) -> SessionCalendar:
    """The shared XNYS calendar from 2000 to the end of next year (or of `last_year`)."""
    if last_year is None:
        last_year = date.today().year + 1
    return _calendar(CALENDAR_FIRST_DAY, date(last_year, 12, 31))


T = TypeVar("T")


def contiguous_runs(sessions: Iterable[date], calendar: SessionCalendar) -> list[list[date]]:
    """Split sessions into runs of consecutive sessions (no session of the calendar skipped)."""
    return consecutive_runs(set(sessions), calendar.session_index)


def consecutive_runs(items: Iterable[T], position: Callable[[T], int]) -> list[list[T]]:
    """`items` in the order of their `position`, split wherever a position is not the previous one
    plus one (sessions in the calendar, symbols in the partitions' order, plain integers)."""
    runs: list[list[T]] = []
    last = None
    for item in sorted(items, key=position):
        at = position(item)
        if last is not None and at == last + 1:
            runs[-1].append(item)
        else:
            runs.append([item])
        last = at
    return runs

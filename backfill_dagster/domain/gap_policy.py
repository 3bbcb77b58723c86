"""The gap sensor's policy: how far back it keeps each timeframe covered, how much it asks for at
once, how long it leaves a closed session to the end-of-day schedule, and the sessions that policy
makes its horizons. Pure; its settings are read in settings.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta

import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK, SessionCalendar, consecutive_runs
from backfill_dagster.domain.clock import as_utc
from backfill_dagster.domain.timeframes import Timeframe


# The old system's windows (seeds: 30 days for 15m, 90 for 1h/4h) and a year of daily bars.
DEFAULT_HISTORY_DAYS: Mapping[Timeframe, int] = {
    Timeframe.M15: 30,
    Timeframe.H1: 90,
    Timeframe.H4: 90,
    Timeframe.D1: 365,
}


class GapPolicyError(ValueError):
    """A gap-sensor setting that cannot be used."""


@dataclass(frozen=True)
class GapPolicy:
    """How far back the gap sensor keeps each timeframe covered, and how much it asks for at once
    (BACKFILL_GAP_*: settings.py, the README's configuration table).
    """

    history_days: Mapping[Timeframe, int] = field(default_factory=lambda: dict(DEFAULT_HISTORY_DAYS))
    max_sessions_per_run: int = 64
    # Dagster writes events per partition of a run (docs/benchmarks.md): a few thousand keeps a run minutes.
    max_partitions_per_run: int = 2000
    max_runs_per_tick: int = 10
    # The daemon creates a tick's runs inside the tick, and a run's creation costs per asset
    # partition it targets (planned events, the run's partition subset): bounding the asset
    # partitions keeps a tick of 500 new symbols well under the daemon's 60 s limit; the rest is
    # requested by the next ticks. A single box larger than this is still requested alone.
    max_asset_partitions_per_tick: int = 12_000
    max_runs_in_flight: int = 20
    # Longer than the end_of_day schedule's delay (BACKFILL_EOD_DELAY_MINUTES, 30 min by default),
    # so the sensor never fetches a session the schedule is about to finalize.
    settle: timedelta = timedelta(minutes=60)
    retry_failed_after: timedelta = timedelta(minutes=15)
    # An empty answer is often a provider that has not published the session yet; after a few,
    # hours apart, it is a halted or delisted symbol: say so in `coverage`, stop asking.
    empty_attempts: int = 3
    retry_empty_after: timedelta = timedelta(hours=4)

    def __post_init__(self) -> None:
        missing = [t.value for t in Timeframe if t not in self.history_days]
        if missing:
            raise GapPolicyError(f"history_days has no value for {', '.join(missing)}")
        for timeframe, days in self.history_days.items():
            if int(days) < 1:
                raise GapPolicyError(f"history days for {Timeframe.parse(timeframe).value} must be at least 1, not {days}")
        for name in ("max_sessions_per_run", "max_partitions_per_run", "max_runs_per_tick", "max_runs_in_flight",
                     "max_asset_partitions_per_tick", "empty_attempts"):
            if getattr(self, name) < 1:
                raise GapPolicyError(f"{name} must be at least 1, not {getattr(self, name)}")
        if min(self.settle, self.retry_failed_after, self.retry_empty_after) < timedelta(0):
            raise GapPolicyError("settle, retry_failed_after and retry_empty_after cannot be negative")


    def on_request(self) -> GapPolicy:
        """The policy of an operator's explicit request (`ensure-coverage`): the same rule
        (gap_planning.select_gaps), without the waits. A request asks again at once: no retry
        delay after a failure or an empty answer, no settle time after a close (it is asked for
        now, not a background loop that must leave the end-of-day schedule its turn). It keeps
        `empty_attempts`: a session no provider had bars for that many times is halted or delisted,
        and asking once more would only say so again."""
        return replace(self, settle=timedelta(0), retry_failed_after=timedelta(0), retry_empty_after=timedelta(0))

# ---------------------------------------------------------------------------------- horizons
def settled_sessions(
    calendar: SessionCalendar,
    first: date,
    now: pd.Timestamp,
    *,
    settle: timedelta = timedelta(0),
    extended: bool = False,
) -> list[date]:
    """Sessions from `first` whose hours ended at least `settle` before now, ascending."""
    now = as_utc(now)
    today = now.tz_convert(NEW_YORK).date()
    days = calendar.sessions(first, today) if first <= today else []
    while days and calendar.window(days[-1], extended)[1] + settle > now:
        days.pop()
    return days


def horizons(
    policy: GapPolicy,
    calendar: SessionCalendar,
    now: pd.Timestamp,
    history_start: date,
    *,
    extended: bool = False,
) -> dict[Timeframe, list[date]]:
    """Per timeframe, the settled sessions the sensor keeps covered: from `history_days` calendar
    days before today (never before the partitions' history start) to the last settled session."""
    today = as_utc(now).tz_convert(NEW_YORK).date()
    settled = settled_sessions(
        calendar, min(history_start, today), now, settle=policy.settle, extended=extended
    )
    out = {}
    for timeframe in Timeframe:
        first = max(history_start, today - timedelta(days=int(policy.history_days[timeframe])))
        out[timeframe] = [d for d in settled if d >= first]
    return out


@dataclass(frozen=True)
class Horizon:
    """A timeframe's gap-sensor horizon as of now: the closed sessions the coverage_gaps sensor
    keeps covered, from `history_days` back (never before the history start) to the last close."""

    start: date
    sessions: list[date]

    def split(self, missing: Sequence[date], closed: Sequence[date]) -> list[tuple[list[date], bool]]:
        """`missing` sessions (a subset of `closed`, ascending) as runs of consecutive closed sessions,
        each with whether it lies inside this horizon (the sensor fetches it) or before it (nothing
        fetches it unless asked): a run across the horizon's start is cut there."""
        position = {d: i for i, d in enumerate(closed)}
        runs = []
        for run in consecutive_runs(missing, position.__getitem__):
            older = [d for d in run if d < self.start]
            inside = [d for d in run if d >= self.start]
            runs += [(part, part is inside) for part in (older, inside) if part]
        return runs


def closed_horizons(
    policy: GapPolicy, calendar: SessionCalendar, now: pd.Timestamp, history_start: date
) -> dict[Timeframe, Horizon]:
    """Each timeframe's horizon (BACKFILL_GAP_DAYS_*) as of `now`, with every closed session in it
    (what `coverage` counts as due; the sensor itself leaves the newest to end_of_day a while)."""
    today = as_utc(now).tz_convert(NEW_YORK).date()
    out = {}
    for t in Timeframe:
        start = max(history_start, today - timedelta(days=int(policy.history_days[t])))
        out[t] = Horizon(start, settled_sessions(calendar, start, now))
    return out


def ledger_horizons(wanted: Mapping[Timeframe, Sequence[date]]) -> dict[Timeframe, list[date]]:
    """The sessions to read from the ledger per timeframe: m15 over every intraday horizon, because
    an h1/h4 gap needs m15 for its session (stored or fetched in the same run)."""
    out = {t: list(days) for t, days in wanted.items()}
    intraday = sorted({d for t in (Timeframe.M15, Timeframe.H1, Timeframe.H4) for d in wanted.get(t, ())})
    out[Timeframe.M15] = intraday
    return out

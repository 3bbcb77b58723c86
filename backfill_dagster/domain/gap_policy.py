"""The gap sensor's policy: how far back it keeps each timeframe covered, how much it asks for at
once, how long it leaves a closed session to the end-of-day schedule, and the sessions that policy
makes its horizons. Pure; its settings are read in settings.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta

import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK, SessionCalendar
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
    # Dagster writes events per partition of a run (DESIGN §4): a few thousand keeps a run minutes.
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


def sessions_expected(
    coverage: pd.DataFrame,
    policy: GapPolicy,
    calendar: SessionCalendar,
    now: pd.Timestamp,
    history_start: date,
) -> list[int]:
    """Per row of a coverage summary (columns timeframe, since): how many closed sessions that
    symbol x timeframe should hold by now. They run from the earlier of its first ledger session
    (`since`; a backfill may reach further back than the sensor) and its timeframe's horizon start
    (`history_days` back, never before `history_start`) to the last closed session."""
    if coverage.empty:
        return []
    today = as_utc(now).tz_convert(NEW_YORK).date()
    starts = {
        t.value: max(history_start, today - timedelta(days=int(policy.history_days[t]))) for t in Timeframe
    }
    firsts = [min(starts[tf], since) if since is not None else starts[tf]
              for tf, since in zip(coverage["timeframe"], coverage["since"], strict=True)]
    closed = pd.Index(settled_sessions(calendar, min(firsts), now))
    return [int(len(closed) - closed.searchsorted(first)) for first in firsts]


def ledger_horizons(wanted: Mapping[Timeframe, Sequence[date]]) -> dict[Timeframe, list[date]]:
    """The sessions to read from the ledger per timeframe: m15 over every intraday horizon, because
    an h1/h4 gap needs m15 for its session (stored or fetched in the same run)."""
    out = {t: list(days) for t, days in wanted.items()}
    intraday = sorted({d for t in (Timeframe.M15, Timeframe.H1, Timeframe.H4) for d in wanted.get(t, ())})
    out[Timeframe.M15] = intraday
    return out

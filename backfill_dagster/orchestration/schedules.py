"""Schedules: refresh today's bars during the session, and finalize each session after its close.

Both tick by cron on weekdays (America/New_York) and decide from the NYSE calendar, so holidays,
ad-hoc closures, early closes and DST changes need no cron of their own. Each asks for one range run
over today x every active symbol (one per block of symbols contiguous in the partitions' order;
docs/design.md, "Automation"), and skips with a reason whenever there is nothing to do — intraday_refresh also when
no configured provider serves the open session (Polygon, Alpaca's SIP feed on the free plan: the
session's bars then come from end_of_day). end_of_day runs
BACKFILL_EOD_DELAY_MINUTES after the close (settings.py).
"""

from datetime import date, timedelta

import dagster as dg
import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK, NotASessionError, SessionCalendar, xnys
from backfill_dagster.domain.clock import Clock, utcnow
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.orchestration.gap_sensor import IN_FLIGHT_STATUSES
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import active_partition_symbols, range_tags, symbol_blocks
from backfill_dagster.orchestration.resources import ProvidersResource, StoreResource
from backfill_dagster.orchestration.tags import PRIORITY_TAG, REQUESTED_BY_TAG, SESSION_TAG
from backfill_dagster.settings import DEFAULT_EOD_DELAY, MAX_EOD_DELAY

INTRADAY_REFRESH = "intraday_refresh"
END_OF_DAY = "end_of_day"
TIMEZONE = str(NEW_YORK)

# Every 15 minutes from 09:00 to 15:45; the calendar keeps the ticks inside the session. A bar
# completes at :00/:15/:30/:45, so the ticks from 09:45 on each bring new bars.
INTRADAY_CRON = "*/15 9-15 * * 1-5"
INTRADAY_ASSETS = (Timeframe.M15, Timeframe.H1, Timeframe.H4)  # h1/h4 derived in the same run
EARLIEST_CLOSE_MIN = 13 * 60  # early closes, in minutes after midnight New York
LATEST_END_MIN = 20 * 60  # the post-market's end, when extended hours are kept


class ScheduleConfigError(ValueError):
    """A schedule setting that cannot be used."""


def _checked_delay(delay: timedelta, what: str) -> timedelta:
    if not timedelta(0) <= delay <= MAX_EOD_DELAY:
        raise ScheduleConfigError(f"{what}: the end-of-day delay must be between 0 and 180 minutes")
    return delay


def end_of_day_cron(delay: timedelta) -> str:
    """Every 15 minutes from the earliest close + delay until an hour past the latest end + delay:
    the calendar picks the tick that fires, and a tick or two missed still leaves later ones."""
    minutes = int(delay.total_seconds() // 60)
    first = (EARLIEST_CLOSE_MIN + minutes) // 60
    last = min(23, (LATEST_END_MIN + minutes + 14) // 60 + 1)
    return f"*/15 {first}-{last} * * 1-5"


def _tick(context: dg.ScheduleEvaluationContext, clock: Clock) -> tuple[pd.Timestamp, date]:
    """The tick's time in UTC and its New York date (a naive time is read as New York's)."""
    ts = pd.Timestamp(context.scheduled_execution_time or clock())
    if ts.tzinfo is None:
        ts = ts.tz_localize(NEW_YORK)
    return ts.tz_convert("UTC"), ts.tz_convert(NEW_YORK).date()


def _local(ts: pd.Timestamp) -> str:
    return f"{ts.tz_convert(NEW_YORK):%H:%M}"


def _closes(calendar: SessionCalendar, day: date) -> str:
    early = " (early close)" if calendar.is_early_close(day) else ""
    return f"{_local(calendar.close(day))}{early}"


def _blocks(context: dg.ScheduleEvaluationContext, store: StoreResource) -> list[list[str]] | dg.SkipReason:
    """Active symbols that are partitions, in blocks contiguous in the partitions' order."""
    found = active_partition_symbols(context.instance, store.watchlist().active(), "fetch")
    if isinstance(found, dg.SkipReason):
        return found
    return symbol_blocks(found.symbols, found.order)


def _serve_open_session(
    providers: ProvidersResource, store: StoreResource, calendar: SessionCalendar, day: date, now: pd.Timestamp
) -> bool:
    """Whether a configured provider serves today's m15 bars while the session trades (capabilities only)."""
    router = providers.router(store, calendar)
    try:
        return bool(router.candidates(Timeframe.M15, day, now))
    finally:
        router.close()


def _requests(
    blocks: list[list[str]], day: date, timeframes, key: str, tags: dict[str, str]
) -> list[dg.RunRequest]:
    return [
        dg.RunRequest(
            run_key=f"{key}:{block[0]}..{block[-1]}",
            job_name=ALL_BARS_JOB,
            asset_selection=[dg.AssetKey(t.asset_name) for t in timeframes],
            tags={**range_tags((block[0], day), (block[-1], day)), SESSION_TAG: day.isoformat(), **tags},
        )
        for block in blocks
    ]


def build_intraday_refresh(*, calendar: SessionCalendar | None = None, clock: Clock = utcnow) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=INTRADAY_REFRESH,
        cron_schedule=INTRADAY_CRON,
        execution_timezone=TIMEZONE,
        job_name=ALL_BARS_JOB,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "Every 15 minutes while NYSE is open (early closes respected): fetches today's m15 bars "
            "of every active symbol and derives h1/h4, in one range run."
        ),
    )
    def intraday_refresh(context: dg.ScheduleEvaluationContext, store: StoreResource, providers: ProvidersResource):
        cal = calendar or xnys()
        now, today = _tick(context, clock)
        try:
            cal.require_session(today)
        except NotASessionError as exc:
            return dg.SkipReason(f"{exc}: nothing to refresh")
        if now <= cal.open(today):
            return dg.SkipReason(f"{today.isoformat()} opens at {_local(cal.open(today))}: no bar has completed yet")
        if now >= cal.close(today):
            return dg.SkipReason(
                f"{today.isoformat()} closed at {_closes(cal, today)}: the end_of_day schedule finalizes it"
            )
        if not _serve_open_session(providers, store, cal, today, now):
            return dg.SkipReason(
                f"no configured provider ({', '.join(providers.names)}) serves m15 bars of an open session: "
                f"{today.isoformat()} is fetched after its close, by the end_of_day schedule"
            )
        blocks = _blocks(context, store)
        if isinstance(blocks, dg.SkipReason):
            return blocks
        # A slow provider must not stack refreshes: the next tick fetches everything this one would.
        busy = context.instance.get_runs(
            filters=dg.RunsFilter(tags={REQUESTED_BY_TAG: INTRADAY_REFRESH}, statuses=IN_FLIGHT_STATUSES), limit=1
        )
        if busy:
            return dg.SkipReason(f"the previous refresh (run {busy[0].run_id[:8]}) is still running")
        tick = now.tz_convert(NEW_YORK)
        return _requests(
            blocks, today, INTRADAY_ASSETS, f"{INTRADAY_REFRESH}:{tick:%Y-%m-%dT%H:%M}",
            {REQUESTED_BY_TAG: INTRADAY_REFRESH, PRIORITY_TAG: "10"},
        )

    return intraday_refresh


def build_end_of_day(
    delay: timedelta = DEFAULT_EOD_DELAY, *, calendar: SessionCalendar | None = None, clock: Clock = utcnow
) -> dg.ScheduleDefinition:
    delay = _checked_delay(delay, f"delay={delay}")
    minutes = int(delay.total_seconds() // 60)

    @dg.schedule(
        name=END_OF_DAY,
        cron_schedule=end_of_day_cron(delay),
        execution_timezone=TIMEZONE,
        job_name=ALL_BARS_JOB,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            f"Once per session, {minutes} minutes after the close (early closes respected; after the "
            "post-market when extended hours are kept): refetches the session's m15 and d1 bars of "
            "every active symbol and derives h1/h4, so the ledger records it complete."
        ),
    )
    def end_of_day(context: dg.ScheduleEvaluationContext, store: StoreResource):
        cal = calendar or xnys()
        now, today = _tick(context, clock)
        try:
            cal.require_session(today)
        except NotASessionError as exc:
            return dg.SkipReason(f"{exc}: nothing to finalize")
        end = cal.window(today, store.extended_hours)[1]
        due = end + delay
        if now < due:
            ends = _closes(cal, today) if not store.extended_hours else f"{_local(end)} (post-market)"
            return dg.SkipReason(
                f"{today.isoformat()} ends at {ends}; finalizing at {_local(due)}, {minutes} min later"
            )
        done = context.instance.get_runs(
            filters=dg.RunsFilter(tags={REQUESTED_BY_TAG: END_OF_DAY, SESSION_TAG: today.isoformat()}), limit=1
        )
        if done:
            return dg.SkipReason(
                f"{today.isoformat()} was already finalized by run {done[0].run_id[:8]} ({done[0].status.value}); "
                "the coverage_gaps sensor retries whatever failed"
            )
        blocks = _blocks(context, store)
        if isinstance(blocks, dg.SkipReason):
            return blocks
        return _requests(
            blocks, today, tuple(Timeframe), f"{END_OF_DAY}:{today.isoformat()}",
            {REQUESTED_BY_TAG: END_OF_DAY, PRIORITY_TAG: "5"},
        )

    return end_of_day


def build_schedules(
    end_of_day_delay: timedelta = DEFAULT_EOD_DELAY, *, calendar: SessionCalendar | None = None, clock: Clock = utcnow
) -> list[dg.ScheduleDefinition]:
    """intraday_refresh and end_of_day."""
    return [
        build_intraday_refresh(calendar=calendar, clock=clock),
        build_end_of_day(end_of_day_delay, calendar=calendar, clock=clock),
    ]

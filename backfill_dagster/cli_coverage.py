"""`backfill-dagster coverage`: the ledger read against what the gap sensor keeps covered.

Each symbol x timeframe is counted inside its horizon (the closed sessions of the last
BACKFILL_GAP_DAYS_* days, which the coverage_gaps sensor fetches for active symbols while the daemon
runs) apart from older sessions a backfill reached (which nothing fetches unless asked), so a
fresh store does not read as behind and a hole no sensor will fill is named. Symbols removed from
the watchlist are marked: nothing fetches them any more. `--detail` lists each session's ledger row
and the sessions without one, in runs, saying which will be fetched.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import pandas as pd
from sqlalchemy.engine import Engine

from backfill_dagster.domain.calendar import SessionCalendar
from backfill_dagster.domain.gap_policy import GapPolicy, Horizon, closed_horizons, settled_sessions
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.store.coverage import coverage_detail, coverage_summary
from backfill_dagster.store.watchlist import Watchlist

ACTIVE, REMOVED, UNLISTED = "active", "removed", "-"


def watch_states(engine: Engine) -> dict[str, str]:
    """symbol -> active / removed (on the watchlist once, inactive now)."""
    return {e["symbol"]: ACTIVE if e["active"] else REMOVED for e in Watchlist(engine).entries()}


def _day(value) -> str:
    return "-" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)[:10]


def summary_report(
    engine: Engine,
    policy: GapPolicy,
    calendar: SessionCalendar,
    now: pd.Timestamp,
    history_start: date,
    *,
    symbols: Sequence[str] | None = None,
    timeframe: str | None = None,
) -> str:
    horizons = closed_horizons(policy, calendar, now, history_start)
    frame = coverage_summary(engine, symbols=symbols, timeframe=timeframe,
                             horizon_starts={t.value: h.start for t, h in horizons.items()})
    if frame.empty:
        return "no coverage recorded yet"
    states = watch_states(engine)
    header = (f"{'symbol':<8} {'watchlist':<9} {'tf':<4} {'horizon':>9} {'older':>6} {'complete':>8} {'partial':>7} "
              f"{'empty':>5} {'failed':>6} {'bars':>9} {'expected':>9}  {'first':<10} {'last':<10} last fetch (UTC)")
    lines = [header, "-" * len(header)]
    unfilled, removed, never_asked = 0, [], []
    for r in frame.itertuples(index=False):
        horizon = horizons[Timeframe.parse(r.timeframe)]
        state = states.get(r.symbol, UNLISTED)
        older = r.complete - r.complete_in_horizon
        fetched = "-" if pd.isna(r.last_fetch) else f"{r.last_fetch:%Y-%m-%d %H:%M}"
        lines.append(
            f"{r.symbol:<8} {state:<9} {r.timeframe:<4} {f'{r.complete_in_horizon}/{len(horizon.sessions)}':>9} "
            f"{older:>6} {r.complete:>8} {r.partial:>7} {r.empty:>5} {r.failed:>6} {r.bars:>9} {r.expected:>9}  "
            f"{_day(r.first_session):<10} {_day(r.last_session):<10} {fetched}"
        )
        if state == ACTIVE:
            unfilled += len(horizon.sessions) - r.complete_in_horizon
        elif r.symbol not in removed:
            removed.append(r.symbol)
        if r.since is not None and r.since < horizon.start:
            before = len(calendar.sessions(r.since, horizon.start - timedelta(days=1)))
            if before > older:
                never_asked.append(f"{r.symbol} {r.timeframe}: {before - older} of the {before} closed sessions from "
                                   f"{r.since} to the horizon ({horizon.start})")
    days = ", ".join(f"{policy.history_days[t]} {t.value}" for t in Timeframe)
    notes = [
        "",
        f"horizon: complete / closed sessions of the gap sensor's horizon (the last N days: {days}; "
        "BACKFILL_GAP_DAYS_*). The coverage_gaps sensor fetches the others of active symbols while the "
        "daemon runs (dagster dev)"
        + (f": {unfilled} symbol-session(s) to go." if unfilled else "; every one is complete."),
        "older: complete sessions before the horizon (a backfill that reached further back).",
    ]
    if never_asked:
        notes.append("not held before the horizon, and never fetched unless asked (ensure-coverage --sessions N, or "
                     "a range run): " + "; ".join(never_asked[:10]) + ("; ..." if len(never_asked) > 10 else ""))
    if removed:
        notes.append(f"removed: {', '.join(removed)} left the watchlist: nothing fetches {'it' if len(removed) == 1 else 'them'} "
                     "any more; the bars stay (backfill-dagster watchlist add to resume).")
    if frame["empty"].sum():
        notes.append(
            "empty: every provider answered without bars for these closed sessions; the gap sensor asks again "
            f"{policy.empty_attempts} times, {int(policy.retry_empty_after.total_seconds() // 60)} minutes apart, "
            "then leaves them (a halted or delisted symbol has none). See --symbol S --detail."
        )
    return "\n".join(lines + notes)


def detail_report(
    engine: Engine,
    symbol: str,
    policy: GapPolicy,
    calendar: SessionCalendar,
    now: pd.Timestamp,
    history_start: date,
    timeframe: str | None = None,
) -> str:
    """Per session: the ledger's row, and the closed sessions without one — from the earlier of the
    first row and the horizon's start — in runs, each saying whether something will fetch it."""
    frame = coverage_detail(engine, symbol, timeframe)
    state = watch_states(engine).get(symbol, UNLISTED)
    if frame.empty and state != ACTIVE:
        return f"no coverage recorded for {symbol}"
    horizons = closed_horizons(policy, calendar, now, history_start)
    lines = [f"{'session':<10} {'tf':<4} {'status':<8} {'bars':>5}/{'exp':<5} {'provider':<22} {'fetched (UTC)':<16} error"]
    timeframes = [Timeframe.parse(timeframe)] if timeframe else sorted(Timeframe, key=lambda t: t.value)
    for tf in timeframes:
        rows = frame[frame["timeframe"] == tf.value]
        recorded = {pd.Timestamp(d).date() for d in rows["session"]}
        horizon = horizons[tf]
        first = min([horizon.start, *recorded])
        closed = settled_sessions(calendar, first, now)
        missing = [d for d in closed if d not in recorded]
        entries = [(pd.Timestamp(r.session).date(), _row_line(r)) for r in rows.itertuples(index=False)]
        entries += [(run[0], _missing_line(tf, run, inside, horizon, state)) for run, inside in horizon.split(missing, closed)]
        lines += [line for _, line in sorted(entries, key=lambda e: e[0])]
    return "\n".join(lines)


def _row_line(r) -> str:
    fetched = "-" if r.fetched_at is None or pd.isna(r.fetched_at) else f"{pd.Timestamp(r.fetched_at):%Y-%m-%d %H:%M}"
    return (f"{_day(r.session):<10} {r.timeframe:<4} {r.status:<8} {r.bars:>5}/{r.expected:<5} "
            f"{(r.provider or '-'):<22} {fetched:<16} {r.error or ''}")


def _missing_line(tf: Timeframe, run: list[date], inside: bool, horizon: Horizon, state: str) -> str:
    span = f"{len(run)} session(s) to {run[-1]}" if len(run) > 1 else "1 session"
    if not inside:
        why = f"before the gap sensor's horizon ({horizon.start}): nothing fetches them unless asked"
    elif state == ACTIVE:
        why = "in the horizon: the coverage_gaps sensor fetches them while the daemon runs"
    else:
        why = "in the horizon, but the symbol is not on the watchlist: nothing fetches them"
    return f"{run[0]!s:<10} {tf.value:<4} {'missing':<8} {span}, never fetched: {why}"

"""Turn a run's partitions (symbol x session) into the fewest provider requests (pure).

A partition is one symbol x one session, but a provider request should cover many of them: each
symbol's sessions are cut into contiguous runs (no session skipped), capped at the provider's
longest window, and symbols with identical runs are batched as far as the provider allows. A box
of partitions — the shape every Dagster range run has — therefore becomes
ceil(symbols / batch) x ceil(sessions / window) requests; the client pages within each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date

from backfill_dagster.domain.calendar import SessionCalendar, contiguous_runs
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers.base import Adjustment, Capabilities, FetchRequest


def plan_requests(
    partitions: Iterable[tuple[str, date]],
    timeframe: Timeframe,
    capabilities: Capabilities,
    calendar: SessionCalendar,
    *,
    extended: bool = False,
    adjustment: Adjustment = Adjustment.SPLIT,
) -> list[FetchRequest]:
    """Requests covering exactly the given partitions, in symbol then session order."""
    sessions_by_symbol: dict[str, set[date]] = defaultdict(set)
    for symbol, session in partitions:
        sessions_by_symbol[symbol].add(session)

    window = capabilities.sessions_window(timeframe)
    symbols_by_run: dict[tuple[date, ...], list[str]] = defaultdict(list)
    for symbol in sorted(sessions_by_symbol):
        for run in contiguous_runs(sessions_by_symbol[symbol], calendar):
            step = window or len(run)
            for i in range(0, len(run), step):
                symbols_by_run[tuple(run[i : i + step])].append(symbol)

    batch = max(1, capabilities.max_symbols_per_request)
    requests = []
    for run, symbols in symbols_by_run.items():
        start, end = _bounds(run, timeframe, calendar, extended)
        for i in range(0, len(symbols), batch):
            requests.append(
                FetchRequest(
                    timeframe=timeframe,
                    symbols=tuple(symbols[i : i + batch]),
                    sessions=run,
                    start=start,
                    end=end,
                    extended=extended,
                    adjustment=adjustment,
                )
            )
    requests.sort(key=lambda r: (r.symbols[0], r.sessions[0]))
    return requests


def _bounds(run: tuple[date, ...], timeframe: Timeframe, calendar: SessionCalendar, extended: bool):
    if timeframe is Timeframe.D1:
        return calendar.midnight(run[0]), calendar.midnight(run[-1]) + timeframe.period
    return calendar.window(run[0], extended)[0], calendar.window(run[-1], extended)[1]

"""The gap sensor's ledger queries: find the gaps without reading the whole ledger.

At 500 symbols x 2 years x 4 timeframes the ledger holds a million rows, nearly all of them
covered. So, per evaluation:
1. one aggregate: per timeframe and symbol, how many ledger rows the horizon holds — a couple of
   thousand small rows back, whatever the ledger's size;
2. the partial, empty and failed rows of the horizon, through the partial index bar_coverage_open_idx;
3. only for the symbols with fewer rows than the horizon has sessions: the sessions without a row
   (on PostgreSQL an anti-join against the horizon's sessions on the primary key, so only the
   missing sessions come back; on SQLite the symbols' sessions, subtracted in Python);
4. h1/h4 rows derived from an m15 fetch that has been replaced since (their m15 row's fetched_at
   is later than the one they recorded).
A row that is none of these is 'complete', which the writer records only for a final answer with
bars (backfill_dagster/ledger.py), so every other row is covered.
bench/gap_sensor.py measures it against reading the ledger into pandas.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import date

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from backfill_dagster.gaps import NEVER_COVERED, Gap, GapReason, Partition
from backfill_dagster.ledger import LedgerStatus
from backfill_dagster.store.schema import bar_coverage as cov
from backfill_dagster.timeframes import Timeframe

# A literal, not a parameter: PostgreSQL uses the partial index only when it can prove the query's
# condition implies the index's `status <> 'complete'`.
_OPEN = cov.c.status != sa.literal_column("'complete'")

_SQLITE_CHUNK = 500  # symbols per IN list

_PG_UNCOVERED = sa.text(
    """
    SELECT s.symbol, array_agg(d.session ORDER BY d.session)
    FROM unnest(CAST(:symbols AS text[])) AS s(symbol)
    CROSS JOIN unnest(CAST(:sessions AS date[])) AS d(session)
    WHERE NOT EXISTS (
        SELECT 1 FROM bar_coverage c
        WHERE c.symbol = s.symbol AND c.timeframe = :timeframe AND c.session = d.session
          -- redundant, but it makes the planner range-scan the primary key for just these symbols
          -- instead of sorting the timeframe's whole ledger
          AND c.symbol = ANY(CAST(:symbols AS text[])) AND c.session BETWEEN :first AND :last
    )
    GROUP BY s.symbol
    """
)


def _in_range(ranges: Mapping[Timeframe, tuple[date, date]]):
    return sa.or_(
        *[sa.and_(cov.c.timeframe == t.value, cov.c.session.between(lo, hi)) for t, (lo, hi) in ranges.items()]
    )


def _ranges(horizons: Mapping[Timeframe, Sequence[date]]) -> dict[Timeframe, tuple[date, date]]:
    return {t: (min(days), max(days)) for t, days in horizons.items() if days}


def row_counts(engine: Engine, ranges: Mapping[Timeframe, tuple[date, date]]) -> dict[Timeframe, dict[str, int]]:
    """Per timeframe and symbol: how many sessions in [first, last] have a ledger row."""
    out: dict[Timeframe, dict[str, int]] = {t: {} for t in ranges}
    if not ranges:
        return out
    query = (
        sa.select(cov.c.timeframe, cov.c.symbol, sa.func.count().label("rows"))
        .where(_in_range(ranges))
        .group_by(cov.c.timeframe, cov.c.symbol)
    )
    with engine.connect() as conn:
        for timeframe, symbol, rows in conn.execute(query):
            out[Timeframe(timeframe)][symbol] = int(rows)
    return out


def open_gaps(engine: Engine, ranges: Mapping[Timeframe, tuple[date, date]]) -> dict[Timeframe, dict[Partition, Gap]]:
    """The partial and failed rows in [first, last] per timeframe, through the partial index."""
    out: dict[Timeframe, dict[Partition, Gap]] = {t: {} for t in ranges}
    if not ranges:
        return out
    query = sa.select(
        cov.c.timeframe, cov.c.symbol, cov.c.session, cov.c.status, cov.c.updated_at, cov.c.attempts
    ).where(_OPEN, _in_range(ranges))
    with engine.connect() as conn:
        for timeframe, symbol, session, status, updated_at, attempts in conn.execute(query):
            out[Timeframe(timeframe)][(symbol, session)] = Gap(GapReason(status), updated_at, int(attempts))
    return out


def stale_derived(engine: Engine, ranges: Mapping[Timeframe, tuple[date, date]]) -> dict[Timeframe, dict[Partition, Gap]]:
    """h1/h4 rows in [first, last] whose m15 was fetched after the fetch they were derived from
    (rows from before that was recorded: after they were derived). Failed rows are gaps already."""
    derived = {t: r for t, r in ranges.items() if not t.is_fetched}
    out: dict[Timeframe, dict[Partition, Gap]] = {t: {} for t in derived}
    if not derived:
        return out
    m15 = cov.alias("m15")
    built_from = sa.func.coalesce(cov.c.source_fetched_at, cov.c.updated_at)
    query = (
        sa.select(cov.c.timeframe, cov.c.symbol, cov.c.session, cov.c.updated_at)
        .join(m15, sa.and_(m15.c.symbol == cov.c.symbol, m15.c.session == cov.c.session,
                           m15.c.timeframe == Timeframe.M15.value))
        .where(_in_range(derived), cov.c.status != LedgerStatus.FAILED.value, m15.c.fetched_at > built_from)
    )
    with engine.connect() as conn:
        for timeframe, symbol, session, updated_at in conn.execute(query):
            out[Timeframe(timeframe)][(symbol, session)] = Gap(GapReason.STALE, updated_at)
    return out


def uncovered_sessions(
    engine: Engine, timeframe: Timeframe, symbols: Sequence[str], sessions: Sequence[date]
) -> dict[str, list[date]]:
    """For each symbol, the sessions (of those given, contiguous) without a ledger row."""
    if not symbols or not sessions:
        return {}
    out: dict[str, list[date]] = defaultdict(list)
    if engine.dialect.name == "postgresql":
        params = {
            "symbols": list(symbols), "sessions": list(sessions), "timeframe": timeframe.value,
            "first": min(sessions), "last": max(sessions),
        }
        with engine.connect() as conn:
            # One row per symbol with its sessions as an array: a new symbol's hundreds of missing
            # sessions cost one row, not hundreds.
            return {symbol: sessions for symbol, sessions in conn.execute(_PG_UNCOVERED, params).all()}
    known: dict[str, set[date]] = defaultdict(set)
    lo, hi = min(sessions), max(sessions)
    with engine.connect() as conn:
        for i in range(0, len(symbols), _SQLITE_CHUNK):
            query = sa.select(cov.c.symbol, cov.c.session).where(
                cov.c.timeframe == timeframe.value,
                cov.c.symbol.in_(list(symbols[i : i + _SQLITE_CHUNK])),
                cov.c.session.between(lo, hi),
            )
            for symbol, session in conn.execute(query):
                known[symbol].add(session)
    for symbol in symbols:
        have = known.get(symbol, set())
        missing = [d for d in sessions if d not in have]
        if missing:
            out[symbol] = missing
    return dict(out)


def find_gaps(
    engine: Engine, symbols: Sequence[str], horizons: Mapping[Timeframe, Sequence[date]]
) -> dict[Timeframe, dict[Partition, Gap]]:
    """Every gap of these symbols in each timeframe's horizon (a contiguous list of sessions):
    missing, partial (every horizon session has closed) and failed partitions."""
    wanted = set(symbols)
    ranges = _ranges(horizons)
    rows = row_counts(engine, ranges)
    opened = open_gaps(engine, ranges)
    stale = stale_derived(engine, ranges)
    gaps: dict[Timeframe, dict[Partition, Gap]] = {t: {} for t in horizons}
    for timeframe, days in horizons.items():
        if not days:
            continue
        gaps[timeframe].update((p, g) for p, g in stale.get(timeframe, {}).items() if p[0] in wanted)
        gaps[timeframe].update((p, g) for p, g in opened[timeframe].items() if p[0] in wanted)
        counts = rows[timeframe]
        short = [s for s in symbols if counts.get(s, 0) < len(days)]
        table = gaps[timeframe]
        for symbol, sessions in uncovered_sessions(engine, timeframe, short, days).items():
            table.update(((symbol, session), NEVER_COVERED) for session in sessions)
    return gaps

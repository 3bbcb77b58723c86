"""The ledger's gaps, for the gap sensor and `ensure-coverage` (requested_gaps): find them without
reading the whole ledger.

At 500 symbols x 2 years x 4 timeframes the ledger holds a million rows, nearly all of them
covered. So, per evaluation:
1. one aggregate: per timeframe and symbol, how many ledger rows the horizon holds — a couple of
   thousand small rows back, whatever the ledger's size;
2. the partial, empty and failed rows of the horizon, through the partial index bar_coverage_open_idx;
3. only for the symbols with fewer rows than the horizon has sessions: the sessions without a row
   (on PostgreSQL an anti-join against the horizon's sessions on the primary key, so only the
   missing sessions come back; on SQLite the symbols' sessions, subtracted in Python);
4. h1/h4 to derive over the whole history, not only their horizon: wherever m15 is stored and the
   h1/h4 row is missing, failed, or derived from an m15 fetch replaced since (their m15 row's
   fetched_at is later than the one they recorded) — a run that wrote m15 alone leaves them so.
A row that is none of these is 'complete', which the writer records only for a final answer with
bars (backfill_dagster/domain/ledger.py), so every other row is covered.
bench/gap_sensor.py measures it against reading the ledger into pandas.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from datetime import date

import pandas as pd

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from backfill_dagster.domain.gap_planning import Gap, GapReason, GapSelection, NEVER_COVERED, select_gaps
from backfill_dagster.domain.gap_policy import GapPolicy, ledger_horizons
from backfill_dagster.domain.ledger import LedgerStatus, Partition
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.store.schema import bar_coverage as cov

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


def underived(
    engine: Engine, symbols: Sequence[str], first: date, last: date
) -> dict[Timeframe, dict[Partition, Gap]]:
    """h1/h4 partitions in [first, last] of these symbols whose m15 is stored (not failed) but that
    were never derived (missing), failed, or were derived from an m15 fetch replaced since (stale;
    rows from before that was recorded: m15 fetched after they were derived)."""
    out: dict[Timeframe, dict[Partition, Gap]] = {t: {} for t in Timeframe if not t.is_fetched}
    if not symbols or last < first:
        return out
    m15, derived = cov.alias("m15"), cov.alias("derived")
    built_from = sa.func.coalesce(derived.c.source_fetched_at, derived.c.updated_at)
    with engine.connect() as conn:
        for timeframe in out:
            joined = m15.outerjoin(derived, sa.and_(
                derived.c.symbol == m15.c.symbol, derived.c.session == m15.c.session,
                derived.c.timeframe == timeframe.value,
            ))
            query = (
                sa.select(m15.c.symbol, m15.c.session, derived.c.status, derived.c.updated_at, derived.c.attempts)
                .select_from(joined)
                .where(
                    m15.c.timeframe == Timeframe.M15.value,
                    m15.c.symbol.in_(list(symbols)),
                    m15.c.session.between(first, last),
                    m15.c.status != LedgerStatus.FAILED.value,
                    sa.or_(derived.c.status.is_(None), derived.c.status == LedgerStatus.FAILED.value,
                           m15.c.fetched_at > built_from),
                )
            )
            table = out[timeframe]
            for symbol, session, status, updated_at, attempts in conn.execute(query):
                if status is None:
                    table[(symbol, session)] = NEVER_COVERED
                elif status == LedgerStatus.FAILED.value:
                    table[(symbol, session)] = Gap(GapReason.FAILED, updated_at, int(attempts))
                else:
                    table[(symbol, session)] = Gap(GapReason.STALE, updated_at, int(attempts))
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
    engine: Engine,
    symbols: Sequence[str],
    horizons: Mapping[Timeframe, Sequence[date]],
    derive_span: tuple[date, date] | None = None,
) -> dict[Timeframe, dict[Partition, Gap]]:
    """Every gap of these symbols in each timeframe's horizon (a contiguous list of sessions):
    missing, partial (every horizon session has closed), empty and failed partitions; and, over
    `derive_span` (first, last session), every h1/h4 partition to derive from stored m15."""
    wanted = set(symbols)
    ranges = _ranges(horizons)
    rows = row_counts(engine, ranges)
    opened = open_gaps(engine, ranges)
    gaps: dict[Timeframe, dict[Partition, Gap]] = {t: {} for t in horizons}
    stale: dict[Timeframe, dict[Partition, Gap]] = {}
    if derive_span is not None:
        for timeframe, found in underived(engine, symbols, *derive_span).items():
            gaps.setdefault(timeframe, {}).update(found)
            stale[timeframe] = {p: g for p, g in found.items() if g.reason is GapReason.STALE}
    for timeframe, days in horizons.items():
        if not days:
            continue
        table = gaps[timeframe]
        table.update((p, g) for p, g in opened[timeframe].items() if p[0] in wanted)
        # An h1/h4 row left empty by an empty m15 follows it, so its own row is not asked again:
        # once m15 has been fetched again, it is stale (to derive), not empty.
        for partition, gap in stale.get(timeframe, {}).items():
            if table[partition].reason is GapReason.EMPTY:
                table[partition] = gap
        counts = rows[timeframe]
        short = [s for s in symbols if counts.get(s, 0) < len(days)]
        for symbol, sessions in uncovered_sessions(engine, timeframe, short, days).items():
            table.update(((symbol, session), NEVER_COVERED) for session in sessions)
    return gaps


def requested_gaps(
    engine: Engine,
    timeframe: Timeframe,
    symbols: Sequence[str],
    sessions: Sequence[date],
    *,
    policy: GapPolicy,
    now: pd.Timestamp,
    still_open: Collection[date] = (),
) -> GapSelection:
    """The gaps of these symbols x sessions (ascending, contiguous) of one timeframe to ask for now,
    by the gap sensor's rule (find_gaps, then select_gaps) under `policy` — `ensure-coverage` passes
    `GapPolicy.on_request()`. Unlike the sensor's horizons, `sessions` may hold sessions that have
    not closed yet (`still_open`): a partial row there is what the providers have now, not a gap.
    h1/h4 count their stale rows (derived from an m15 fetch replaced since) and read their m15 over
    the same sessions: `intraday` holds those whose m15 must be fetched first."""
    if not symbols or not sessions:
        return select_gaps({}, {}, policy=policy, now=now)
    wanted = {timeframe: list(sessions)}
    span = None if timeframe.is_fetched else (sessions[0], sessions[-1])
    gaps = find_gaps(engine, symbols, ledger_horizons(wanted), span)
    if still_open:
        opened = set(still_open)
        for table in gaps.values():
            for partition in [p for p, g in table.items() if g.reason is GapReason.PARTIAL and p[1] in opened]:
                del table[partition]
    return select_gaps(gaps, wanted, policy=policy, now=now)

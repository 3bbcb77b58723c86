"""Writing and reading bars: atomic partition replaces with the coverage ledger, and quarantine.

A partition (symbol x timeframe x session) is replaced in one transaction: delete its bars, insert
the new ones, upsert its coverage row. Re-running is idempotent and a crash leaves the old or the new
bars, never a mix. Whether an answer may replace what is stored is decided inside that transaction
(`backfill_dagster.domain.ledger.judge`): a worse answer never replaces better stored bars. Concurrent
writers of the same symbol and timeframe are serialised by a transaction-scoped advisory lock (taken
in sorted order, so they cannot deadlock); a derivation holds its source's lock shared while it reads
m15 and writes h1/h4, so m15 cannot change between the two. On PostgreSQL the insert is a COPY.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from fractions import Fraction

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine

from backfill_dagster.domain.bars import bars_frame, empty_bars
from backfill_dagster.domain.calendar import NEW_YORK, SessionCalendar, contiguous_runs, epoch_ns, xnys
from backfill_dagster.domain.ledger import Decision, LedgerStatus, Partition, Stored, judge
from backfill_dagster.domain.split_basis import missing_bars
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.store.database import result_frame, shared_engine
from backfill_dagster.store.ledger_rule import status_recorded
from backfill_dagster.store.pg_copy import copy_frame, read_bar_ranges
from backfill_dagster.store.pg_statements import (
    DELETE_BAR_RANGES,
    LOCK_PARTITIONS,
    LOCK_PARTITIONS_SHARED,
    array_literal,
    coverage_upsert,
)
from backfill_dagster.store.schema import BAR_STORE_COLUMNS, bar_coverage, ohlc_bars, rejected_bars


@dataclass(frozen=True)
class CoverageEntry:
    """What an answer holds for one partition: its bars, and whether the session had closed."""

    symbol: str
    session: date
    bars: int
    expected: int
    session_closed: bool
    source_fetched_at: datetime | None = None  # h1/h4: the fetched_at of the m15 row used


@dataclass
class WriteResult:
    """What one replace did: partitions written, and the decision for every partition offered."""

    bars: int = 0
    written: list[Partition] = field(default_factory=list)
    decisions: dict[Partition, Decision] = field(default_factory=dict)
    stored: dict[Partition, Stored] = field(default_factory=dict)  # the ledger's rows before the write
    unexplained: dict[Partition, str] = field(default_factory=dict)  # a repair's fewer bars the split does not explain

    def refused(self) -> dict[Partition, Decision]:
        return {p: d for p, d in self.decisions.items() if d.refused}

    def kept(self) -> list[Partition]:
        return [p for p, d in self.decisions.items() if d is Decision.KEEP]


class BarStore:
    """The bars, coverage ledger and quarantine, on PostgreSQL or SQLite."""

    def __init__(self, engine: Engine, calendar: SessionCalendar | None = None):
        self.engine = engine
        self.calendar = calendar or xnys()

    @classmethod
    def open(cls, url: str, calendar: SessionCalendar | None = None) -> BarStore:
        return cls(shared_engine(url), calendar)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    # ------------------------------------------------------------------ writes
    def replace_partitions(
        self,
        timeframe: Timeframe,
        bars: pd.DataFrame,
        coverage: Sequence[CoverageEntry],
        *,
        provider: str,
        adjustment: str,
        fetched_at: pd.Timestamp,
        run_id: str | None = None,
        allow_fewer: bool = False,
        rewrite_reason: str | None = None,
        split_ratio: Fraction | None = None,
    ) -> WriteResult:
        """Replace the bars of the partitions in `coverage` with `bars` (valid bars of exactly
        those partitions) and record their coverage, in one transaction — each partition only if
        the ledger's rule lets this answer replace what is stored (`allow_fewer`: a final answer
        with fewer bars may replace final ones). `rewrite_reason`: why the run rewrites them on
        purpose (a split repair), kept in the ledger. `split_ratio`: the split a repair run
        re-fetches for; a final answer with fewer bars replaces final ones only if that split's new
        basis explains every missing bar (domain/split_basis.py)."""
        if not coverage:
            return WriteResult()
        with self.engine.begin() as conn:
            self._lock(conn, timeframe, {c.symbol for c in coverage})
            return self._replace(conn, timeframe, bars, coverage, provider=provider, adjustment=adjustment,
                                 fetched_at=fetched_at, run_id=run_id, allow_fewer=allow_fewer,
                                 rewrite_reason=rewrite_reason, split_ratio=split_ratio)

    @contextmanager
    def derivation(self, source: Timeframe, target: Timeframe, symbols: Iterable[str]) -> Iterator[Derivation]:
        """One transaction that reads `source` bars and replaces `target` bars of these symbols,
        holding the source's lock shared (writers of the source wait; other derivations do not) and
        the target's exclusively: what it writes was built from the source as it is stored."""
        symbols = set(symbols)
        with self.engine.begin() as conn:
            self._lock(conn, source, symbols, shared=True)
            self._lock(conn, target, symbols)
            yield Derivation(self, conn, source, target)

    def record_failures(
        self,
        timeframe: Timeframe,
        failures: dict[Partition, str],
        *,
        expected: dict[date, int],
        at: pd.Timestamp,
        run_id: str | None = None,
    ) -> None:
        """Mark partitions failed with their error. Their bars (from any earlier success) stay, and
        so do the counts that success recorded; `expected` is only used for a first attempt."""
        self._record_unwritten(timeframe, failures, LedgerStatus.FAILED, expected=expected, at=at, run_id=run_id)

    def record_refusals(
        self,
        timeframe: Timeframe,
        notes: dict[Partition, str],
        *,
        expected: dict[date, int],
        at: pd.Timestamp,
        run_id: str | None = None,
    ) -> None:
        """Record answers that were not written because they held no bars, or fewer than final
        stored ones: a partition whose stored bars are final stays `complete` (they are still the
        best answer), any other is `empty`. Stored bars are never touched."""
        self._record_unwritten(timeframe, notes, LedgerStatus.EMPTY, expected=expected, at=at, run_id=run_id,
                               keep_final=True)

    def quarantine(
        self,
        rejected: pd.DataFrame,
        timeframe: Timeframe,
        *,
        provider: str,
        at: pd.Timestamp,
        run_id: str | None = None,
    ) -> int:
        """Keep rejected bars with their reasons, so nothing a provider sent is lost."""
        if rejected.empty:
            return 0
        frame = rejected.astype(object).where(rejected.notna(), None)
        records = []
        for row in frame.itertuples(index=False):
            ts = row.ts
            records.append(
                {
                    "symbol": None if row.symbol is None else str(row.symbol)[:64],
                    "timeframe": timeframe.value,
                    "session": row.session,
                    "ts": None if ts is None else pd.Timestamp(ts).to_pydatetime(),
                    **{c: _float_or_none(getattr(row, c)) for c in ("open", "high", "low", "close", "volume", "vwap")},
                    "trade_count": None if row.trade_count is None else int(row.trade_count),
                    "provider": provider,
                    "reason": row.reason,
                    "run_id": run_id,
                    "rejected_at": at.to_pydatetime(),
                }
            )
        with self.engine.begin() as conn:
            conn.execute(rejected_bars.insert(), records)
        return len(records)

    # ------------------------------------------------------------------ reads
    def read_bars(
        self, timeframe: Timeframe, partitions: Iterable[Partition], *, conn: Connection | None = None
    ) -> pd.DataFrame:
        """The stored bars of these partitions: a bar frame plus session, provider, adjustment.

        PostgreSQL: one COPY parsed by pandas (pg_copy.read_bar_ranges), no Python object per value.
        SQLite: rows turned into columns `READ_BATCH_ROWS` at a time, each text value kept once: a
        row as Python objects (~500 bytes: a float object per price, a datetime, three strings) is
        several times its place in the frame, and a box's bars as rows were most of the peak of
        the steps that read them (derivations, checks: docs/benchmarks.md)."""
        ranges = self._ranges(partitions)
        parts = []
        with _connection(self.engine, conn) as c:
            if self.is_postgres and ranges:
                raw = read_bar_ranges(c.connection.driver_connection, timeframe.value, ranges)
                if len(raw):
                    parts.append(_stored_bars(raw, None))
            elif ranges:
                shared: dict[str, str] = {}  # each symbol, provider and adjustment text once
                for bounds in ranges:
                    result = c.execute(self._range_query(timeframe, *bounds))
                    columns = list(result.keys())
                    for rows in result.partitions(READ_BATCH_ROWS):
                        parts.append(_stored_bars(pd.DataFrame([tuple(r) for r in rows], columns=columns), shared))
        if not parts:
            return _with_session(empty_bars().assign(provider=[], adjustment=[]), self.calendar, timeframe)
        out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        return _with_session(out, self.calendar, timeframe, copy=False)

    @staticmethod
    def _range_query(timeframe: Timeframe, symbol: str, lo: pd.Timestamp, hi: pd.Timestamp) -> sa.Select:
        return (
            sa.select(*[ohlc_bars.c[col] for col in BAR_STORE_COLUMNS if col != "timeframe"])
            .where(ohlc_bars.c.symbol == symbol)
            .where(ohlc_bars.c.timeframe == timeframe.value)
            .where(ohlc_bars.c.ts >= lo.to_pydatetime())
            .where(ohlc_bars.c.ts < hi.to_pydatetime())
            .order_by(ohlc_bars.c.ts)
        )

    def coverage(
        self,
        timeframe: Timeframe | None = None,
        symbols: Sequence[str] | None = None,
        *,
        sessions: tuple[date, date] | None = None,
        conn: Connection | None = None,
    ) -> pd.DataFrame:
        """Coverage ledger rows, optionally for one timeframe, some symbols and the sessions
        `sessions` = (first, last), both included."""
        query = sa.select(bar_coverage).order_by(
            bar_coverage.c.symbol, bar_coverage.c.timeframe, bar_coverage.c.session
        )
        if timeframe is not None:
            query = query.where(bar_coverage.c.timeframe == timeframe.value)
        if symbols is not None:
            query = query.where(bar_coverage.c.symbol.in_(list(symbols)))
        if sessions is not None:
            query = query.where(bar_coverage.c.session.between(*sessions))
        with _connection(self.engine, conn) as c:
            result = c.execute(query)
            return result_frame(result)

    def committed_by(
        self, timeframe: Timeframe, partitions: Iterable[Partition], run_ids: Sequence[str],
        *, conn: Connection | None = None,
    ) -> set[Partition]:
        """Of these partitions, those whose ledger row is `complete` as written by one of these runs
        and still theirs (h1/h4: derived from the m15 fetch stored now). What a retry of those runs
        need not fetch or derive again."""
        wanted = set(partitions)
        if not wanted or not run_ids:
            return set()
        symbols = sorted({s for s, _ in wanted})
        sessions = [d for _, d in wanted]
        row = bar_coverage
        query = sa.select(row.c.symbol, row.c.session).where(
            row.c.timeframe == timeframe.value,
            row.c.status == LedgerStatus.COMPLETE.value,
            row.c.run_id.in_(list(run_ids)),
            row.c.symbol.in_(symbols),
            row.c.session.between(min(sessions), max(sessions)),
        )
        if timeframe.source is not None:
            source = bar_coverage.alias("source")
            query = query.join(source, sa.and_(
                source.c.symbol == row.c.symbol, source.c.session == row.c.session,
                source.c.timeframe == timeframe.source.value,
                source.c.fetched_at == row.c.source_fetched_at,
            ))
        with _connection(self.engine, conn) as c:
            found = {
                (symbol, session if isinstance(session, date) else pd.Timestamp(session).date())
                for symbol, session in c.execute(query)
            }
        return found & wanted

    # ------------------------------------------------------------------ internals
    def _replace(
        self,
        conn: Connection,
        timeframe: Timeframe,
        bars: pd.DataFrame,
        coverage: Sequence[CoverageEntry],
        *,
        provider: str,
        adjustment: str,
        fetched_at: pd.Timestamp,
        run_id: str | None,
        allow_fewer: bool,
        follow_source: bool = False,
        rewrite_reason: str | None = None,
        split_ratio: Fraction | None = None,
    ) -> WriteResult:
        """The write itself, on a connection that already holds the timeframe's locks.
        `follow_source`: derived bars, written whatever is stored (they mirror their source)."""
        stored = self._stored(conn, timeframe, [(c.symbol, c.session) for c in coverage])
        result = WriteResult(stored=stored)
        chosen = []
        for entry in coverage:
            partition = (entry.symbol, entry.session)
            decision = Decision.WRITE if follow_source else judge(
                stored.get(partition), entry.bars, entry.session_closed, allow_fewer=allow_fewer
            )
            if decision is Decision.FEWER and split_ratio is not None:
                # Read only for the rare answer with fewer bars, under the lock already held.
                offered = bars[(bars["symbol"] == entry.symbol)
                               & (_sessions_of(bars, self.calendar, timeframe) == entry.session)] if len(bars) else bars
                gap = missing_bars(self.read_bars(timeframe, [partition], conn=conn), offered, split_ratio)
                if gap.unexplained:
                    result.unexplained[partition] = gap.describe(split_ratio)
                else:
                    decision = Decision.WRITE
            result.decisions[partition] = decision
            if decision is Decision.WRITE:
                chosen.append(entry)
        if not chosen:
            return result
        partitions = [(c.symbol, c.session) for c in chosen]
        if len(chosen) < len(coverage) and len(bars):
            keys = pd.MultiIndex.from_arrays([bars["symbol"], _sessions_of(bars, self.calendar, timeframe)])
            bars = bars[keys.isin(partitions)]
        rows = bars_frame(bars) if len(bars) else empty_bars()
        rows.insert(1, "timeframe", timeframe.value)
        rows["provider"] = provider
        rows["adjustment"] = adjustment
        stamp = fetched_at.to_pydatetime()
        self._delete(conn, timeframe, partitions)
        self._insert_bars(conn, rows)
        self._upsert_coverage(
            conn,
            varying={
                "symbol": [c.symbol for c in chosen],
                "session": [c.session for c in chosen],
                "status": [_written_status(c).value for c in chosen],
                "bars": [c.bars for c in chosen],
                "expected": [c.expected for c in chosen],
                "session_closed": [c.session_closed for c in chosen],
                "source_fetched_at": [c.source_fetched_at for c in chosen],
            },
            constant={
                "timeframe": timeframe.value,
                "provider": provider,
                "fetched_at": stamp,
                "error": None,
                "run_id": run_id,
                "updated_at": stamp,
                "rewrite_reason": rewrite_reason[:500] if rewrite_reason else None,
            },
            replaced=_ON_SUCCESS,
        )
        result.bars = len(rows)
        result.written = partitions
        return result

    def _record_unwritten(
        self,
        timeframe: Timeframe,
        notes: dict[Partition, str],
        status: LedgerStatus,
        *,
        expected: dict[date, int],
        at: pd.Timestamp,
        run_id: str | None,
        keep_final: bool = False,
    ) -> None:
        if not notes:
            return
        ordered = sorted(notes.items())
        with self.engine.begin() as conn:
            self._lock(conn, timeframe, {s for (s, _), _ in ordered})
            self._upsert_coverage(
                conn,
                varying={
                    "symbol": [s for (s, _), _ in ordered],
                    "session": [d for (_, d), _ in ordered],
                    "expected": [int(expected.get(d, 0)) for (_, d), _ in ordered],
                    "error": [note[:2000] for _, note in ordered],
                },
                constant={
                    "timeframe": timeframe.value,
                    "status": status.value,
                    "bars": 0,
                    # A first answer without bars was a final answer; an update keeps the flag of
                    # the bars stored (not in _ON_FAILURE).
                    "session_closed": status is LedgerStatus.EMPTY,
                    "run_id": run_id,
                    "updated_at": at.to_pydatetime(),
                },
                replaced=_ON_FAILURE,
                keep_final=keep_final,
            )

    def _stored(self, conn: Connection, timeframe: Timeframe, partitions: Sequence[Partition]) -> dict[Partition, Stored]:
        """The ledger's rows of these partitions (read under the write lock)."""
        wanted = set(partitions)
        symbols = sorted({s for s, _ in wanted})
        sessions = [d for _, d in wanted]
        query = sa.select(
            bar_coverage.c.symbol, bar_coverage.c.session, bar_coverage.c.bars, bar_coverage.c.session_closed
        ).where(
            bar_coverage.c.timeframe == timeframe.value,
            bar_coverage.c.symbol.in_(symbols),
            bar_coverage.c.session.between(min(sessions), max(sessions)),
        )
        out = {}
        for symbol, session, bars, closed in conn.execute(query):
            key = (symbol, pd.Timestamp(session).date() if not isinstance(session, date) else session)
            if key in wanted:
                out[key] = Stored(int(bars), bool(closed))
        return out

    def _ranges(self, partitions: Iterable[Partition]) -> list[tuple[str, pd.Timestamp, pd.Timestamp]]:
        """[start, end) UTC ranges covering the given partitions, one per contiguous session run.

        Every bar of a session lies between its 00:00 and the next day's 00:00 New York (d1 bars at
        00:00, intraday bars 04:00-20:00), and days between consecutive sessions hold no bars, so a
        run of consecutive sessions is one range on the primary key.
        """
        by_symbol: dict[str, set[date]] = defaultdict(set)
        for symbol, session in partitions:
            by_symbol[symbol].add(session)
        out = []
        for symbol in sorted(by_symbol):
            for run in contiguous_runs(by_symbol[symbol], self.calendar):
                out.append((symbol, _ny_midnight(run[0]), _ny_midnight(run[-1] + timedelta(days=1))))
        return out

    def _lock(self, conn: Connection, timeframe: Timeframe, symbols: set[str], *, shared: bool = False) -> None:
        if not self.is_postgres:
            return  # SQLite: BEGIN IMMEDIATE already holds the database's single write lock
        statement = LOCK_PARTITIONS_SHARED if shared else LOCK_PARTITIONS
        for symbol in sorted(symbols):
            conn.execute(statement, {"key": f"ohlc_bars|{symbol}|{timeframe.value}"})

    def _delete(self, conn: Connection, timeframe: Timeframe, partitions: Sequence[Partition]) -> None:
        ranges = self._ranges(partitions)
        if self.is_postgres:
            # One statement for any number of ranges.
            conn.execute(
                DELETE_BAR_RANGES,
                {
                    "symbols": [s for s, _, _ in ranges],
                    "los": [lo.to_pydatetime() for _, lo, _ in ranges],
                    "his": [hi.to_pydatetime() for _, _, hi in ranges],
                    "timeframe": timeframe.value,
                },
            )
            return
        statement = sa.delete(ohlc_bars).where(
            ohlc_bars.c.symbol == sa.bindparam("b_symbol"),
            ohlc_bars.c.timeframe == timeframe.value,
            ohlc_bars.c.ts >= sa.bindparam("b_lo", type_=ohlc_bars.c.ts.type),
            ohlc_bars.c.ts < sa.bindparam("b_hi", type_=ohlc_bars.c.ts.type),
        )
        conn.execute(
            statement,
            [{"b_symbol": s, "b_lo": lo.to_pydatetime(), "b_hi": hi.to_pydatetime()} for s, lo, hi in ranges],
        )

    def _insert_bars(self, conn: Connection, rows: pd.DataFrame) -> None:
        if rows.empty:
            return
        rows = rows[BAR_STORE_COLUMNS]
        if self.is_postgres:
            copy_frame(conn.connection.driver_connection, rows)
            return
        records = rows.astype(object).where(rows.notna(), None)
        records["ts"] = [t.to_pydatetime() for t in rows["ts"]]
        conn.execute(ohlc_bars.insert(), records.to_dict("records"))

    def _upsert_coverage(
        self,
        conn: Connection,
        *,
        varying: dict[str, list],
        constant: dict,
        replaced: tuple[str, ...],
        keep_final: bool = False,
    ) -> None:
        """Insert or update ledger rows: `varying` holds one list per column (a value per row),
        `constant` the values shared by every row; `replaced` the columns an update overwrites.
        `attempts` counts consecutive attempts ending in the same status. `keep_final`: a row
        whose stored bars are final stays `complete` whatever status is written."""
        if self.is_postgres:
            # One statement whatever the row count: the varying columns travel as array literals
            # that unnest() turns back into rows (executemany would be a round trip per row).
            names = tuple(varying)
            params = {c: array_literal(values) for c, values in varying.items()} | constant
            conn.execute(coverage_upsert(names, tuple(constant), replaced, keep_final, _STICKY), params)
            return
        statement = sqlite.insert(bar_coverage)
        new_status = status_recorded(statement.excluded.status) if keep_final else statement.excluded.status
        updates = {c: statement.excluded[c] for c in replaced}
        for c in _STICKY:
            if c in updates:
                updates[c] = sa.func.coalesce(statement.excluded[c], bar_coverage.c[c])
        updates["status"] = new_status
        updates["attempts"] = sa.case(
            (bar_coverage.c.status == new_status, bar_coverage.c.attempts + 1), else_=1
        )
        statement = statement.on_conflict_do_update(
            index_elements=[bar_coverage.c.symbol, bar_coverage.c.timeframe, bar_coverage.c.session],
            set_=updates,
        )
        count = len(next(iter(varying.values())))
        rows = [{c: values[i] for c, values in varying.items()} | constant for i in range(count)]
        conn.execute(statement, rows)


class Derivation:
    """Reads and writes inside `BarStore.derivation`'s transaction."""

    def __init__(self, store: BarStore, conn: Connection, source: Timeframe, target: Timeframe):
        self._store, self._conn = store, conn
        self.source, self.target = source, target

    def read_source(self, partitions: Iterable[Partition]) -> pd.DataFrame:
        return self._store.read_bars(self.source, partitions, conn=self._conn)

    def source_ledger(self, symbols: Sequence[str], sessions: tuple[date, date] | None = None) -> pd.DataFrame:
        return self._store.coverage(self.source, symbols, sessions=sessions, conn=self._conn)

    def replace(self, bars: pd.DataFrame, coverage: Sequence[CoverageEntry], *, provider: str, adjustment: str,
                fetched_at: pd.Timestamp, run_id: str | None = None, rewrite_reason: str | None = None) -> WriteResult:
        # Derived bars follow their source exactly: fewer bars, or none when m15 is empty.
        return self._store._replace(self._conn, self.target, bars, coverage, provider=provider, adjustment=adjustment,
                                    fetched_at=fetched_at, run_id=run_id, allow_fewer=True, follow_source=True,
                                    rewrite_reason=rewrite_reason)


def _written_status(entry: CoverageEntry) -> LedgerStatus:
    if not entry.session_closed:
        return LedgerStatus.PARTIAL
    return LedgerStatus.COMPLETE if entry.bars else LedgerStatus.EMPTY  # empty: derived from an empty m15


@contextmanager
def _connection(engine: Engine, conn: Connection | None) -> Iterator[Connection]:
    if conn is not None:
        yield conn
        return
    with engine.connect() as fresh:
        yield fresh


def _sessions_of(rows: pd.DataFrame, calendar: SessionCalendar, timeframe: Timeframe):
    if "session" in rows.columns:
        return rows["session"]
    return calendar.locate(rows["ts"], timeframe, extended=True)["session"]


_ON_SUCCESS = (
    "status", "bars", "expected", "provider", "fetched_at", "session_closed", "error", "run_id", "updated_at",
    "source_fetched_at", "rewrite_reason",
)
# Kept when a write does not say: an ordinary fetch does not erase why a repair rewrote the bars.
_STICKY = frozenset({"rewrite_reason"})
# An attempt that wrote nothing keeps what the last success recorded (its bars are still stored).
_ON_FAILURE = ("error", "run_id", "updated_at")

# Stored rows read at a time (read_bars).
READ_BATCH_ROWS = 20_000


def _stored_bars(raw: pd.DataFrame, shared: dict[str, str] | None) -> pd.DataFrame:
    """A bar frame plus provider and adjustment from rows read from ohlc_bars, with each text value
    one object however many rows hold it (`shared` collects them across parts; None: the frame's
    texts are shared already, as read_bar_ranges returns them)."""
    if shared is not None:
        for column in ("symbol", "provider", "adjustment"):
            raw[column] = pd.array([shared.setdefault(v, v) for v in raw[column]], dtype=raw[column].dtype)
    out = bars_frame(raw)
    out["provider"] = raw["provider"].to_numpy()
    out["adjustment"] = raw["adjustment"].to_numpy()
    return out


def _ny_midnight(day: date) -> pd.Timestamp:
    return pd.Timestamp(day).tz_localize(NEW_YORK).tz_convert("UTC")


def _with_session(frame: pd.DataFrame, calendar: SessionCalendar, timeframe: Timeframe, copy: bool = True) -> pd.DataFrame:
    """The frame with each bar's session (`copy`: a new frame; else the column is added to this one)."""
    if copy:
        frame = frame.copy()
    if frame.empty:
        frame["session"] = pd.Series([], dtype=object)
        return frame
    frame["session"] = calendar.session_dates(calendar.locate_ns(epoch_ns(frame["ts"]), timeframe, extended=True)[0])
    return frame


def _float_or_none(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value != value else value

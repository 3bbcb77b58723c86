"""Writing and reading bars: atomic partition replaces with the coverage ledger, and quarantine.

A partition (symbol x timeframe x session) is replaced in one transaction: delete its bars, insert
the new ones, upsert its coverage row. Re-running is idempotent and a crash leaves the old or the new
bars, never a mix. Concurrent writers of the same symbol and timeframe are serialised by a
transaction-scoped advisory lock (taken in sorted order, so they cannot deadlock); without it two
overlapping replaces can both delete and then both insert — the duplicate-key failures of the
system this replaces. On PostgreSQL the insert is a COPY.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from backfill_dagster.bars import BAR_COLUMNS, bars_frame, empty_bars
from backfill_dagster.calendar import NEW_YORK, SessionCalendar, contiguous_runs, xnys
from backfill_dagster.store import pg_copy
from backfill_dagster.store.database import shared_engine
from backfill_dagster.store.schema import BAR_STORE_COLUMNS, bar_coverage, ohlc_bars, rejected_bars
from backfill_dagster.timeframes import Timeframe

Partition = tuple[str, date]  # (symbol, session)

COVERAGE_STATUSES = ("complete", "partial", "failed")


@dataclass(frozen=True)
class CoverageEntry:
    """What a successful write records about one partition."""

    symbol: str
    session: date
    bars: int
    expected: int
    session_closed: bool


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
    ) -> int:
        """Replace the bars of every partition in `coverage` with `bars` (valid bars of exactly
        those partitions), and record their coverage, in one transaction. Returns bars written."""
        if not coverage:
            return 0
        partitions = [(c.symbol, c.session) for c in coverage]
        rows = bars_frame(bars) if len(bars) else empty_bars()
        rows.insert(1, "timeframe", timeframe.value)
        rows["provider"] = provider
        rows["adjustment"] = adjustment
        stamp = fetched_at.to_pydatetime()
        with self.engine.begin() as conn:
            self._lock(conn, timeframe, {s for s, _ in partitions})
            self._delete(conn, timeframe, partitions)
            self._insert_bars(conn, rows)
            self._upsert_coverage(
                conn,
                varying={
                    "symbol": [c.symbol for c in coverage],
                    "session": [c.session for c in coverage],
                    "status": ["complete" if c.session_closed else "partial" for c in coverage],
                    "bars": [c.bars for c in coverage],
                    "expected": [c.expected for c in coverage],
                    "session_closed": [c.session_closed for c in coverage],
                },
                constant={
                    "timeframe": timeframe.value,
                    "provider": provider,
                    "fetched_at": stamp,
                    "error": None,
                    "run_id": run_id,
                    "updated_at": stamp,
                },
                replaced=_ON_SUCCESS,
            )
        return len(rows)

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
        if not failures:
            return
        ordered = sorted(failures.items())
        with self.engine.begin() as conn:
            self._upsert_coverage(
                conn,
                varying={
                    "symbol": [s for (s, _), _ in ordered],
                    "session": [d for (_, d), _ in ordered],
                    "expected": [int(expected.get(d, 0)) for (_, d), _ in ordered],
                    "error": [error[:2000] for _, error in ordered],
                },
                constant={
                    "timeframe": timeframe.value,
                    "status": "failed",
                    "bars": 0,
                    "run_id": run_id,
                    "updated_at": at.to_pydatetime(),
                },
                replaced=_ON_FAILURE,
            )

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
    def read_bars(self, timeframe: Timeframe, partitions: Iterable[Partition]) -> pd.DataFrame:
        """The stored bars of these partitions: a bar frame plus session, provider, adjustment."""
        ranges = self._ranges(partitions)
        if not ranges:
            return _with_session(empty_bars().assign(provider=[], adjustment=[]), self.calendar, timeframe)
        frames = []
        with self.engine.connect() as conn:
            for symbol, lo, hi in ranges:
                query = (
                    sa.select(*[ohlc_bars.c[c] for c in BAR_STORE_COLUMNS if c != "timeframe"])
                    .where(ohlc_bars.c.symbol == symbol)
                    .where(ohlc_bars.c.timeframe == timeframe.value)
                    .where(ohlc_bars.c.ts >= lo.to_pydatetime())
                    .where(ohlc_bars.c.ts < hi.to_pydatetime())
                    .order_by(ohlc_bars.c.ts)
                )
                result = conn.execute(query)
                frames.append(pd.DataFrame(result.fetchall(), columns=list(result.keys())))
        frames = [f for f in frames if not f.empty]
        if not frames:
            return _with_session(empty_bars().assign(provider=[], adjustment=[]), self.calendar, timeframe)
        raw = pd.concat(frames, ignore_index=True)
        out = bars_frame(raw)
        out["provider"] = raw["provider"].to_numpy()
        out["adjustment"] = raw["adjustment"].to_numpy()
        return _with_session(out, self.calendar, timeframe)

    def coverage(self, timeframe: Timeframe | None = None, symbols: Sequence[str] | None = None) -> pd.DataFrame:
        """Coverage ledger rows, optionally for one timeframe and some symbols."""
        query = sa.select(bar_coverage).order_by(
            bar_coverage.c.symbol, bar_coverage.c.timeframe, bar_coverage.c.session
        )
        if timeframe is not None:
            query = query.where(bar_coverage.c.timeframe == timeframe.value)
        if symbols is not None:
            query = query.where(bar_coverage.c.symbol.in_(list(symbols)))
        with self.engine.connect() as conn:
            result = conn.execute(query)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))

    # ------------------------------------------------------------------ internals
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

    def _lock(self, conn: Connection, timeframe: Timeframe, symbols: set[str]) -> None:
        if not self.is_postgres:
            return  # SQLite: BEGIN IMMEDIATE already holds the database's single write lock
        for symbol in sorted(symbols):
            conn.execute(_PG_LOCK, {"key": f"ohlc_bars|{symbol}|{timeframe.value}"})

    def _delete(self, conn: Connection, timeframe: Timeframe, partitions: Sequence[Partition]) -> None:
        ranges = self._ranges(partitions)
        if self.is_postgres:
            # One statement for any number of ranges.
            conn.execute(
                _PG_DELETE,
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
        self, conn: Connection, *, varying: dict[str, list], constant: dict, replaced: tuple[str, ...]
    ) -> None:
        """Insert or update ledger rows: `varying` holds one list per column (a value per row),
        `constant` the values shared by every row; `replaced` the columns an update overwrites."""
        if self.is_postgres:
            # One statement whatever the row count: the varying columns travel as array literals
            # that unnest() turns back into rows (executemany would be a round trip per row).
            names = tuple(varying)
            params = {c: _pg_array_literal(values) for c, values in varying.items()} | constant
            conn.execute(_pg_coverage_upsert(names, tuple(constant), replaced), params)
            return
        statement = sqlite.insert(bar_coverage)
        updates = {c: statement.excluded[c] for c in replaced}
        updates["attempts"] = bar_coverage.c.attempts + 1
        statement = statement.on_conflict_do_update(
            index_elements=[bar_coverage.c.symbol, bar_coverage.c.timeframe, bar_coverage.c.session],
            set_=updates,
        )
        count = len(next(iter(varying.values())))
        rows = [{c: values[i] for c, values in varying.items()} | constant for i in range(count)]
        conn.execute(statement, rows)


_ON_SUCCESS = ("status", "bars", "expected", "provider", "fetched_at", "session_closed", "error", "run_id", "updated_at")
# A failure keeps what the last success recorded (its bars are still stored).
_ON_FAILURE = ("status", "error", "run_id", "updated_at")

_PG_LOCK = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_PG_DELETE = sa.text(
    "DELETE FROM ohlc_bars b USING unnest(CAST(:symbols AS text[]), CAST(:los AS timestamptz[]), "
    "CAST(:his AS timestamptz[])) AS r(symbol, lo, hi) "
    "WHERE b.symbol = r.symbol AND b.timeframe = :timeframe AND b.ts >= r.lo AND b.ts < r.hi"
)

_PG_TYPES = {
    "symbol": "text", "timeframe": "text", "session": "date", "status": "text", "bars": "integer",
    "expected": "integer", "provider": "text", "fetched_at": "timestamptz", "session_closed": "boolean",
    "error": "text", "run_id": "text", "updated_at": "timestamptz",
}


def _pg_array_literal(values: list) -> str:
    """A PostgreSQL array literal, e.g. '{2024-01-02,2024-01-03}': one text parameter instead of
    thousands of elements for the driver to adapt one by one. Used for symbols (validated: no
    separators or quotes), dates, numbers and booleans only; anything else is quoted."""
    def item(v) -> str:
        if v is None:
            return "NULL"
        if isinstance(v, bool):
            return "t" if v else "f"
        if isinstance(v, (int, float, date)) and not isinstance(v, datetime):
            return v.isoformat() if isinstance(v, date) else repr(v)
        text = str(v.isoformat() if isinstance(v, datetime) else v)
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "{" + ",".join(item(v) for v in values) + "}"


@functools.lru_cache(maxsize=64)
def _pg_coverage_upsert(
    varying: tuple[str, ...], constant: tuple[str, ...], replaced: tuple[str, ...]
) -> sa.TextClause:
    sets = ", ".join([f"{c} = EXCLUDED.{c}" for c in replaced] + ["attempts = bar_coverage.attempts + 1"])
    arrays = ", ".join(f"CAST(:{c} AS {_PG_TYPES[c]}[])" for c in varying)
    scalars = "".join(f", CAST(:{c} AS {_PG_TYPES[c]})" for c in constant)
    return sa.text(
        f"INSERT INTO bar_coverage ({', '.join(varying + constant)}) "
        f"SELECT u.*{scalars} FROM unnest({arrays}) AS u "
        f"ON CONFLICT (symbol, timeframe, session) DO UPDATE SET {sets}"
    )


BAR_COPY_TYPES = {
    "symbol": pg_copy.TEXT,
    "timeframe": pg_copy.TEXT,
    "ts": pg_copy.TIMESTAMPTZ,
    "open": pg_copy.FLOAT8,
    "high": pg_copy.FLOAT8,
    "low": pg_copy.FLOAT8,
    "close": pg_copy.FLOAT8,
    "volume": pg_copy.FLOAT8,
    "vwap": pg_copy.FLOAT8,
    "trade_count": pg_copy.INT8,
    "provider": pg_copy.TEXT,
    "adjustment": pg_copy.TEXT,
}


def copy_frame(pg_connection, rows: pd.DataFrame, table: str = "ohlc_bars") -> None:
    """COPY bar rows into a table over a psycopg 3 connection, in the binary format."""
    data = pg_copy.encode(rows, BAR_COPY_TYPES)
    with pg_connection.cursor() as cursor:
        with cursor.copy(f"COPY {table} ({', '.join(BAR_COPY_TYPES)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(data)


def _ny_midnight(day: date) -> pd.Timestamp:
    return pd.Timestamp(day).tz_localize(NEW_YORK).tz_convert("UTC")


def _with_session(frame: pd.DataFrame, calendar: SessionCalendar, timeframe: Timeframe) -> pd.DataFrame:
    frame = frame.copy()
    if frame.empty:
        frame["session"] = pd.Series([], dtype=object)
        return frame
    frame["session"] = calendar.locate(frame["ts"], timeframe, extended=True)["session"].to_numpy()
    return frame


def _float_or_none(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value != value else value

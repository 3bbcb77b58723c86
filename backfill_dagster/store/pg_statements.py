"""The PostgreSQL statements the bar store writes with: partition locks, range deletes, and the
ledger upsert over arrays (one parameter per column, not one per value)."""

from __future__ import annotations

import functools
from datetime import date, datetime

import sqlalchemy as sa

from backfill_dagster.store.ledger_rule import status_recorded_postgres_sql

LOCK_PARTITIONS = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
LOCK_PARTITIONS_SHARED = sa.text("SELECT pg_advisory_xact_lock_shared(hashtextextended(:key, 0))")
DELETE_BAR_RANGES = sa.text(
    "DELETE FROM ohlc_bars b USING unnest(CAST(:symbols AS text[]), CAST(:los AS timestamptz[]), "
    "CAST(:his AS timestamptz[])) AS r(symbol, lo, hi) "
    "WHERE b.symbol = r.symbol AND b.timeframe = :timeframe AND b.ts >= r.lo AND b.ts < r.hi"
)

COVERAGE_TYPES = {
    "symbol": "text", "timeframe": "text", "session": "date", "status": "text", "bars": "integer",
    "expected": "integer", "provider": "text", "fetched_at": "timestamptz", "session_closed": "boolean",
    "error": "text", "run_id": "text", "updated_at": "timestamptz", "source_fetched_at": "timestamptz",
    "rewrite_reason": "text",
}


def array_literal(values: list) -> str:
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
def coverage_upsert(
    varying: tuple[str, ...], constant: tuple[str, ...], replaced: tuple[str, ...], keep_final: bool = False,
    sticky: frozenset[str] = frozenset(),
) -> sa.TextClause:
    """INSERT ... SELECT unnest(arrays) ON CONFLICT DO UPDATE of ledger rows: `varying` columns as
    arrays, `constant` ones as scalars; `replaced` columns are updated (`sticky` ones only when the
    write gives a value); `keep_final` keeps a final row complete (store/ledger_rule.py)."""
    status = status_recorded_postgres_sql("EXCLUDED.status") if keep_final else "EXCLUDED.status"
    sets = ", ".join(
        [f"{c} = COALESCE(EXCLUDED.{c}, bar_coverage.{c})" if c in sticky else f"{c} = EXCLUDED.{c}"
         for c in replaced if c != "status"]
        + [f"status = {status}",
           f"attempts = CASE WHEN bar_coverage.status = {status} THEN bar_coverage.attempts + 1 ELSE 1 END"]
    )
    arrays = ", ".join(f"CAST(:{c} AS {COVERAGE_TYPES[c]}[])" for c in varying)
    scalars = "".join(f", CAST(:{c} AS {COVERAGE_TYPES[c]})" for c in constant)
    return sa.text(
        f"INSERT INTO bar_coverage ({', '.join(varying + constant)}) "
        f"SELECT u.*{scalars} FROM unnest({arrays}) AS u "
        f"ON CONFLICT (symbol, timeframe, session) DO UPDATE SET {sets}"
    )

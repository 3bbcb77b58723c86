"""The ledger's `complete` rule (domain/ledger.py `holds_final_bars`) as one SQL expression, which
the SQLite upsert uses as it is and the PostgreSQL statement as its compiled text: a row whose
stored bars came from a final answer, and are some, stays `complete` whatever is recorded over it.
tests/store/test_ledger_rule.py keeps this, both dialects and the Python rule equal."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from backfill_dagster.domain.ledger import LedgerStatus
from backfill_dagster.store.schema import bar_coverage


def holds_final_bars(row: sa.TableClause = bar_coverage) -> sa.ColumnElement[bool]:
    """`Stored.final` is the row's `session_closed`, `Stored.bars` its `bars`."""
    return sa.and_(row.c.session_closed, row.c.bars > 0)


def status_recorded(attempted: sa.ColumnElement[str], row: sa.TableClause = bar_coverage) -> sa.ColumnElement[str]:
    """The status an upsert writes: `complete` over final bars, else the attempt's (`attempted`)."""
    return sa.case((holds_final_bars(row), sa.literal(LedgerStatus.COMPLETE.value)), else_=attempted)


def status_recorded_postgres_sql(attempted: str = "EXCLUDED.status") -> str:
    """`status_recorded` as PostgreSQL text, for the statements written as text (store/pg_statements.py)."""
    expression = status_recorded(sa.literal_column(attempted))
    return str(expression.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))

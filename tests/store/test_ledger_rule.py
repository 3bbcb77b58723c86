"""The `complete` rule is written once (domain/ledger.py) and once as SQL (store/ledger_rule.py),
which SQLite's upsert and PostgreSQL's text statement both use: recorded over every kind of stored
row, on both databases, an answer without bars gets the status the Python rule says."""

from datetime import date, timedelta
from itertools import product

import pandas as pd
import sqlalchemy as sa

from backfill_dagster.domain.ledger import LedgerStatus, Stored, holds_final_bars, status_recorded
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.store.ledger_rule import status_recorded_postgres_sql
from backfill_dagster.store.pg_statements import coverage_upsert
from backfill_dagster.store.schema import bar_coverage

AT = pd.Timestamp("2024-12-02 22:00", tz="UTC")
FIRST = date(2024, 11, 1)
# every kind of stored row: none, or (status, bars, session_closed)
STORED = [None, *product(("complete", "partial", "empty", "failed"), (0, 26), (False, True))]


def test_the_python_rule():
    assert holds_final_bars(Stored(26, final=True))
    assert not holds_final_bars(Stored(0, final=True))
    assert not holds_final_bars(Stored(26, final=False))
    assert not holds_final_bars(None)
    assert status_recorded(Stored(26, True), LedgerStatus.EMPTY) is LedgerStatus.COMPLETE
    assert status_recorded(Stored(26, False), LedgerStatus.EMPTY) is LedgerStatus.EMPTY


def test_both_databases_record_what_the_python_rule_says(store):
    sessions = [FIRST + timedelta(days=i) for i in range(len(STORED))]
    with store.engine.begin() as conn:
        for session, row in zip(sessions, STORED):
            if row is not None:
                status, bars, closed = row
                conn.execute(bar_coverage.insert().values(
                    symbol="AAPL", timeframe="m15", session=session, status=status, bars=bars, expected=26,
                    session_closed=closed, updated_at=AT.to_pydatetime(),
                ))
    store.record_refusals(Timeframe.M15, {("AAPL", s): "no bars" for s in sessions},
                          expected={s: 26 for s in sessions}, at=AT)
    with store.engine.connect() as conn:
        got = dict(conn.execute(sa.select(bar_coverage.c.session, bar_coverage.c.status)).all())
    for session, row in zip(sessions, STORED):
        stored = None if row is None else Stored(row[1], row[2])
        assert got[session] == status_recorded(stored, LedgerStatus.EMPTY).value, (row, got[session])
    assert sorted(set(got.values())) == ["complete", "empty"]


def test_the_postgres_statement_carries_the_rule_as_compiled():
    text = coverage_upsert(("symbol", "session"), ("status",), ("status",), keep_final=True).text
    assert f"status = {status_recorded_postgres_sql()}" in text
    assert "'complete'" not in coverage_upsert(("symbol", "session"), ("status",), ("status",)).text

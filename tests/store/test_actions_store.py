"""The corporate-actions tables on SQLite and PostgreSQL: reports deduplicated into actions with
provenance kept, history vs news, repair states, and the stale partitions a split leaves."""

from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from backfill_dagster.domain.corporate_actions import ActionKind, RepairState, dividend_record, ex_date_start, split_record
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.store import shared_engine
from backfill_dagster.store.actions import ActionStore
from backfill_dagster.store.schema import bar_coverage

EX = date(2024, 6, 10)
T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)  # first asked
T1 = datetime(2024, 6, 20, 12, tzinfo=UTC)  # the split shows up, after its ex-date
PREFERENCE = ["alpaca", "polygon", "yahoo"]


@pytest.fixture
def actions(store_url):
    return ActionStore(shared_engine(store_url))


def record(store, provider, symbols, records, now):
    return store.record(provider, symbols, records, checked_from=date(2024, 1, 1), checked_through=date(2024, 12, 31),
                        now=now, preference=PREFERENCE)


def test_reports_of_one_action_are_one_row_with_every_providers_report_kept(actions):
    record(actions, "polygon", ["NVDA"], [], T0)
    record(actions, "alpaca", ["NVDA"], [], T0)
    first = record(actions, "polygon", ["NVDA"], [split_record("NVDA", EX, "polygon", 1, 10, "E1")], T1)
    later = T1 + timedelta(days=1)
    second = record(actions, "alpaca", ["NVDA"], [split_record("NVDA", EX, "alpaca", 1, 5, "a-1")], later)
    assert first.new == [("NVDA", ActionKind.SPLIT, EX)] and second.new == []
    row = actions.actions(["NVDA"]).iloc[0]
    # alpaca comes first in BACKFILL_PROVIDERS: its figures stand for the action; first sight stays.
    assert (row.source, row.split_from, row.split_to) == ("alpaca", 1, 5)
    assert row.first_seen == T1 and row.repair_state == "pending"
    reports = actions.sources(["NVDA"])
    assert list(zip(reports.provider, reports.split_to, reports.provider_id)) == [("alpaca", 5, "a-1"), ("polygon", 10, "E1")]
    assert {(r.provider, r.ratio) for r in actions.reports(["NVDA"])} == {("alpaca", 5), ("polygon", 10)}
    assert actions.recorded_splits(["NVDA", "AAPL"]) == {("NVDA", EX)}


def test_a_split_in_a_providers_first_answer_is_history_a_later_one_is_news(actions):
    old = split_record("AAPL", date(2020, 8, 31), "alpaca", 1, 4)
    news = split_record("AAPL", EX, "alpaca", 1, 4)
    out = record(actions, "alpaca", ["AAPL", "MSFT"], [old], T0)
    assert out.first_checks == ["AAPL", "MSFT"]
    assert record(actions, "alpaca", ["AAPL"], [old, news], T1).first_checks == []
    rows = actions.actions(["AAPL"]).set_index("ex_date")
    assert rows.loc[date(2020, 8, 31), "basis_since"] == ex_date_start(date(2020, 8, 31))
    assert rows.loc[EX, "basis_since"] == T1  # seen after its ex-date: bars fetched before T1 are suspect
    checked = actions.checks()
    assert list(checked.symbol) == ["AAPL", "MSFT"] and (checked.first_checked_at == T0).all()
    assert checked.set_index("symbol").loc["AAPL", "last_checked_at"] == T1


def test_dividends_are_recorded_without_a_repair(actions):
    record(actions, "yahoo", ["XOM"], [dividend_record("XOM", EX, "yahoo", 0.95)], T0)
    row = actions.actions(["XOM"]).iloc[0]
    assert row.kind == "cash_dividend" and row.cash_amount == 0.95 and row.repair_state is None
    assert actions.splits() == []


def test_a_report_for_a_symbol_not_asked_about_is_refused(actions):
    with pytest.raises(ValueError, match="alpaca reported actions of TSLA, which it was not asked about"):
        record(actions, "alpaca", ["AAPL"], [split_record("TSLA", EX, "alpaca", 1, 3)], T0)
    assert actions.actions().empty and actions.checks().empty  # nothing written


def ledger_row(symbol, timeframe, session, fetched_at, bars=26, source_fetched_at=None):
    return {"symbol": symbol, "timeframe": timeframe, "session": session, "status": "complete", "bars": bars,
            "expected": 26, "provider": "alpaca:sip", "fetched_at": fetched_at, "session_closed": True,
            "attempts": 1, "updated_at": fetched_at, "source_fetched_at": source_fetched_at}


def test_stale_partitions_are_those_before_the_ex_date_fetched_before_the_new_basis(actions, store_url):
    record(actions, "alpaca", ["AAPL"], [], T0)
    record(actions, "alpaca", ["AAPL"], [split_record("AAPL", EX, "alpaca", 1, 4)], T1)
    before, after = T1 - timedelta(hours=1), T1 + timedelta(hours=1)
    rows = [
        ledger_row("AAPL", "m15", date(2024, 6, 6), before),
        ledger_row("AAPL", "m15", date(2024, 6, 7), after),  # re-fetched since: new basis
        ledger_row("AAPL", "h1", date(2024, 6, 6), after, source_fetched_at=before),  # derived from the old m15
        ledger_row("AAPL", "h1", date(2024, 6, 7), after, source_fetched_at=after),
        ledger_row("AAPL", "d1", date(2024, 6, 5), before),
        ledger_row("AAPL", "d1", date(2024, 6, 4), before, bars=0),  # nothing stored
        ledger_row("AAPL", "d1", EX, before),  # the ex-date itself trades on the new basis
        ledger_row("MSFT", "d1", date(2024, 6, 5), before),
    ]
    with shared_engine(store_url).begin() as conn:
        conn.execute(sa.insert(bar_coverage), rows)
    (split,) = actions.splits()
    assert split.describe() == "AAPL 4:1 ex 2024-06-10" and split.basis_since == T1
    assert actions.stale_partitions(split) == {
        Timeframe.D1: [date(2024, 6, 5)], Timeframe.H1: [date(2024, 6, 6)], Timeframe.M15: [date(2024, 6, 6)]}
    assert actions.history_before("AAPL", EX) == 5 and actions.history_before("AAPL", date(2024, 6, 4)) == 0


def test_a_repair_moves_through_its_states(actions):
    record(actions, "alpaca", ["AAPL"], [split_record("AAPL", EX, "alpaca", 1, 4)], T0)
    actions.set_repair("AAPL", EX, RepairState.REPAIRING, now=T1, backfill_id="bf1", attempts=1, note="3 stale")
    (split,) = actions.splits()
    assert (split.state, split.backfill_id, split.attempts, split.note) == (RepairState.REPAIRING, "bf1", 1, "3 stale")
    actions.set_repair("AAPL", EX, RepairState.REPAIRED, now=T1, note="done")
    assert actions.splits() == []
    (done,) = actions.splits(states=[RepairState.REPAIRED])
    assert done.backfill_id == "bf1" and done.attempts == 1
    assert actions.actions(["AAPL"]).iloc[0].repaired_at == T1


def test_a_split_is_history_only_in_the_first_answers_about_its_symbol(actions):
    """Asked before (by any provider), a symbol's new split is news even from a provider asked for
    the first time: the bars stored came from the first one, which did not know it."""
    old = date(2020, 8, 31)
    record(actions, "alpaca", ["AAPL", "MSFT"], [], T0)
    out = record(actions, "polygon", ["AAPL"], [split_record("AAPL", old, "polygon", 1, 4)], T1)
    assert out.first_checks == ["AAPL"]  # polygon's first answer...
    assert actions.actions(["AAPL"]).iloc[0].basis_since == T1  # ...but AAPL was asked about before
    # Two providers answering about a new symbol in the same refresh: both first answers.
    for provider in ("alpaca", "polygon"):
        record(actions, provider, ["NVDA"], [split_record("NVDA", old, provider, 1, 4)], T1)
    assert actions.actions(["NVDA"]).iloc[0].basis_since == ex_date_start(old)

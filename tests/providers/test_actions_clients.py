"""The corporate-action clients against the fakes: every provider that publishes actions reports the
registry's splits and dividends through its bar client (same budget and retries), pages with small
limits, survives faults, reports per symbol what failed, and spells share classes its own way."""

from __future__ import annotations

from datetime import date

import pytest

from backfill_dagster.domain.corporate_actions import ActionKind, ActionRecord
from backfill_dagster.domain.provider_errors import ProviderError
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.fakes.actions import CashDividend, CorporateActions, Split
from tests.providers.test_clients import clock, make

FIRST, LAST = date(2023, 1, 1), date(2024, 5, 31)  # NOW is 2024-03-01
REGISTRY = CorporateActions(
    splits=[Split("NVDA", date(2023, 6, 12), 10, 1, date(2023, 5, 22)), Split("BRK.B", date(2024, 2, 28), 3, 2, date(2024, 2, 1)),
            Split("TSLA", date(2023, 8, 25), 1, 3, date(2023, 9, 5)),  # listed after its ex-date
            Split("NVDA", date(2024, 4, 10), 4, 1, date(2024, 3, 20))],  # not announced yet
    dividends=[CashDividend("NVDA", date(2023, 6, 7), 0.04, date(2023, 5, 24))],
    default_dividends=False,
)
SYMBOLS = ["NVDA", "BRK.B", "TSLA", "MSFT"]


@pytest.fixture
def fakes():
    with FakeProviders(FakeConfig(now=clock, corporate_actions=REGISTRY)) as running:
        yield running


def expected(provider: str) -> set:
    splits = [("NVDA", date(2023, 6, 12), 1, 10), ("BRK.B", date(2024, 2, 28), 2, 3), ("TSLA", date(2023, 8, 25), 3, 1)]
    out = {(s, ActionKind.SPLIT, d, provider, f, t, None) for s, d, f, t in splits}
    out.add(("NVDA", ActionKind.CASH_DIVIDEND, date(2023, 6, 7), provider, None, None, 0.04))
    return out


def shape(records: list[ActionRecord]) -> set:
    return {(r.symbol, r.kind, r.ex_date, r.provider, r.split_from, r.split_to, r.cash_amount) for r in records}


@pytest.mark.parametrize("name, limit", [("alpaca", 1), ("polygon", 1), ("yahoo", None)])
def test_each_provider_reports_the_registry_with_few_calls(fakes, calendar, name, limit):
    extra = {"actions_page_limit": limit} if limit else {}
    provider = make(name, fakes, calendar, **extra)
    assert provider.publishes_corporate_actions
    result = provider.corporate_actions(SYMBOLS, FIRST, LAST)
    assert shape(result.records) == expected(name) and not result.failed
    if name == "alpaca":
        assert all(r.provider_id for r in result.records)
        assert result.api_calls == 4  # four rows, one a page; the last page carries no token
    elif name == "polygon":
        assert result.api_calls == 3 + 1  # three splits, one a page, then the one dividend
    else:
        assert result.api_calls == len(SYMBOLS)  # one chart a symbol
    logged = [e for e in fakes.log if e.provider == name]
    assert len(logged) == result.api_calls and {e.status for e in logged} == {200}
    if name == "alpaca":
        assert {e.query["start"] for e in logged} == {"2023-01-01"} and {e.query["end"] for e in logged} == {"2024-05-31"}
        assert logged[0].query["symbols"] == "NVDA,BRK.B,TSLA,MSFT"
    if name == "polygon":
        first_pages = [e for e in logged if "cursor" not in e.query]
        assert {e.query["sort"] for e in first_pages} == {"execution_date.asc", "ex_dividend_date.asc"}
    if name == "yahoo":
        assert [e.path for e in logged][1] == "/v8/finance/chart/BRK-B"


def test_the_default_page_size_takes_one_call(fakes, calendar):
    result = make("alpaca", fakes, calendar).corporate_actions(SYMBOLS, FIRST, LAST)
    assert result.api_calls == 1 and len(result.records) == 4


def test_faults_are_retried_by_the_bar_client(fakes, calendar):
    fakes.config.fault_rate = 0.5
    fakes.config.faults = ("500", "503", "429", "truncated")
    for name in ("alpaca", "polygon", "yahoo"):
        result = make(name, fakes, calendar).corporate_actions(SYMBOLS, FIRST, LAST)
        assert shape(result.records) == expected(name) and not result.failed, name
    assert any(e.status != 200 for e in fakes.log)


def test_a_provider_that_fails_reports_which_symbols_and_why(fakes, calendar):
    fakes.config.unknown_symbols = frozenset({"MSFT"})
    yahoo = make("yahoo", fakes, calendar).corporate_actions(SYMBOLS, FIRST, LAST)
    assert set(yahoo.failed) == {"MSFT"} and "404" in yahoo.failed["MSFT"]
    assert shape(yahoo.records) == expected("yahoo")
    env = {**fakes.env(), "ALPACA_API_SECRET": "wrong"}
    alpaca = make("alpaca", fakes, calendar, env=env).corporate_actions(SYMBOLS, FIRST, LAST)
    assert set(alpaca.failed) == set(SYMBOLS) and alpaca.records == []
    assert "403" in alpaca.failed["NVDA"] and "wrong" not in alpaca.failed["NVDA"]


def test_a_spent_quota_stops_asking(fakes, calendar):
    fakes.config.quota_exhausted = {"yahoo": 3600}
    result = make("yahoo", fakes, calendar).corporate_actions(SYMBOLS, FIRST, LAST)
    assert set(result.failed) == set(SYMBOLS) and "unavailable until" in result.failed["TSLA"]
    assert len([e for e in fakes.log if e.provider == "yahoo"]) == 1  # one answer said it all


@pytest.mark.parametrize("name", ["tradier"])
def test_tradier_publishes_none(fakes, calendar, name):
    provider = make(name, fakes, calendar)
    assert not provider.publishes_corporate_actions
    with pytest.raises(ProviderError, match="tradier: publishes no corporate actions"):
        provider.corporate_actions(SYMBOLS, FIRST, LAST)

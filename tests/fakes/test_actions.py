"""The fakes' corporate-actions registry: deterministic default dividends, explicit actions, and
actions known only from their announcement on."""

from __future__ import annotations

from datetime import date
from fractions import Fraction

import pytest

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.fakes.actions import CashDividend, CorporateActions, Split, pays_default_dividends

SYMBOLS = ["AAPL", "MSFT", "NVDA", "XOM", "TSLA", "AMZN", "GOOG", "META", "NFLX", "BRK.B"]


def test_some_symbols_pay_a_deterministic_quarterly_dividend_on_sessions():
    payers = [s for s in SYMBOLS if pays_default_dividends(s)]
    assert payers and len(payers) < len(SYMBOLS)  # some, not all
    registry = CorporateActions()
    for symbol in SYMBOLS:
        year = registry.dividends(symbol, date(2024, 1, 1), date(2024, 12, 31))
        assert len(year) == (4 if symbol in payers else 0)
        assert year == CorporateActions().dividends(symbol, date(2024, 1, 1), date(2024, 12, 31))  # deterministic
        for dividend in year:
            assert xnys().is_session(dividend.ex_date) and dividend.amount > 0 and dividend.announced < dividend.ex_date
        assert len({d.ex_date.month % 3 for d in year}) <= 1  # one quarterly cycle
        assert not registry.splits(symbol, date(2000, 1, 1), date(2030, 12, 31))  # no splits by default


def test_explicit_actions_replace_the_default_schedule_of_their_symbol():
    payer = next(s for s in SYMBOLS if pays_default_dividends(s))
    other = next(s for s in SYMBOLS if s != payer and pays_default_dividends(s))
    special = CashDividend(payer, ex_date=date(2024, 5, 10), amount=1.25, announced=date(2024, 4, 20))
    split = Split("NVDA", ex_date=date(2024, 6, 10), numerator=10, denominator=1, announced=date(2024, 5, 22))
    registry = CorporateActions(dividends=[special], splits=[split])
    assert registry.dividends(payer, date(2024, 1, 1), date(2024, 12, 31)) == [special]
    assert len(registry.dividends(other, date(2024, 1, 1), date(2024, 12, 31))) == 4
    assert registry.splits("NVDA", date(2024, 1, 1), date(2024, 12, 31)) == [split] and split.ratio == 10
    assert CorporateActions(default_dividends=False).dividends(other, date(2024, 1, 1), date(2024, 12, 31)) == []


def test_an_action_is_known_from_its_announcement_on():
    split = Split("NVDA", ex_date=date(2024, 6, 10), numerator=10, denominator=1, announced=date(2024, 5, 22))
    registry = CorporateActions(splits=[split])
    window = (date(2024, 6, 1), date(2024, 6, 30))
    assert registry.splits("NVDA", *window, known_on=date(2024, 5, 21)) == []
    assert registry.splits("NVDA", *window, known_on=date(2024, 5, 22)) == [split]


@pytest.mark.parametrize(
    "action, message",
    [
        (lambda: Split("X", date(2024, 6, 10), 0, 1, date(2024, 6, 1)), "numerator and denominator must be positive"),
        (lambda: CashDividend("X", date(2024, 6, 10), -0.1, date(2024, 6, 1)), "amount must be positive"),
    ],
)
def test_impossible_actions_are_refused(action, message):
    with pytest.raises(ValueError, match=message):
        action()


def test_a_split_may_be_announced_after_its_ex_date_and_is_known_from_then_on():
    late = Split("NVDA", ex_date=date(2024, 6, 10), numerator=10, denominator=1, announced=date(2024, 6, 20))
    registry = CorporateActions(splits=[late])
    window = (date(2024, 6, 1), date(2024, 6, 30))
    assert registry.splits("NVDA", *window, known_on=date(2024, 6, 19)) == []
    assert registry.splits("NVDA", *window, known_on=date(2024, 6, 20)) == [late]
    assert late.booked == date(2024, 6, 20)  # Alpaca books it when it is listed


def test_the_price_factor_follows_what_a_provider_knows_and_what_is_effective():
    """Raw prices carry every later split; split-adjusted ones drop the splits announced and effective."""
    forward = Split("X", ex_date=date(2024, 6, 10), numerator=4, denominator=1, announced=date(2024, 5, 22))
    reverse = Split("X", ex_date=date(2024, 9, 3), numerator=1, denominator=10, announced=date(2024, 9, 20))
    registry = CorporateActions(splits=[forward, reverse])
    factor = registry.price_factor
    before_both, between, after_both = date(2024, 6, 7), date(2024, 8, 30), date(2024, 9, 3)
    assert factor("X", before_both, date(2024, 12, 31), adjusted=False) == Fraction(4, 10)
    assert factor("X", between, date(2024, 12, 31), adjusted=False) == Fraction(1, 10)
    assert factor("X", after_both, date(2024, 12, 31), adjusted=False) == 1
    # Announced (May 22) but not effective yet: the provider still serves the old basis.
    assert factor("X", before_both, date(2024, 6, 7), adjusted=True) == Fraction(4, 10)
    # On its ex-date the forward split is applied; the reverse one, effective Sep 3, is listed Sep 20.
    assert factor("X", before_both, date(2024, 6, 10), adjusted=True) == Fraction(1, 10)
    assert factor("X", before_both, date(2024, 9, 19), adjusted=True) == Fraction(1, 10)
    assert factor("X", before_both, date(2024, 9, 20), adjusted=True) == 1
    assert factor("AAPL", before_both, date(2024, 9, 20), adjusted=False) == 1  # no splits: unchanged


def test_an_ex_date_must_be_a_session():
    with pytest.raises(ValueError, match="2024-06-08 is not an NYSE trading session"):
        CorporateActions(splits=[Split("X", date(2024, 6, 8), 2, 1, date(2024, 6, 1))])

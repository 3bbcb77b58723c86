"""The pure rules of corporate actions: exact ratios, merging providers' reports, disagreements, and
from when a split makes stored bars stale."""

from datetime import UTC, date, datetime
from fractions import Fraction

import pytest

from backfill_dagster.domain.corporate_actions import (
    ActionError,
    ActionKind,
    basis_since,
    disagreements,
    dividend_record,
    ex_date_start,
    preferred,
    ratio_text,
    repair_reason,
    split_record,
)

EX = date(2024, 6, 10)


@pytest.mark.parametrize(
    "old, new, ratio, text",
    [(1, 4, Fraction(4), "4:1"), (10, 1, Fraction(1, 10), "1:10"), (2.0, 3.0, Fraction(3, 2), "3:2"),
     ("1", "1.5", Fraction(3, 2), "3:2"), (3, 1, Fraction(1, 3), "1:3"), (50, 1, Fraction(1, 50), "1:50")],
)
def test_a_split_keeps_its_ratio_exactly(old, new, ratio, text):
    record = split_record("NVDA", EX, "alpaca", old, new)
    assert record.ratio == ratio and ratio_text(record.ratio) == text
    assert (record.split_from, record.split_to) == (ratio.denominator, ratio.numerator)  # reduced


@pytest.mark.parametrize("old, new, message", [(0, 4, "must be positive"), (1, -2, "must be positive"),
                                               (1, None, "is not a number"), (1, "four", "is not a number"),
                                               (True, 2, "is not a number")])
def test_an_impossible_split_is_refused_naming_it(old, new, message):
    with pytest.raises(ActionError, match=f"NVDA split on 2024-06-10 .*{message}"):
        split_record("NVDA", EX, "alpaca", old, new)


def test_a_dividend_has_an_amount_and_no_ratio():
    record = dividend_record("AAPL", EX, "polygon", 0.25)
    assert record.kind is ActionKind.CASH_DIVIDEND and record.cash_amount == 0.25
    with pytest.raises(ActionError, match="not a split"):
        record.ratio
    with pytest.raises(ActionError, match="amount = -1 must be positive"):
        dividend_record("AAPL", EX, "polygon", -1)


def test_the_preferred_providers_figures_stand_for_the_action():
    reports = [split_record("NVDA", EX, p, 1, n) for p, n in (("yahoo", 10), ("polygon", 10), ("alpaca", 5))]
    assert preferred(reports, ["polygon", "alpaca"]).provider == "polygon"
    assert preferred(reports, ["alpaca", "polygon", "yahoo"]).provider == "alpaca"
    assert preferred(reports, ["demo"]).provider == "alpaca"  # unknown to the order: by name


def test_providers_disagreeing_on_a_ratio_or_an_amount_or_a_date_are_found():
    agree = [split_record("AAPL", EX, p, 1, 4) for p in ("alpaca", "polygon", "yahoo")]
    ratio = [split_record("NVDA", EX, "alpaca", 1, 10), split_record("NVDA", EX, "polygon", 1, 5)]
    amount = [dividend_record("XOM", EX, "alpaca", 0.95), dividend_record("XOM", EX, "yahoo", 0.96)]
    dates = [split_record("SHOP", date(2022, 6, 22), "polygon", 1, 10), split_record("SHOP", date(2022, 6, 29), "alpaca", 1, 10)]
    found = disagreements(agree + ratio + amount + dates)
    assert [(d.symbol, d.detail) for d in found] == [
        ("NVDA", "alpaca 10:1, polygon 5:1"),
        ("XOM", "alpaca 0.95, yahoo 0.96"),
        ("SHOP", "polygon ex 2022-06-22, alpaca ex 2022-06-29: one split?"),
    ]
    # Two real splits a year apart, or one provider listing two dates, are not a disagreement.
    apart = [split_record("X", date(2023, 1, 3), "alpaca", 1, 2), split_record("X", date(2024, 1, 3), "polygon", 1, 2)]
    assert disagreements(apart) == []


def test_a_split_makes_bars_stale_that_were_fetched_before_providers_applied_it():
    first_seen_late = datetime(2024, 6, 20, 12, tzinfo=UTC)
    first_seen_early = datetime(2024, 5, 22, 12, tzinfo=UTC)
    start = ex_date_start(EX)
    assert start == datetime(2024, 6, 10, 4, tzinfo=UTC)  # 00:00 New York (EDT)
    # Seen after its ex-date: bars fetched until we saw it may still be on the old basis.
    assert basis_since(EX, first_seen_late, historical=False) == first_seen_late
    # Seen before its ex-date: providers re-base on the ex-date, not when it is announced.
    assert basis_since(EX, first_seen_early, historical=False) == start
    # Listed in a provider's first report on a symbol: old news, applied on its ex-date.
    assert basis_since(EX, first_seen_late, historical=True) == start


def test_the_ledgers_reason_names_the_split():
    assert repair_reason("AAPL", EX, Fraction(4)) == "split 4:1 of AAPL ex 2024-06-10: re-fetched on the new share basis"

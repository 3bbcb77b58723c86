"""The suspected-split rule: a d1 jump at a session boundary within 2% of a split ratio, with no
action recorded; quiet on ordinary gaps, on recorded splits and across sessions not stored."""

from datetime import date
from fractions import Fraction

import pandas as pd
import pytest

from backfill_dagster.domain.split_jumps import SPLIT_RATIOS, nearest_split, suspected_splits

DAYS = [date(2024, 6, 4), date(2024, 6, 5), date(2024, 6, 6), date(2024, 6, 7), date(2024, 6, 10)]


def daily(symbol, opens, closes, volumes=None, days=DAYS):
    volumes = volumes or [1_000_000] * len(opens)
    return pd.DataFrame({"symbol": symbol, "session": days[: len(opens)], "open": opens, "close": closes,
                         "volume": volumes})


@pytest.mark.parametrize("observed, ratio", [(4.0, Fraction(4)), (4.07, Fraction(4)), (3.93, Fraction(4)),
                                             (0.1, Fraction(1, 10)), (0.0985, Fraction(1, 10)), (20.3, Fraction(20)),
                                             (1.3, None), (0.7, None), (4.1, None), (1.5, None), (0.0, None)])
def test_a_jump_is_a_split_ratio_within_two_percent(observed, ratio):
    assert nearest_split(observed) == ratio


def test_the_bands_of_the_ratios_never_overlap():
    bands = sorted((float(r) * 0.98, float(r) * 1.02) for r in SPLIT_RATIOS)
    assert all(a[1] < b[0] for a, b in zip(bands, bands[1:]))


def test_a_forward_and_a_reverse_split_are_suspected_naming_symbol_session_and_ratio(calendar):
    forward = daily("AAPL", [400, 404, 101, 102, 103], [402, 404.5, 101.5, 102, 104],
                    [1e6, 1e6, 4.1e6, 4e6, 4e6])  # 404.5 -> 101 on 2024-06-06: 4.005
    reverse = daily("MULN", [1.5, 1.52, 1.49, 15.1, 15], [1.5, 1.5, 1.51, 15.2, 15.3])  # 1.51 -> 15.1: 0.1
    found = suspected_splits(pd.concat([forward, reverse]), calendar, recorded=set())
    assert [(s.symbol, s.session, s.ratio) for s in found] == [
        ("AAPL", date(2024, 6, 6), Fraction(4)), ("MULN", date(2024, 6, 7), Fraction(1, 10))]
    assert found[0].describe() == (
        "AAPL 2024-06-06: close 404.5 on 2024-06-05 -> open 101 (x0.2497), a 4:1 split?, volume x4.10")
    assert found[1].describe().endswith("a 1:10 split?, volume x1.00")


def test_quiet_on_an_earnings_gap_a_recorded_split_and_a_boundary_not_stored(calendar):
    earnings = daily("NFLX", [500, 505, 650, 655, 660], [503, 500, 652, 660, 661])  # +30%
    assert suspected_splits(earnings, calendar, recorded=set()) == []
    split = daily("AAPL", [400, 404, 101, 102, 103], [402, 404.5, 101.5, 102, 104])
    assert suspected_splits(split, calendar, recorded={("AAPL", date(2024, 6, 6))}) == []
    gap = split.drop(index=1)  # 2024-06-05 not stored: 06-04 -> 06-06 is no session boundary
    assert suspected_splits(gap, calendar, recorded=set()) == []


def test_only_the_sessions_asked_about_are_judged(calendar):
    split = daily("AAPL", [400, 404, 101, 102, 103], [402, 404.5, 101.5, 102, 104])
    assert suspected_splits(split, calendar, set(), sessions={date(2024, 6, 7), date(2024, 6, 10)}) == []
    assert len(suspected_splits(split, calendar, set(), sessions={date(2024, 6, 6)})) == 1
    assert suspected_splits(split.iloc[0:0], calendar, set()) == []

"""Which basis the stored history before a split is on: the bars' jump at the ex-date against the
timestamps. A jump by the ratio is the old basis whatever the timestamps say; a basis the timestamps
only assumed (a split in the first answers about a symbol) needs the bars to confirm it."""

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pandas as pd

from backfill_dagster.domain.corporate_actions import RepairState, basis_since
from backfill_dagster.domain.split_basis import Basis, Evidence, assess, evidence, session_frame
from backfill_dagster.domain.split_repair import RecordedSplit
from backfill_dagster.domain.timeframes import Timeframe

EX = date(2024, 6, 10)
BEFORE = date(2024, 6, 7)
SEEN = datetime(2024, 12, 3, 12, tzinfo=UTC)  # first answers about the symbol, months after the ex-date
HISTORICAL = RecordedSplit("NVDA", EX, 1, 10, "alpaca", SEEN, basis_since(EX, SEEN, historical=True),
                           RepairState.PENDING)
FETCHED = datetime(2024, 11, 1, tzinfo=UTC)  # after the ex-date, before anyone asked about NVDA


def d1(closes_opens):
    (before_close, ex_open) = closes_opens
    return pd.DataFrame({"symbol": "NVDA", "session": [BEFORE, EX],
                         "ts": [pd.Timestamp(BEFORE, tz="UTC"), pd.Timestamp(EX, tz="UTC")],
                         "open": [before_close * 0.99, ex_open], "close": [before_close, ex_open * 1.01],
                         "volume": [1e6, 1e7]})


def history(*timeframes, at=FETCHED):
    return {t: [(date(2024, 6, d), at) for d in (5, 6, 7)] for t in timeframes}


def test_the_jump_at_the_ex_date_by_the_ratio_is_the_old_basis(calendar):
    old = evidence(HISTORICAL, d1((1200.0, 121.0)), calendar)  # 1200 -> 121: 10 for 1, within 2%
    assert old.basis is Basis.OLD and old.jump.previous_close == 1200.0
    assert "close 1200 on 2024-06-07 -> open 121, 10:1" in old.describe(Timeframe.D1)
    assert evidence(HISTORICAL, d1((120.0, 121.0)), calendar).basis is Basis.NEW
    # Another ratio's jump is not this split's
    assert evidence(HISTORICAL, d1((480.0, 121.0)), calendar).basis is Basis.NEW
    assert evidence(HISTORICAL, d1((1200.0, 121.0)).iloc[:1], calendar).basis is Basis.UNKNOWN


def test_intraday_bars_are_judged_by_their_first_open_and_last_close(calendar):
    ts = [pd.Timestamp(f"{BEFORE} 14:30", tz="UTC"), pd.Timestamp(f"{BEFORE} 19:45", tz="UTC"),
          pd.Timestamp(f"{EX} 13:30", tz="UTC"), pd.Timestamp(f"{EX} 19:45", tz="UTC")]
    m15 = pd.DataFrame({"symbol": "NVDA", "session": [BEFORE, BEFORE, EX, EX], "ts": ts,
                        "open": [1190.0, 1195.0, 120.5, 121.0], "close": [1194.0, 1210.0, 120.9, 122.0],
                        "volume": [1.0, 2.0, 3.0, 4.0]})
    days = session_frame(m15.iloc[::-1])
    assert list(days.open) == [1190.0, 120.5] and list(days.close) == [1210.0, 122.0] and list(days.volume) == [3.0, 7.0]
    assert evidence(HISTORICAL, m15, calendar).basis is Basis.OLD


def test_a_jump_makes_every_partition_before_the_ex_date_stale_whatever_the_timestamps_say():
    jump = Evidence(Basis.OLD)
    found = assess(HISTORICAL, history(Timeframe.M15, Timeframe.H1, Timeframe.H4, Timeframe.D1),
                   {Timeframe.M15: jump, Timeframe.D1: jump, Timeframe.H1: Evidence(Basis.NEW)})
    assert found.stale == {t: [date(2024, 6, 5), date(2024, 6, 6), date(2024, 6, 7)] for t in Timeframe}
    assert found.basis_since == SEEN  # the assumption is refuted: from now on the first sight counts
    assert found.why.endswith("the history before it is on the old share basis")


def test_bars_that_run_on_across_the_ex_date_confirm_the_assumed_basis():
    found = assess(HISTORICAL, history(Timeframe.D1), {Timeframe.D1: Evidence(Basis.NEW)})
    assert found.stale == {} and found.basis_since == HISTORICAL.basis_since
    assert found.why == "the stored d1 bars run on across the ex-date"


def test_an_assumed_basis_the_bars_cannot_confirm_is_dropped():
    """No stored ex-date: the partitions fetched before the split was first seen are re-fetched."""
    mixed = {Timeframe.D1: [(date(2024, 6, 6), FETCHED), (date(2024, 6, 7), SEEN + timedelta(hours=1))]}
    found = assess(HISTORICAL, mixed, {Timeframe.D1: Evidence(Basis.UNKNOWN)})
    assert found.stale == {Timeframe.D1: [date(2024, 6, 6)]} and found.basis_since == SEEN
    assert found.why == ("no stored d1 bars on both sides of the ex-date: nothing confirms the history fetched "
                         "before the split was first seen was re-based")


def test_a_split_seen_as_news_keeps_its_basis_and_the_timestamps_decide_without_bars():
    news = replace(HISTORICAL, basis_since=SEEN)
    found = assess(news, history(Timeframe.D1, at=SEEN + timedelta(days=1)), {})
    assert found.stale == {} and found.basis_since == SEEN
    stale = assess(news, history(Timeframe.D1), {Timeframe.D1: Evidence(Basis.NEW)})
    assert stale.stale == {Timeframe.D1: [date(2024, 6, 5), date(2024, 6, 6), date(2024, 6, 7)]}


def test_only_bars_under_one_share_on_the_new_basis_may_be_missing_from_a_repair():
    from fractions import Fraction

    from backfill_dagster.domain.split_basis import missing_bars

    ts = pd.date_range("2024-06-07 13:30", periods=4, freq="15min", tz="UTC")
    stored = pd.DataFrame({"ts": ts, "volume": [5.0, 100.0, 9.0, 2_000.0]})
    assert missing_bars(stored, stored.iloc[[1, 3]], Fraction(1, 10)).unexplained == 0  # 0.5 and 0.9 shares
    lacking = missing_bars(stored, stored.iloc[[0, 3]], Fraction(1, 10))
    assert (lacking.missing, lacking.unexplained) == (2, 1)
    assert missing_bars(stored, stored.iloc[[1, 3]], Fraction(4)).unexplained == 2  # a forward split drops nothing
    assert missing_bars(stored, stored, Fraction(1, 10)).missing == 0

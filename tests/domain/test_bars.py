"""Validation: every validation rule rejects with a reason, and valid bars pass untouched."""

from datetime import date

import numpy as np
import pandas as pd
import pytest

from backfill_dagster.domain.bars import bars_frame, validate_bars
from backfill_dagster.domain.timeframes import Timeframe
from tests.conftest import utc


def bar(ts="2024-11-04 14:30Z", symbol="AAPL", o=10.0, h=11.0, l=9.5, c=10.5, v=100.0, **extra):
    return {"symbol": symbol, "ts": pd.Timestamp(ts), "open": o, "high": h, "low": l, "close": c, "volume": v, **extra}


def check(rows, timeframe=Timeframe.M15, **kw):
    from backfill_dagster.domain.calendar import xnys

    return validate_bars(pd.DataFrame(rows), timeframe, xnys(), **kw)


def test_valid_bars_pass_with_their_session():
    result = check([bar(), bar("2024-11-04 14:45Z")], symbols=["AAPL"])
    assert len(result.valid) == 2 and result.rejected.empty
    assert list(result.valid["session"]) == [date(2024, 11, 4)] * 2


@pytest.mark.parametrize(
    "row, reason",
    [
        (bar(h=9.0), "high is below low"),
        (bar(h=10.2), "high is below open or close"),
        (bar(l=10.4), "low is above open or close"),
        (bar(o=float("nan")), "open is missing or NaN"),
        (bar(c=float("inf"), h=float("inf")), "close is infinite"),
        (bar(o=-1.0, l=-2.0), "open is not positive"),
        (bar(v=-5.0), "volume is negative"),
        (bar(v=None), "volume is missing or NaN"),
        (bar("2024-11-04 12:00Z"), None),  # pre-market: valid, but outside regular hours (dropped, counted)
        (bar("2024-11-05 01:30Z"), "outside the session's trading hours"),  # 20:30 New York
        (bar("2024-11-28 15:00Z"), "not on an NYSE session day"),
        (bar("2024-11-09 15:00Z"), "not on an NYSE session day"),
        (bar("2024-11-04 14:37Z"), "not on the m15 bar grid"),
        (bar(symbol="MSFT"), "symbol was not requested"),
        (bar(ts=None), "missing or unparseable timestamp"),
        (bar(vwap=-1.0), "vwap is not positive"),
    ],
)
def test_each_rule_rejects_with_its_reason(row, reason):
    result = check([row], symbols=["AAPL"])
    if reason is None:
        assert result.valid.empty and result.rejected.empty and result.outside_hours == 1
        return
    assert result.valid.empty
    assert reason in result.rejected["reason"].iloc[0]


def test_duplicates_are_all_rejected():
    result = check([bar(), bar(c=10.6)])
    assert result.valid.empty
    assert (result.rejected["reason"] == "more than one bar for this symbol and start").all()


def test_future_bars_are_rejected():
    result = check([bar("2024-11-04 15:00Z")], now=utc("2024-11-04 14:50"))
    assert "starts in the future" in result.rejected["reason"].iloc[0]


def test_reasons_accumulate_and_partitions_are_named():
    result = check([bar(h=9.0, v=-1.0), bar("2024-11-04 14:45Z")])
    assert result.rejected["reason"].iloc[0] == "volume is negative; high is below low; high is below open or close"
    assert result.rejected_partitions == {("AAPL", date(2024, 11, 4))}
    assert len(result.valid) == 1


def test_extended_hours_keeps_pre_market():
    result = check([bar("2024-11-04 12:00Z")], extended=True)
    assert len(result.valid) == 1 and result.outside_hours == 0


def test_d1_must_be_labelled_new_york_midnight():
    ok = check([bar("2024-11-04 05:00Z")], Timeframe.D1)
    assert len(ok.valid) == 1
    wrong = check([bar("2024-11-04 14:30Z")], Timeframe.D1)
    assert "not on the d1 bar grid" in wrong.rejected["reason"].iloc[0]


def test_naive_timestamps_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        bars_frame({"symbol": ["A"], "ts": [pd.Timestamp("2024-11-04 14:30")], "open": [1], "high": [1], "low": [1], "close": [1], "volume": [1]})


def test_missing_columns_are_refused():
    with pytest.raises(ValueError, match="missing columns: volume"):
        bars_frame({"symbol": ["A"], "ts": [utc("2024-11-04 14:30")], "open": [1], "high": [1], "low": [1], "close": [1]})


def test_validation_is_vectorised_over_many_bars(calendar):
    grid = calendar.expected_bars(calendar.sessions("2024-01-01", "2024-12-31"), Timeframe.M15)
    n = len(grid)
    frame = pd.DataFrame({"symbol": "AAPL", "ts": grid["ts"], "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.0, "volume": np.arange(n, dtype=float)})
    result = validate_bars(frame, Timeframe.M15, calendar)
    assert len(result.valid) == n and result.rejected.empty


# 2024-11-29 closed at 13:00; providers still serve its post-market to 20:00 (a multi-day request
# returns 04:00-20:00 for every session it spans). 17:30 New York = 22:30Z.
HALF_DAY_POST = "2024-11-29 22:30Z"


@pytest.mark.parametrize("extended", [False, True])
def test_a_half_day_post_market_bar_is_dropped_and_counted_not_rejected(extended):
    result = check([bar("2024-11-29 14:30Z"), bar(HALF_DAY_POST)], symbols=["AAPL"], extended=extended)
    assert result.rejected.empty
    assert len(result.valid) == 1 and result.outside_hours == 1


def test_bars_after_20_00_are_rejected_on_half_days_too():
    result = check([bar("2024-11-30 01:15Z")], symbols=["AAPL"])  # 20:15 New York on 2024-11-29
    assert "outside the session's trading hours" in result.rejected["reason"].iloc[0]

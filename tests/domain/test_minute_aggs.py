"""Flat-file rows into bars: parsing by header, exact tickers, the whole-file checks, m15 bucketing
on the session grid (DST, an early close, missing minutes, extended hours) and d1 rows."""

from datetime import date
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from backfill_dagster.domain.bars import validate_bars
from backfill_dagster.domain.minute_aggs import (
    FileFormatError,
    check_rows,
    d1_bars,
    lacking_closing_minute,
    m15_bars,
    read_aggs,
)
from backfill_dagster.domain.split_factors import KnownSplits, adjust_bars
from backfill_dagster.domain.timeframes import Timeframe

HEADER = "ticker,volume,open,close,high,low,window_start,transactions"


def ns(text: str) -> int:
    """A New York wall-clock time as UTC nanoseconds."""
    return pd.Timestamp(text, tz="America/New_York").value


def row(ticker, at, o, c, h, l, v=100, n=1) -> str:
    return f"{ticker},{v},{o},{c},{h},{l},{ns(at) if isinstance(at, str) else at},{n}"


def parse(lines, tickers, day):
    return check_rows(read_aggs([HEADER + "\n", *(l + "\n" for l in lines)], tickers), day, "test.csv.gz")


def window(calendar, day, extended=False):
    return calendar.window(day, extended)


def test_columns_by_name_extra_columns_ignored_and_reordered():
    header = "open,extra,ticker,close,high,low,volume,window_start,transactions\n"
    line = f"10,zzz,AAPL,11,12,9,250.5,{ns('2024-03-15 09:30')},7\n"
    rows = read_aggs([header, line], {"AAPL"})
    assert rows.tickers == ["AAPL"] and rows.values == [(10.0, 12.0, 9.0, 11.0, 250.5, 7.0)]


def test_a_header_missing_a_column_is_refused():
    with pytest.raises(FileFormatError, match="lacks window_start"):
        read_aggs(["ticker,volume,open,close,high,low,transactions\n"], {"AAPL"})
    with pytest.raises(FileFormatError, match="empty"):
        read_aggs([], {"AAPL"})


def test_tickers_are_exact_na_is_a_ticker_and_case_matters():
    day = date(2024, 3, 15)
    lines = [
        row("NA", "2024-03-15 09:30", 5, 5, 5, 5),
        row("TpC", "2024-03-15 09:30", 20, 20, 20, 20),
        row("TPC", "2024-03-15 09:30", 30, 30, 30, 30),
        row("BRK.B", "2024-03-15 09:30", 409.5, 409.61, 409.7, 409.4, v=5812, n=170),
        row("AAPL", "2024-03-15 09:30", 1, 1, 1, 1),
    ]
    rows = parse(lines, {"NA", "TPC", "BRK.B"}, day)
    bars = m15_bars(rows, *window(_cal(), day))
    got = {s: c for s, c in zip(bars["symbol"], bars["close"])}
    assert got == {"NA": 5.0, "TPC": 30.0, "BRK.B": 409.61}


def test_decimal_volume_is_kept_and_transactions_summed():
    day = date(2024, 3, 15)
    rows = parse([row("AAPL", "2024-03-15 09:30", 1, 1, 1, 1, v="9099.618093", n=3),
                  row("AAPL", "2024-03-15 09:31", 1, 1, 1, 1, v="0.5", n=4)], {"AAPL"}, day)
    bars = m15_bars(rows, *window(_cal(), day))
    assert bars["volume"].tolist() == [pytest.approx(9100.118093)] and bars["trade_count"].tolist() == [7]
    assert bars["vwap"].isna().all()


def _cal():
    from backfill_dagster.domain.calendar import xnys
    return xnys()


def minutes(ticker, day, start, count, base=100.0):
    """`count` consecutive minute rows from `start` (New York), prices rising a cent a minute."""
    first = pd.Timestamp(f"{day} {start}", tz="America/New_York")
    out = []
    for i in range(count):
        p = round(base + i * 0.01, 2)
        out.append(row(ticker, (first + pd.Timedelta(minutes=i)).value, p, p + 0.01, p + 0.02, p - 0.01, v=10, n=1))
    return out


@pytest.mark.parametrize("day", [date(2024, 3, 8), date(2024, 3, 11), date(2024, 11, 1), date(2024, 11, 4)])
def test_m15_on_the_session_grid_across_dst(calendar, day):
    rows = parse(minutes("AAPL", day, "04:00", 16 * 60), {"AAPL"}, day)
    bars = m15_bars(rows, *calendar.window(day))
    ny = bars["ts"].dt.tz_convert("America/New_York")
    assert len(bars) == 26
    assert ny.iloc[0].strftime("%H:%M") == "09:30" and ny.iloc[-1].strftime("%H:%M") == "15:45"
    # the first bar aggregates exactly the 15 minutes 09:30..09:44
    assert bars["open"].iloc[0] == pytest.approx(100 + 330 * 0.01)
    assert bars["close"].iloc[0] == pytest.approx(100 + 344 * 0.01 + 0.01)
    assert bars["volume"].iloc[0] == 150 and bars["trade_count"].iloc[0] == 15
    checked = validate_bars(bars, Timeframe.M15, calendar, sessions=[day])
    assert checked.rejected.empty and len(checked.valid) == 26 and checked.outside_hours == 0


def test_extended_hours_keep_04_00_to_20_00(calendar):
    day = date(2024, 3, 11)
    rows = parse(minutes("AAPL", day, "04:00", 16 * 60), {"AAPL"}, day)
    bars = m15_bars(rows, *calendar.window(day, extended=True))
    ny = bars["ts"].dt.tz_convert("America/New_York")
    assert len(bars) == 64 and ny.iloc[0].strftime("%H:%M") == "04:00" and ny.iloc[-1].strftime("%H:%M") == "19:45"
    assert validate_bars(bars, Timeframe.M15, calendar, sessions=[day], extended=True).rejected.empty


def test_early_close_ends_at_13_00(calendar):
    day = date(2024, 11, 29)
    rows = parse(minutes("AAPL", day, "04:00", 16 * 60), {"AAPL"}, day)
    bars = m15_bars(rows, *calendar.window(day))
    ny = bars["ts"].dt.tz_convert("America/New_York")
    assert len(bars) == 14 and ny.iloc[-1].strftime("%H:%M") == "12:45"


def test_missing_minutes_make_bars_from_what_is_present(calendar):
    day = date(2024, 3, 15)
    lines = [row("AAPL", "2024-03-15 09:31", 10, 11, 12, 9, v=5),  # 09:30 missing
             row("AAPL", "2024-03-15 09:44", 11, 13, 14, 10, v=7),
             row("AAPL", "2024-03-15 10:15", 20, 20, 20, 20)]  # 09:45-10:14 has no minute
    bars = m15_bars(parse(lines, {"AAPL"}, day), *calendar.window(day))
    ny = bars["ts"].dt.tz_convert("America/New_York").dt.strftime("%H:%M").tolist()
    assert ny == ["09:30", "10:15"]
    first = bars.iloc[0]
    assert (first.open, first.high, first.low, first.close, first.volume) == (10, 14, 9, 13, 12)


def test_a_liquid_ticker_without_its_closing_minute_is_named_a_thin_one_is_not(calendar):
    """The closing-minute defect: a ticker with rows in nearly every regular minute but none at
    15:59 (12:59 on a half day) is named; one with its closing minute, or one that traded too
    rarely for a quiet close to mean anything, is not."""
    day = date(2024, 3, 15)
    liquid = minutes("LACK", day, "09:30", 389)  # 09:30..15:58: the 15:59 row is missing
    whole = minutes("FULL", day, "09:30", 390)
    thin = [line for i, line in enumerate(minutes("THIN", day, "09:30", 389)) if i % 3 == 0]  # a third
    quiet_near_close = minutes("GAPS", day, "09:30", 390)[:-30:] + minutes("GAPS", day, "15:59", 1)[:1]
    extended = minutes("EXTD", day, "04:00", 16 * 60)  # 04:00..19:59, 15:59 included
    rows = parse(liquid + whole + thin + quiet_near_close + extended, {"LACK", "FULL", "THIN", "GAPS", "EXTD"}, day)
    assert lacking_closing_minute(rows, calendar.open(day), calendar.close(day)) == {"LACK": (389, 390)}
    # ...and the bars of what is there are still the minutes present (the provider decides).
    assert len(m15_bars(rows, *calendar.window(day))) > 0
    half = date(2024, 11, 29)
    rows = parse(minutes("LACK", half, "09:30", 209) + minutes("FULL", half, "09:30", 210), {"LACK", "FULL"}, half)
    assert lacking_closing_minute(rows, calendar.open(half), calendar.close(half)) == {"LACK": (209, 210)}
    assert lacking_closing_minute(parse([], {"LACK"}, day), calendar.open(day), calendar.close(day)) == {}


def test_unsorted_rows_are_sorted_before_bucketing(calendar):
    day = date(2024, 3, 15)
    lines = [row("AAPL", "2024-03-15 09:40", 12, 13, 13, 12), row("AAPL", "2024-03-15 09:30", 10, 11, 11, 10)]
    bars = m15_bars(parse(lines, {"AAPL"}, day), *calendar.window(day))
    assert (bars["open"].iloc[0], bars["close"].iloc[0]) == (10, 13)


def test_a_row_stamped_with_another_date_rejects_its_ticker_with_the_reason(calendar):
    day = date(2024, 3, 8)
    # 19:59 New York on the 8th is 00:59Z on the 9th: still the 8th's row (no false alarm)
    late = row("AAPL", "2024-03-08 19:59", 1, 1, 1, 1)
    wrong = row("MSFT", "2024-03-11 09:30", 1, 1, 1, 1)
    good = row("MSFT", "2024-03-08 09:30", 1, 1, 1, 1)
    checked = parse([late, wrong, good], {"AAPL", "MSFT"}, day)
    assert set(checked.tickers) == {"AAPL"}
    rejected = checked.rejected
    assert sorted(rejected["symbol"]) == ["MSFT", "MSFT"] and (rejected["session"] == day).all()
    assert any("on 2024-03-11 in New York, not on the file's date 2024-03-08" in r for r in rejected["reason"])
    assert any("another row of MSFT" in r for r in rejected["reason"])


def test_duplicate_rows_reject_both_copies_and_the_tickers_other_rows():
    day = date(2024, 3, 15)
    lines = [row("AMUB", "2024-03-15 09:30", 1, 1, 1, 1), row("AMUB", "2024-03-15 09:30", 2, 2, 2, 2),
             row("AMUB", "2024-03-15 09:31", 1, 1, 1, 1), row("AAPL", "2024-03-15 09:30", 1, 1, 1, 1)]
    checked = parse(lines, {"AMUB", "AAPL"}, day)
    assert list(checked.tickers) == ["AAPL"]
    reasons = checked.rejected["reason"].tolist()
    assert sum("more than one row for this ticker and window_start" in r for r in reasons) == 2 and len(reasons) == 3


def test_unparseable_numbers_are_rejected_not_dropped():
    day = date(2024, 3, 15)
    lines = [row("AAPL", "2024-03-15 09:30", "abc", 1, 1, 1), row("AAPL", "2024-03-15 09:31", 1, 1, 1, 1),
             f"MSFT,1,1,1,1,1,notanumber,1"]
    checked = parse(lines, {"AAPL", "MSFT"}, day)
    assert len(checked.tickers) == 0
    assert {r.split(": ", 1)[1] for r in checked.rejected["reason"] if "is not" in r} == {
        "open 'abc' is not a number", "window_start 'notanumber' is not an integer of nanoseconds"}


def test_day_rows_become_d1_bars_at_new_york_midnight(calendar):
    day = date(2024, 3, 11)
    lines = [f"AAPL,2869700,25.4,24.49,25.58,24.41,{ns('2024-03-11 00:00')},2301",
             f"MSFT,100,1,1,1,1,{ns('2024-03-11 00:00')},"]
    bars = d1_bars(parse(lines, {"AAPL", "MSFT"}, day))
    assert bars["ts"].tolist() == [calendar.midnight(day)] * 2
    aapl = bars.iloc[0]
    assert (aapl.open, aapl.high, aapl.low, aapl.close, aapl.volume, aapl.trade_count) == (25.4, 25.58, 24.41, 24.49, 2869700, 2301)
    assert pd.isna(bars.iloc[1].trade_count)
    assert validate_bars(bars, Timeframe.D1, calendar, sessions=[day]).rejected.empty


def test_the_2019_08_12_defect_is_rejected():
    day = date(2019, 8, 12)
    checked = parse([f"AMUB,1,1,1,1,1,1565668800000000000,1"], {"AMUB"}, day)  # stamped 2019-08-13
    assert len(checked.tickers) == 0
    assert "on 2019-08-13 in New York, not on the file's date 2019-08-12" in checked.rejected["reason"][0]


def test_quoted_lines_are_parsed_by_csv():
    rows = read_aggs([HEADER + "\n", f'"NA",1,2,2,2,2,{ns("2024-03-15 09:30")},1\n'], {"NA"})
    assert rows.tickers == ["NA"]


# ---------------------------------------------------------------------------- split factors
def test_known_splits_factor_and_refusal():
    known = KnownSplits(
        checked_from={"NVDA": date(2024, 1, 1)},
        splits={"NVDA": [(date(2024, 6, 10), Fraction(10)), (date(2024, 9, 3), Fraction(1, 2))]},
    )
    assert known.factor("NVDA", date(2024, 6, 7), date(2024, 7, 1)) == 10
    assert known.factor("NVDA", date(2024, 6, 10), date(2024, 7, 1)) == 1  # the ex-date is post-split
    assert known.factor("NVDA", date(2024, 6, 7), date(2024, 12, 1)) == 5
    assert known.factor("NVDA", date(2024, 6, 7), date(2024, 6, 9)) == 1  # not effective yet
    assert known.unknown("NVDA", date(2024, 3, 1)) is None
    assert "never checked" in known.unknown("AAPL", date(2024, 3, 1))
    assert "checked from 2024-01-01 only" in known.unknown("NVDA", date(2023, 12, 29))


def test_adjust_bars_divides_prices_and_multiplies_volume():
    bars = pd.DataFrame({"symbol": ["NVDA", "AAPL"], "ts": pd.to_datetime(["2024-06-07 13:30"] * 2, utc=True),
                         "open": [1200.0, 10.0], "high": [1210.0, 10.0], "low": [1190.0, 10.0],
                         "close": [1205.0, 10.0], "volume": [100.0, 5.0], "vwap": [np.nan, np.nan],
                         "trade_count": [3, 1]})
    out = adjust_bars(bars, {"NVDA": Fraction(10), "AAPL": Fraction(1)})
    assert out.iloc[0][["open", "high", "low", "close", "volume"]].tolist() == [120.0, 121.0, 119.0, 120.5, 1000.0]
    assert out.iloc[1]["open"] == 10.0 and out.iloc[0]["trade_count"] == 3
    reverse = adjust_bars(bars, {"AAPL": Fraction(1, 10)})
    assert reverse.iloc[1][["open", "volume"]].tolist() == [100.0, 0.5]


def test_rows_parsed_in_chunks_equal_rows_parsed_one_by_one(calendar, monkeypatch):
    import backfill_dagster.domain.minute_aggs as aggs

    day = date(2024, 3, 11)
    lines = [*minutes("AAPL", day, "09:30", 100), row("AAPL", "2024-03-11 11:30", "x", 1, 1, 1),
             *minutes("MSFT", day, "09:30", 100)]
    whole = parse(lines, {"AAPL", "MSFT"}, day)
    monkeypatch.setattr(aggs, "CHUNK_ROWS", 7)
    chunked = parse(lines, {"AAPL", "MSFT"}, day)
    assert list(chunked.tickers) == list(whole.tickers) == ["MSFT"] * 100
    assert (chunked.window_start == whole.window_start).all() and (chunked.values == whole.values).all()
    assert len(chunked.rejected) == len(whole.rejected) == 101  # AAPL's bad row rejects its session

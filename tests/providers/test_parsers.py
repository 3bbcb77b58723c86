"""Provider parsers on recorded-shape payloads (tests/providers/payloads/*.json), one test walks them.

Each case file holds the parser to call, its arguments, the payload exactly as the API shapes it,
and either the bars expected (symbol, ts, open, high, low, close, volume, vwap, trade_count) or
the text the error must contain.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from backfill_dagster.domain.bars import BAR_COLUMNS, bars_frame, validate_bars
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers import alpaca, polygon, tradier, yahoo
from backfill_dagster.providers.base import FetchRequest
from backfill_dagster.providers.payload import PayloadError, keep_requested
from tests.conftest import utc

PAYLOADS = Path(__file__).parent / "payloads"
CASES = sorted(PAYLOADS.glob("*.json"))
MODULES = {"alpaca": alpaca, "polygon": polygon, "tradier": tradier, "yahoo": yahoo}
NEXT = {"alpaca": alpaca.next_page_token, "polygon": polygon.next_url}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def run_parser(case: dict) -> pd.DataFrame:
    module, function = case["parser"].split(".")
    args = dict(case.get("args", {}))
    if "timeframe" in args:
        args["timeframe"] = Timeframe(args["timeframe"])
    return getattr(MODULES[module], function)(case["payload"], **args)


def expected_bars(rows: list) -> pd.DataFrame:
    columns = {c: [row[i] for row in rows] for i, c in enumerate(BAR_COLUMNS)}
    columns["ts"] = pd.to_datetime(columns["ts"], utc=True)
    return bars_frame(columns)


def test_there_is_a_case_for_every_quirk():
    names = {p.stem for p in CASES}
    assert {"alpaca_multi_page1", "polygon_page_with_next_url", "tradier_timesales_single_object",
            "tradier_timesales_series_null_string", "yahoo_m15_nulls_and_live_row"} <= names
    assert all(any(n.startswith(p) for n in names) for p in MODULES)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_payload_case(path):
    case = load(path)
    if "error" in case:
        with pytest.raises(PayloadError) as raised:
            run_parser(case)
        assert case["error"] in str(raised.value)
        return
    bars = run_parser(case)
    pd.testing.assert_frame_equal(bars, expected_bars(case["bars"]))
    module = case["parser"].split(".")[0]
    if "next" in case:
        assert NEXT[module](case["payload"]) == case["next"]


def test_parsed_bars_have_the_store_dtypes():
    bars = run_parser(load(PAYLOADS / "alpaca_multi_page2.json"))
    assert str(bars["ts"].dtype) == "datetime64[ns, UTC]"
    assert str(bars["trade_count"].dtype) == "Int64"
    assert list(bars.columns) == list(BAR_COLUMNS)


def test_alpaca_pages_together_hold_every_symbol():
    pages = [load(PAYLOADS / f"alpaca_multi_page{i}.json")["payload"] for i in (1, 2)]
    first = alpaca.parse_bars(pages[0])
    assert set(first["symbol"]) == {"AAPL"}  # the first page alone misses MSFT: keep paging
    both = pd.concat([alpaca.parse_bars(p) for p in pages])
    assert set(both["symbol"]) == {"AAPL", "MSFT"}


def test_polygon_next_url_carries_no_key():
    url = polygon.next_url(load(PAYLOADS / "polygon_page_with_next_url.json")["payload"])
    assert "apiKey" not in url and "cursor=" in url


def test_a_non_string_page_token_is_malformed():
    with pytest.raises(PayloadError, match="next_page_token"):
        alpaca.next_page_token({"bars": {}, "next_page_token": 12})


def request(timeframe, symbols, sessions, calendar, extended=False) -> FetchRequest:
    if timeframe is Timeframe.D1:
        start, end = calendar.midnight(sessions[0]), calendar.midnight(sessions[-1]) + pd.Timedelta(days=1)
    else:
        start, end = calendar.window(sessions[0], extended)[0], calendar.window(sessions[-1], extended)[1]
    return FetchRequest(timeframe, tuple(symbols), tuple(sessions), start, end, extended)


def test_keep_requested_drops_the_live_row_and_unfinished_bars(calendar):
    bars = run_parser(load(PAYLOADS / "yahoo_m15_nulls_and_live_row.json"))
    req = request(Timeframe.M15, ["AAPL"], [date(2024, 1, 3)], calendar)
    kept = keep_requested(bars, req, utc("2024-01-03 15:16"), calendar)
    # 14:30 and 15:00 have finished by 15:16; the live row stamped 15:07:07 has not
    assert list(kept["ts"]) == [utc("2024-01-03 14:30"), utc("2024-01-03 15:00")]
    later = keep_requested(bars, req, utc("2024-01-03 15:14"), calendar)
    assert list(later["ts"]) == [utc("2024-01-03 14:30")]


def test_keep_requested_clips_to_the_window_and_keeps_other_symbols_for_validation(calendar):
    rows = [
        ["AAPL", "2024-01-03T14:15:00Z", 1, 1, 1, 1, 1, None, None],  # pre-market: before start
        ["AAPL", "2024-01-03T14:30:00Z", 1, 1, 1, 1, 1, None, None],
        ["AAPL", "2024-01-03T21:00:00Z", 1, 1, 1, 1, 1, None, None],  # at end (inclusive API end)
        ["TSLA", "2024-01-03T14:30:00Z", 1, 1, 1, 1, 1, None, None],  # not asked for: validation rejects it
    ]
    req = request(Timeframe.M15, ["AAPL", "MSFT"], [date(2024, 1, 3)], calendar)
    kept = keep_requested(expected_bars(rows), req, utc("2024-06-01"), calendar)
    assert list(zip(kept["symbol"], kept["ts"])) == [("AAPL", utc("2024-01-03 14:30")), ("TSLA", utc("2024-01-03 14:30"))]


@pytest.mark.parametrize("case", ["polygon_other_ticker", "yahoo_other_symbol"])
def test_an_answer_for_another_symbol_is_rejected_by_validation_not_lost(calendar, case):
    """The bars survive the provider's parsing and clipping and are rejected with the reason, so they
    land in rejected_bars instead of failing the request or vanishing."""
    bars = run_parser(load(PAYLOADS / f"{case}.json"))
    req = request(Timeframe.D1, ["AAPL"], [date(2024, 1, 3), date(2024, 1, 4)][: len(bars)], calendar)
    kept = keep_requested(bars, req, utc("2024-06-01"), calendar)
    checked = validate_bars(kept, Timeframe.D1, calendar, symbols=req.symbols)
    assert checked.valid.empty and len(checked.rejected) == len(bars)
    assert "symbol was not requested" in checked.rejected["reason"].iloc[0]


def test_keep_requested_keeps_bars_of_other_dates_for_validation_to_reject(calendar):
    """An answer for other sessions (Friday's bars for Monday; epoch seconds read as milliseconds,
    i.e. January 1970) is not clipped away as "more than asked": it reaches validation, which
    rejects it, while pre-market bars of the session asked for are still dropped."""
    monday, friday = date(2024, 1, 8), date(2024, 1, 5)
    rows = [
        ["AAPL", "2024-01-05T14:30:00Z", 1, 1, 1, 1, 1, None, None],  # Friday: not asked for
        ["AAPL", "1970-01-20T17:30:00Z", 1, 1, 1, 1, 1, None, None],  # seconds read as ms
        ["AAPL", "2024-01-08T14:00:00Z", 1, 1, 1, 1, 1, None, None],  # Monday's pre-market: dropped
        ["AAPL", "2024-01-08T14:30:00Z", 1, 1, 1, 1, 1, None, None],
    ]
    req = request(Timeframe.M15, ["AAPL"], [monday], calendar)
    kept = keep_requested(expected_bars(rows), req, utc("2024-06-01"), calendar)
    assert list(kept["ts"]) == [utc("2024-01-05 14:30"), utc("1970-01-20 17:30"), utc("2024-01-08 14:30")]
    checked = validate_bars(kept, Timeframe.M15, calendar, symbols=req.symbols, sessions=req.sessions)
    assert list(checked.valid["ts"]) == [utc("2024-01-08 14:30")]
    assert list(checked.rejected["session"]) == [friday, None]
    assert all("not in the requested sessions" in r for r in checked.rejected["reason"])


def test_keep_requested_cuts_at_the_instant_the_answer_is_final(calendar):
    """A provider with a data delay (Alpaca's free SIP: 15 minutes) passes the clock less the delay:
    at 16:05 the 15:45 bar is not final yet, at 16:15 it is."""
    rows = [["AAPL", f"2024-01-03T20:{m}:00Z", 1, 1, 1, 1, 1, None, None] for m in ("30", "45")]
    req = request(Timeframe.M15, ["AAPL"], [date(2024, 1, 3)], calendar)
    sip_at_1605 = utc("2024-01-03 21:05") - pd.Timedelta(minutes=15)
    assert list(keep_requested(expected_bars(rows), req, sip_at_1605, calendar)["ts"]) == [utc("2024-01-03 20:30")]
    assert len(keep_requested(expected_bars(rows), req, utc("2024-01-03 21:00"), calendar)) == 2


def test_keep_requested_keeps_a_daily_bar_only_after_the_close(calendar):
    bars = run_parser(load(PAYLOADS / "tradier_history_single_object.json"))
    req = request(Timeframe.D1, ["AAPL"], [date(2024, 1, 3)], calendar)
    assert keep_requested(bars, req, utc("2024-01-03 20:59"), calendar).empty  # 15:59 New York
    assert len(keep_requested(bars, req, utc("2024-01-03 21:00"), calendar)) == 1


def test_parsers_accept_large_pages_quickly():
    t0 = 1704292200
    page = {"bars": {"AAPL": [
        {"t": pd.Timestamp(t0 + 900 * i, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ"),
         "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5, "v": 10, "n": 1, "vw": 1.2}
        for i in range(10_000)
    ]}, "next_page_token": None}
    bars = alpaca.parse_bars(page)
    assert len(bars) == 10_000 and bars["ts"].diff().iloc[1:].eq(pd.Timedelta(minutes=15)).all()

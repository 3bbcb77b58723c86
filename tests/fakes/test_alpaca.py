"""Fake Alpaca: multi-symbol paging with a total `limit`, shapes, auth, validation, the SIP delay."""

from __future__ import annotations

import base64
from datetime import date

import pandas as pd
import pytest

from backfill_dagster.domain.calendar import xnys

from .conftest import alpaca_headers

SYMBOLS = ["MSFT", "AAPL", "XOM"]  # asked out of order: answers come alphabetically


def _sessions(count: int, first: date = date(2024, 1, 2)) -> list[date]:
    return xnys().sessions(first, date(2024, 2, 29))[:count]


def _window(sessions: list[date]) -> dict[str, str]:
    cal = xnys()
    start = cal.window(sessions[0], extended=True)[0]
    end = cal.window(sessions[-1], extended=True)[1] - pd.Timedelta(seconds=1)  # `end` is inclusive
    return {"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": end.strftime("%Y-%m-%dT%H:%M:%SZ")}


def _to_frame(symbol: str, rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.to_datetime([r["t"] for r in rows], utc=True).as_unit("ns"),
            "open": [r["o"] for r in rows],
            "close": [r["c"] for r in rows],
            "volume": [float(r["v"]) for r in rows],
        }
    )


def test_limit_counts_all_symbols_and_tokens_yield_every_bar_once_in_symbol_order(fakes, http, config):
    sessions = _sessions(40)
    params = {"symbols": ",".join(SYMBOLS), "timeframe": "15Min", "limit": 1000, "feed": "sip", **_window(sessions)}
    pages, token = [], None
    while True:
        reply = http.get("/v2/stocks/bars", params={**params, **({"page_token": token} if token else {})},
                         headers=alpaca_headers(config))
        assert reply.status_code == 200, reply.text
        body = reply.json()
        pages.append(body["bars"])
        assert sum(len(rows) for rows in body["bars"].values()) <= 1000
        token = body["next_page_token"]
        if token is None:
            break
        assert len(pages) < 50

    # 3 x 40 sessions x 64 extended-hours bars, 1000 a page: the first page is AAPL alone.
    assert list(pages[0]) == ["AAPL"] and len(pages[0]["AAPL"]) == 1000
    assert len(pages) == -(-3 * 40 * 64 // 1000)
    order = [symbol for page in pages for symbol in page]
    assert order == sorted(order), "symbols arrive in order, each spanning consecutive pages"
    for symbol in SYMBOLS:
        rows = [r for page in pages for r in page.get(symbol, [])]
        expected = pd.concat([fakes.bars("m15", symbol, s) for s in sessions], ignore_index=True)
        got = _to_frame(symbol, rows)
        assert got["ts"].is_unique and len(got) == 40 * 64
        pd.testing.assert_series_equal(got["ts"], expected["ts"], check_names=False)
        assert got["close"].tolist() == expected["close"].tolist()
        assert got["volume"].tolist() == expected["volume"].tolist()


def test_page_token_is_base64_of_symbol_unit_and_last_bar(http, config):
    params = {"symbols": "AAPL", "timeframe": "15Min", "limit": 2, "feed": "iex", **_window(_sessions(1))}
    body = http.get("/v2/stocks/bars", params=params, headers=alpaca_headers(config)).json()
    last = body["bars"]["AAPL"][-1]["t"]
    assert base64.b64decode(body["next_page_token"]).decode() == f"AAPL|M|{last[:-1]}.000000000Z"


def test_daily_bars_are_stamped_midnight_new_york_and_match_the_regular_hours_aggregate(fakes, http, config):
    params = {"symbols": "AAPL", "timeframe": "1Day", "start": "2024-03-08", "end": "2024-03-12", "feed": "iex"}
    config.now = lambda: pd.Timestamp("2024-03-13T20:00:00Z")
    rows = http.get("/v2/stocks/bars", params=params, headers=alpaca_headers(config)).json()["bars"]["AAPL"]
    # 2024-03-10 is the DST change: EST midnight is 05:00Z, EDT midnight 04:00Z.
    assert [r["t"] for r in rows] == ["2024-03-08T05:00:00Z", "2024-03-11T04:00:00Z", "2024-03-12T04:00:00Z"]
    expected = fakes.bars("d1", "AAPL", date(2024, 3, 11))
    assert rows[1]["c"] == expected["close"].iloc[0] and rows[1]["v"] == expected["volume"].iloc[0]


def test_single_symbol_endpoint_and_unknown_symbols(http, config):
    params = {"timeframe": "15Min", "feed": "iex", **_window(_sessions(1))}
    body = http.get("/v2/stocks/AAPL/bars", params=params, headers=alpaca_headers(config)).json()
    assert body["symbol"] == "AAPL" and len(body["bars"]) == 64 and body["next_page_token"] is None
    empty = http.get("/v2/stocks/ZZZQ/bars", params=params, headers=alpaca_headers(config)).json()
    assert empty["bars"] is None
    multi = http.get("/v2/stocks/bars", params={**params, "symbols": "ZZZQ,AAPL"}, headers=alpaca_headers(config))
    assert list(multi.json()["bars"]) == ["AAPL"]  # a symbol without data is simply absent


def test_open_session_serves_only_bars_started_before_now(http, config):
    params = {"symbols": "AAPL", "timeframe": "15Min", "feed": "iex", "start": "2024-03-01T09:00:00Z"}
    rows = http.get("/v2/stocks/bars", params=params, headers=alpaca_headers(config)).json()["bars"]["AAPL"]
    assert rows[-1]["t"] == "2024-03-01T17:45:00Z"  # now is 18:00Z; end defaults to now


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [({}, 401, "unauthorized"), ({"APCA-API-KEY-ID": "x", "APCA-API-SECRET-KEY": "y"}, 403, "forbidden")],
)
def test_auth_errors(http, headers, status, message):
    reply = http.get("/v2/stocks/bars", params={"symbols": "AAPL", "timeframe": "1Day"}, headers=headers)
    assert reply.status_code == status and reply.json() == {"message": message}


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"timeframe": "15Min", "limit": "10001"}, 422),
        ({"timeframe": "15Min", "limit": "0"}, 422),
        ({"timeframe": "61Min"}, 422),
        ({"timeframe": "15Min", "start": "yesterday"}, 422),
        ({"timeframe": "15Min", "feed": "nasdaq"}, 422),
        ({"timeframe": "15Min", "adjustment": "split,bogus"}, 422),
        ({"timeframe": "15Min", "page_token": "!!!"}, 422),
        ({"timeframe": "15Min", "symbols": "AA PL"}, 400),
        ({"timeframe": "15Min", "symbols": ""}, 400),
    ],
)
def test_invalid_parameters(http, config, params, status):
    query = {"symbols": "AAPL", "feed": "iex", "start": "2024-01-02", "end": "2024-01-03", **params}
    reply = http.get("/v2/stocks/bars", params=query, headers=alpaca_headers(config))
    assert reply.status_code == status, reply.text
    assert reply.json()["message"]


def test_free_plan_refuses_the_latest_15_minutes_of_sip(http, config):
    query = {"symbols": "AAPL", "timeframe": "15Min", "start": "2024-03-01T14:30:00Z"}
    recent = http.get("/v2/stocks/bars", params={**query, "feed": "sip", "end": "2024-03-01T17:50:00Z"},
                      headers=alpaca_headers(config))
    assert recent.status_code == 403 and "recent SIP data" in recent.json()["message"]
    delayed = http.get("/v2/stocks/bars", params={**query, "feed": "sip", "end": "2024-03-01T17:40:00Z"},
                       headers=alpaca_headers(config))
    assert delayed.status_code == 200


def test_rate_headers_on_every_response_and_gzip(http, config):
    query = {"symbols": "AAPL", "timeframe": "1Day", "start": "2024-01-02", "end": "2024-01-31", "feed": "iex"}
    reply = http.get("/v2/stocks/bars", params=query, headers={**alpaca_headers(config), "Accept-Encoding": "gzip"})
    assert reply.headers["Content-Encoding"] == "gzip" and reply.json()["bars"]["AAPL"]
    for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert name in reply.headers
    bad = http.get("/v2/stocks/bars", params={**query, "limit": "0"}, headers=alpaca_headers(config))
    assert bad.status_code == 422 and "X-RateLimit-Remaining" in bad.headers


def test_share_classes_are_written_with_a_dot_and_the_dash_is_unknown(fakes, http, config):
    params = {"timeframe": "1Day", "start": "2024-02-26", "end": "2024-02-28", "feed": "iex"}
    body = http.get("/v2/stocks/bars", params={**params, "symbols": "BRK.B,BRK-B"}, headers=alpaca_headers(config)).json()
    assert list(body["bars"]) == ["BRK.B"]  # BRK-B is an unknown symbol: simply absent
    expected = [fakes.bars("d1", "BRK.B", d)["close"].iloc[0] for d in (date(2024, 2, 26), date(2024, 2, 27), date(2024, 2, 28))]
    assert [r["c"] for r in body["bars"]["BRK.B"]] == expected
    single = http.get("/v2/stocks/BRK-B/bars", params=params, headers=alpaca_headers(config)).json()
    assert single["bars"] is None


def test_a_multi_day_request_gets_post_market_bars_to_20_00_on_a_half_day(fakes, http, config):
    """The real API serves 04:00-20:00 for every session of the window, a 13:00 early close included."""
    config.now = lambda: pd.Timestamp("2024-12-10T12:00:00Z")
    params = {"symbols": "AAPL", "timeframe": "15Min", "feed": "sip", "limit": 10000,
              "start": "2024-11-27T09:00:00Z", "end": "2024-12-03T00:59:59Z"}  # 04:00 11-27 .. 19:59 12-02
    rows = http.get("/v2/stocks/bars", params=params, headers=alpaca_headers(config)).json()["bars"]["AAPL"]
    local = pd.to_datetime([r["t"] for r in rows], utc=True).tz_convert("America/New_York")
    half_day = local[local.date == date(2024, 11, 29)]
    assert half_day[0].strftime("%H:%M") == "04:00" and half_day[-1].strftime("%H:%M") == "19:45"
    assert len(half_day) == 64 and (half_day.strftime("%H:%M") == "17:00").any()
    assert len(rows) == 3 * 64  # 11-27, 11-29 (half day) and 12-02, all 04:00-20:00


def test_a_request_without_end_is_served_up_to_now_less_the_sip_delay(fakes, http, config):
    """alpaca-py's most common call gives `start` only: the API takes `end` as now, minus the free
    plan's 15 minutes for SIP, and serves it (a missing `start` is the beginning of today)."""
    query = {"symbols": "AAPL", "timeframe": "15Min", "start": "2024-03-01"}
    config.now = lambda: pd.Timestamp("2024-03-02T15:00:00Z")  # Saturday: the market is closed
    closed = http.get("/v2/stocks/bars", params=query, headers=alpaca_headers(config))
    assert closed.status_code == 200, closed.text
    rows = closed.json()["bars"]["AAPL"]
    assert len(rows) == 64 and rows[-1]["t"] == "2024-03-02T00:45:00Z"  # Friday 19:45 New York
    today_only = http.get("/v2/stocks/bars", params={"symbols": "AAPL", "timeframe": "15Min"}, headers=alpaca_headers(config))
    assert today_only.status_code == 200 and today_only.json()["bars"] == {}  # Saturday has no bars

    config.now = lambda: pd.Timestamp("2024-03-01T18:10:00Z")  # Friday 13:10, trading
    sip = http.get("/v2/stocks/bars", params=query, headers=alpaca_headers(config)).json()["bars"]["AAPL"]
    assert sip[-1]["t"] == "2024-03-01T17:45:00Z"  # end = 17:55, fifteen minutes ago
    iex = http.get("/v2/stocks/bars", params={**query, "feed": "iex"}, headers=alpaca_headers(config)).json()
    assert iex["bars"]["AAPL"][-1]["t"] == "2024-03-01T18:00:00Z"  # no delay: up to now

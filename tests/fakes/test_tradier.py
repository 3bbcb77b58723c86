"""Fake Tradier: XML-born JSON (object for one bar, null or "null" for none), XML by default,
the time & sales history window, session_filter, auth, rate headers on every response."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from .conftest import tradier_headers


def _timesales(http, config, start, end, session_filter="all", symbol="AAPL", accept="application/json"):
    params = {"symbol": symbol, "interval": "15min", "start": start, "end": end, "session_filter": session_filter}
    return http.get("/v1/markets/timesales", params=params, headers=tradier_headers(config, accept))


def test_timesales_rows_match_the_served_bars(fakes, http, config):
    reply = _timesales(http, config, "2024-02-28 04:00", "2024-02-28 19:45")
    rows = reply.json()["series"]["data"]
    expected = fakes.bars("m15", "AAPL", date(2024, 2, 28))
    assert len(rows) == len(expected) == 64
    assert rows[0]["time"] == "2024-02-28T04:00:00" and rows[0]["timestamp"] == 1709110800
    assert [r["timestamp"] for r in rows] == (expected["ts"].astype("int64") // 10**9).tolist()
    assert [r["close"] for r in rows] == [r["price"] for r in rows] == expected["close"].tolist()
    assert {"open", "high", "low", "volume", "vwap"} <= set(rows[0])


def test_session_filter_open_keeps_regular_hours(http, config):
    rows = _timesales(http, config, "2024-02-28 00:00", "2024-02-28 23:59", "open").json()["series"]["data"]
    assert rows[0]["time"].endswith("09:30:00") and rows[-1]["time"].endswith("15:45:00") and len(rows) == 26


def test_one_bar_is_an_object_and_none_is_null_or_the_string_null(http, config):
    one = _timesales(http, config, "2024-02-28 09:30", "2024-02-28 09:30").json()
    assert isinstance(one["series"]["data"], dict) and one["series"]["data"]["time"] == "2024-02-28T09:30:00"
    empties = {
        repr(_timesales(http, config, f"2024-02-{day} 09:30", f"2024-02-{day} 10:00", symbol="ZZZQ").json()["series"])
        for day in range(20, 30)
    }
    assert empties == {"None", "'null'"}  # both spellings occur ...
    again = _timesales(http, config, "2024-02-20 09:30", "2024-02-20 10:00", symbol="ZZZQ").json()
    first = _timesales(http, config, "2024-02-20 09:30", "2024-02-20 10:00", symbol="ZZZQ").json()
    assert again == first  # ... but the same request always gets the same one


def test_history_window_depends_on_session_filter(http, config):
    # now is 2024-03-01: `all` reaches 18 days back, `open` 40
    assert _timesales(http, config, "2024-02-12 09:30", "2024-02-12 10:00").json()["series"]["data"]
    assert _timesales(http, config, "2024-02-09 09:30", "2024-02-09 10:00").json()["series"] in (None, "null")
    assert _timesales(http, config, "2024-01-22 09:30", "2024-01-22 10:00", "open").json()["series"]["data"]
    assert _timesales(http, config, "2024-01-19 09:30", "2024-01-19 10:00", "open").json()["series"] in (None, "null")


def test_xml_unless_json_is_accepted(http, config):
    reply = _timesales(http, config, "2024-02-28 09:30", "2024-02-28 09:45", accept="*/*")
    assert reply.headers["Content-Type"].startswith("application/xml")
    assert reply.text.startswith("<?xml") and reply.text.count("<data>") == 2 and "<close>" in reply.text


def test_daily_history(fakes, http, config):
    params = {"symbol": "AAPL", "interval": "daily", "start": "2024-02-23", "end": "2024-02-27"}
    days = http.get("/v1/markets/history", params=params, headers=tradier_headers(config)).json()["history"]["day"]
    assert [d["date"] for d in days] == ["2024-02-23", "2024-02-26", "2024-02-27"]
    expected = fakes.bars("d1", "AAPL", date(2024, 2, 26))
    assert days[1]["close"] == expected["close"].iloc[0] and days[1]["volume"] == expected["volume"].iloc[0]
    one = http.get("/v1/markets/history", params={**params, "end": "2024-02-25"}, headers=tradier_headers(config))
    assert isinstance(one.json()["history"]["day"], dict)
    none = http.get("/v1/markets/history", params={**params, "symbol": "ZZZQ"}, headers=tradier_headers(config))
    assert none.json()["history"] in (None, "null")


@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic abc"])
def test_bad_token_is_an_apigee_fault(http, auth):
    headers = {"Accept": "application/json", **({"Authorization": auth} if auth else {})}
    reply = http.get("/v1/markets/history", params={"symbol": "AAPL"}, headers=headers)
    assert reply.status_code == 401
    assert reply.json()["fault"]["detail"]["errorcode"] == "keymanagement.service.invalid_access_token"


def test_rate_headers_on_every_response(http, config, fakes):
    config.rate_limits = {"tradier": 120}
    ok = _timesales(http, config, "2024-02-28 09:30", "2024-02-28 09:45")
    bad = http.get("/v1/markets/timesales", params={"symbol": "AAPL", "interval": "1min"}, headers=tradier_headers(config))
    assert bad.status_code == 400
    for reply, used in ((ok, 1), (bad, 2)):
        assert reply.headers["X-Ratelimit-Allowed"] == "120"
        assert reply.headers["X-Ratelimit-Used"] == str(used)
        assert reply.headers["X-Ratelimit-Available"] == str(120 - used)
        assert int(reply.headers["X-Ratelimit-Expiry"]) > 1e12  # epoch milliseconds
    assert pd.Timestamp(int(ok.headers["X-Ratelimit-Expiry"]), unit="ms", tz="UTC") > pd.Timestamp.now(tz="UTC")


def test_share_classes_are_written_with_a_dot_and_the_dash_is_unknown(fakes, http, config):
    params = {"interval": "daily", "start": "2024-02-26", "end": "2024-02-28"}
    dotted = http.get("/v1/markets/history", params={**params, "symbol": "BRK.B"}, headers=tradier_headers(config)).json()
    expected = [fakes.bars("d1", "BRK.B", d)["close"].iloc[0] for d in (date(2024, 2, 26), date(2024, 2, 27), date(2024, 2, 28))]
    assert [r["close"] for r in dotted["history"]["day"]] == expected
    dashed = http.get("/v1/markets/history", params={**params, "symbol": "BRK-B"}, headers=tradier_headers(config)).json()
    assert dashed["history"] in (None, "null")  # an unknown symbol: no bars
    ts = _timesales(http, config, "2024-02-28 09:30", "2024-02-28 10:00", symbol="BRK-B").json()
    assert ts["series"] in (None, "null")

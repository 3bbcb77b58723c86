"""Fake Yahoo chart: shapes, includePrePost, null rows, the trailing live row, history limits (422),
unknown symbols (404), the User-Agent rule (429), daily stamps, session-anchored hours."""

from __future__ import annotations

from datetime import date

import httpx
import pandas as pd
import pytest

from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.fakes.actions import CashDividend, CorporateActions, Split, pays_default_dividends
from backfill_dagster.providers.yahoo import parse_chart

from .conftest import epoch_s

CHART = "/v8/finance/chart/{}"


def _chart(http, symbol="AAPL", **params):
    return http.get(CHART.format(symbol), params=params)


def _result(reply) -> dict:
    assert reply.status_code == 200, reply.text
    body = reply.json()["chart"]
    assert body["error"] is None
    return body["result"][0]


def test_regular_hours_by_default_and_values_match(fakes, http):
    result = _result(_chart(http, interval="15m", period1=epoch_s("2024-02-28T05:00Z"), period2=epoch_s("2024-02-29T05:00Z")))
    expected = fakes.bars("m15", "AAPL", date(2024, 2, 28), extended=False)
    assert result["timestamp"] == (expected["ts"].astype("int64") // 10**9).tolist()
    quote = result["indicators"]["quote"][0]
    assert quote["close"] == expected["close"].tolist() and quote["volume"] == expected["volume"].astype(int).tolist()
    assert result["meta"]["dataGranularity"] == "15m" and result["meta"]["exchangeTimezoneName"] == "America/New_York"
    assert result["meta"]["tradingPeriods"] == [[{
        "timezone": "EST", "start": epoch_s("2024-02-28T14:30Z"), "end": epoch_s("2024-02-28T21:00Z"), "gmtoffset": -18000,
    }]]
    assert "adjclose" not in result["indicators"]


def test_include_pre_post_and_null_rows_for_intervals_without_trades(fakes, http, config):
    config.no_trade_rate = 0.3
    params = dict(interval="15m", period1=epoch_s("2024-02-28T05:00Z"), period2=epoch_s("2024-02-29T05:00Z"), includePrePost="true")
    result = _result(_chart(http, **params))
    quote = result["indicators"]["quote"][0]
    assert len(result["timestamp"]) == 64
    nulls = [i for i, c in enumerate(quote["close"]) if c is None]
    assert nulls and all(quote[k][i] is None for k in ("open", "high", "low", "volume") for i in nulls)
    expected = fakes.bars("m15", "AAPL", date(2024, 2, 28))  # the bars that exist (no-trade slots have none)
    traded = [t for t, c in zip(result["timestamp"], quote["close"]) if c is not None]
    assert traded == (expected["ts"].astype("int64") // 10**9).tolist()
    assert set(result["meta"]["tradingPeriods"]) == {"pre", "regular", "post"}


def test_trailing_live_row_while_the_session_is_open(http):
    # now is 13:00 New York; period2 ends at 11:00, yet the live row at now is appended
    result = _result(_chart(http, interval="15m", period1=epoch_s("2024-03-01T14:30Z"), period2=epoch_s("2024-03-01T16:00Z")))
    stamps = result["timestamp"]
    now = epoch_s("2024-03-01T18:00Z")
    assert stamps[:-1] == list(range(epoch_s("2024-03-01T14:30Z"), epoch_s("2024-03-01T16:00Z"), 900))
    assert stamps[-1] == now == result["meta"]["regularMarketTime"]
    quote = result["indicators"]["quote"][0]
    assert quote["volume"][-1] == 0 and quote["close"][-1] == result["meta"]["regularMarketPrice"]
    closed = _result(_chart(http, interval="15m", period1=epoch_s("2024-02-29T14:30Z"), period2=epoch_s("2024-02-29T21:00Z")))
    assert closed["timestamp"][-1] == epoch_s("2024-02-29T20:45Z")  # no live row for a closed session


def test_intraday_history_limits_are_422(http):
    now = pd.Timestamp("2024-03-01T18:00Z")
    ok = _chart(http, interval="15m", period1=int((now - pd.Timedelta(days=59)).timestamp()), period2=int(now.timestamp()))
    assert ok.status_code == 200
    old = _chart(http, interval="15m", period1=int((now - pd.Timedelta(days=60)).timestamp()), period2=int(now.timestamp()))
    assert old.status_code == 422
    error = old.json()["chart"]["error"]
    assert error["code"] == "Unprocessable Entity" and "within the last 60 days" in error["description"]
    hourly = _chart(http, interval="60m", period1=int((now - pd.Timedelta(days=731)).timestamp()), period2=int(now.timestamp()))
    assert hourly.status_code == 422
    daily = _chart(http, interval="1d", period1=epoch_s("2010-01-04T00:00Z"), period2=epoch_s("2010-01-09T00:00Z"))
    assert len(_result(daily)["timestamp"]) == 5


def test_daily_rows_are_stamped_at_the_open_with_adjclose(fakes, http):
    result = _result(_chart(http, interval="1d", period1=epoch_s("2024-02-26T05:00Z"), period2=epoch_s("2024-02-28T05:00Z")))
    assert result["timestamp"] == [epoch_s("2024-02-26T14:30Z"), epoch_s("2024-02-27T14:30Z")]
    close = fakes.bars("d1", "AAPL", date(2024, 2, 27))["close"].iloc[0]
    assert result["indicators"]["quote"][0]["close"][1] == close == result["indicators"]["adjclose"][0]["adjclose"][1]


def test_hours_are_session_anchored(http):
    result = _result(_chart(http, interval="1h", period1=epoch_s("2024-02-28T05:00Z"), period2=epoch_s("2024-02-29T05:00Z")))
    local = pd.to_datetime(result["timestamp"], unit="s", utc=True).tz_convert("America/New_York").strftime("%H:%M")
    assert list(local) == ["09:30", "10:30", "11:30", "12:30", "13:30", "14:30", "15:30"]
    assert result["meta"]["dataGranularity"] == "1h"


def test_share_class_symbols_use_a_dash(fakes, http):
    result = _result(_chart(http, "BRK-B", interval="1d", period1=epoch_s("2024-02-27T05:00Z"), period2=epoch_s("2024-02-28T05:00Z")))
    assert result["meta"]["symbol"] == "BRK-B"
    assert result["indicators"]["quote"][0]["close"] == fakes.bars("d1", "BRK.B", date(2024, 2, 27))["close"].tolist()
    # Yahoo has no BRK.B (a '.' names another exchange's listing): an unknown symbol's answer
    dotted = _chart(http, "BRK.B", interval="1d", period1=epoch_s("2024-02-27T05:00Z"), period2=epoch_s("2024-02-28T05:00Z"))
    assert dotted.status_code == 404
    assert dotted.json()["chart"]["error"] == {"code": "Not Found", "description": "No data found, symbol may be delisted"}


def test_empty_range_has_no_timestamps(http):
    result = _result(_chart(http, interval="1d", period1=epoch_s("2024-02-24T05:00Z"), period2=epoch_s("2024-02-26T05:00Z")))
    assert "timestamp" not in result and result["indicators"]["quote"] == [{}]


@pytest.mark.parametrize(
    ("symbol", "params", "status", "code"),
    [
        ("ZZZQ", {"interval": "1d"}, 404, "Not Found"),
        ("AAPL", {"interval": "4h"}, 400, "Bad Request"),
        ("AAPL", {"interval": "1d", "period1": "soon"}, 400, "Bad Request"),
    ],
)
def test_errors(http, symbol, params, status, code):
    reply = _chart(http, symbol, **params)
    assert reply.status_code == status
    assert reply.json() == {"chart": {"result": None, "error": {"code": code, "description": reply.json()["chart"]["error"]["description"]}}}


def test_no_user_agent_is_429(fakes):
    with httpx.Client(base_url=fakes.url) as client:
        del client.headers["User-Agent"]
        reply = client.get(CHART.format("AAPL"), params={"interval": "1d"})
    assert reply.status_code == 429 and "Too Many Requests" in reply.text
    assert fakes.log[-1].status == 429 and fakes.log[-1].provider == "yahoo"


@pytest.mark.parametrize("events", ["div,splits", "div|split", "div,splits,capitalGains"])
def test_events_are_served_when_asked_keyed_by_the_ex_dates_open(fakes, http, config, events):
    dividend = CashDividend("BRK.B", ex_date=date(2024, 2, 27), amount=0.5, announced=date(2024, 2, 1))
    split = Split("BRK.B", ex_date=date(2024, 2, 28), numerator=3, denominator=2, announced=date(2024, 2, 1))
    config.corporate_actions = CorporateActions(dividends=[dividend], splits=[split])
    window = dict(interval="1d", period1=epoch_s("2024-02-26T05:00Z"), period2=epoch_s("2024-03-01T05:00Z"))
    result = _result(_chart(http, "BRK-B", events=events, **window))
    assert result["events"] == {
        "dividends": {"1709044200": {"amount": 0.5, "date": 1709044200}},  # 2024-02-27 09:30 New York
        "splits": {"1709130600": {"date": 1709130600, "numerator": 3, "denominator": 2, "splitRatio": "3:2"}},
    }
    plain = _result(_chart(http, "BRK-B", **window))
    assert "events" not in plain  # only when asked
    assert plain["indicators"] == result["indicators"]  # asking for events does not change the bars
    payload = {"chart": {"result": [result], "error": None}}
    bare = {"chart": {"result": [plain], "error": None}}
    pd.testing.assert_frame_equal(parse_chart(payload, "BRK.B", Timeframe.D1), parse_chart(bare, "BRK.B", Timeframe.D1))
    only_dividends = _result(_chart(http, "BRK-B", events="div", **window))
    assert set(only_dividends["events"]) == {"dividends"}


def test_default_dividends_appear_in_a_long_daily_window(fakes, http, config):
    payer = next(s for s in ("AAPL", "MSFT", "XOM", "NVDA", "TSLA") if pays_default_dividends(s))
    window = dict(interval="1d", period1=epoch_s("2023-01-01T05:00Z"), period2=epoch_s("2024-01-01T05:00Z"))
    result = _result(_chart(http, payer, events="div,splits", **window))
    expected = config.corporate_actions.dividends(payer, date(2023, 1, 1), date(2023, 12, 31))
    assert len(expected) == 4
    assert [v["amount"] for v in result["events"]["dividends"].values()] == [d.amount for d in expected]
    assert "splits" not in result["events"]  # no splits by default

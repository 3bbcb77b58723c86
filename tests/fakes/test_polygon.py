"""Fake Polygon: `limit` counts base minutes, `next_url` pages with a cursor and no key, auth, plan window."""

from __future__ import annotations

import base64
from datetime import date
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from backfill_dagster.domain.calendar import xnys
from tests.conftest import aggregate_day

SESSIONS = xnys().sessions(date(2024, 1, 2), date(2024, 1, 8))  # 5 sessions


def _ms(ts: pd.Timestamp) -> int:
    return ts.value // 1_000_000


def _m15_path(sessions=SESSIONS, ticker="AAPL") -> str:
    cal = xnys()
    start = cal.window(sessions[0], extended=True)[0]
    end = cal.window(sessions[-1], extended=True)[1]
    return f"/v2/aggs/ticker/{ticker}/range/15/minute/{_ms(start)}/{_ms(end) - 1}"


def test_limit_counts_base_minutes_and_next_url_pages_exactly(fakes, http, config):
    first = http.get(_m15_path(), params={"apiKey": config.polygon_key, "limit": 1000, "adjusted": "true"})
    body = first.json()
    # 1000 base minutes hold 66 whole 15-minute bars (990 minutes).
    assert body["resultsCount"] == 66 and body["queryCount"] == 990 and body["status"] == "OK"
    next_url = body["next_url"]
    assert "apiKey" not in next_url and config.polygon_key not in next_url
    query = parse_qs(urlsplit(next_url).query)
    assert list(query) == ["cursor"]
    cursor = query["cursor"][0]
    decoded = parse_qs(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    assert decoded == {"adjusted": ["true"], "limit": ["1000"], "sort": ["asc"]}
    assert urlsplit(next_url).path.split("/")[-2] == str(body["results"][-1]["t"] + 15 * 60_000)

    results = list(body["results"])
    while "next_url" in body:
        parts = urlsplit(body["next_url"])
        # like the official client: path and query of next_url on our host, the key re-sent
        reply = http.get(f"{parts.path}?{parts.query}", headers={"Authorization": f"Bearer {config.polygon_key}"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        results.extend(body.get("results", []))
    expected = pd.concat([fakes.bars("m15", "AAPL", s) for s in SESSIONS], ignore_index=True)
    assert [r["t"] for r in results] == (expected["ts"].astype("int64") // 1_000_000).tolist()
    assert [r["c"] for r in results] == expected["close"].tolist()
    assert [r["v"] for r in results] == expected["volume"].tolist()


def test_hour_buckets_cut_by_the_limit_are_dropped(fakes, http, config):
    # 14:00-15:59 New York = 120 base minutes = two hour bars; limit=100 leaves only 14:00 whole.
    start, end = pd.Timestamp("2024-01-02T19:00:00Z"), pd.Timestamp("2024-01-02T20:59:00Z")
    path = f"/v2/aggs/ticker/AAPL/range/1/hour/{_ms(start)}/{_ms(end)}"
    body = http.get(path, params={"apiKey": config.polygon_key, "limit": 100}).json()
    assert body["resultsCount"] == 1 and body["queryCount"] == 60
    (bar,) = body["results"]
    m15 = fakes.bars("m15", "AAPL", date(2024, 1, 2))
    hour = m15[(m15["ts"] >= start) & (m15["ts"] < start + pd.Timedelta(hours=1))]
    expected = aggregate_day(hour, "AAPL", start)
    assert bar["t"] == _ms(start)
    assert (bar["o"], bar["h"], bar["l"], bar["c"], bar["v"]) == tuple(
        expected[["open", "high", "low", "close", "volume"]].iloc[0]
    )
    assert urlsplit(body["next_url"]).path.split("/")[-2] == str(_ms(start + pd.Timedelta(hours=1)))
    rest = http.get(body["next_url"] + f"&apiKey={config.polygon_key}").json()  # params= would drop the cursor
    assert [r["t"] for r in rest["results"]] == [_ms(start + pd.Timedelta(hours=1))] and "next_url" not in rest


def test_day_bars_at_new_york_midnight_and_dates_inclusive(fakes, http, config):
    config.now = lambda: pd.Timestamp("2024-03-13T20:00:00Z")
    body = http.get("/v2/aggs/ticker/AAPL/range/1/day/2024-03-08/2024-03-11", params={"apiKey": config.polygon_key}).json()
    assert [r["t"] for r in body["results"]] == [1709874000000, 1710129600000]  # 05:00Z EST, 04:00Z EDT
    assert body["results"][1]["c"] == fakes.bars("d1", "AAPL", date(2024, 3, 11))["close"].iloc[0]


def test_empty_answer_has_no_results_key(http, config):
    body = http.get(_m15_path(ticker="ZZZQ"), params={"apiKey": config.polygon_key}).json()
    assert body["resultsCount"] == 0 and "results" not in body and body["status"] == "OK"
    weekend = http.get("/v2/aggs/ticker/AAPL/range/1/day/2024-01-06/2024-01-07", params={"apiKey": config.polygon_key})
    assert "results" not in weekend.json()


@pytest.mark.parametrize(("params", "error"), [({}, "API Key was not provided"), ({"apiKey": "nope"}, "Unknown API Key")])
def test_auth_errors(http, params, error):
    reply = http.get(_m15_path(), params=params)
    assert reply.status_code == 401 and reply.json()["status"] == "ERROR" and reply.json()["error"] == error


def test_plan_history_window_refuses_old_windows_and_clips_straddling_ones(http, config):
    old = http.get("/v2/aggs/ticker/AAPL/range/1/day/2021-01-04/2021-01-08", params={"apiKey": config.polygon_key})
    assert old.status_code == 403 and old.json()["status"] == "NOT_AUTHORIZED"
    # now is 2024-03-01: 730 days back is 2022-03-02 (2024 is a leap year)
    clipped = http.get("/v2/aggs/ticker/AAPL/range/1/day/2022-02-24/2022-03-03", params={"apiKey": config.polygon_key})
    stamps = [pd.Timestamp(r["t"], unit="ms", tz="UTC").tz_convert("America/New_York").date() for r in clipped.json()["results"]]
    assert stamps == [date(2022, 3, 2), date(2022, 3, 3)]
    config.polygon_history_days = None
    assert http.get("/v2/aggs/ticker/AAPL/range/1/day/2021-01-04/2021-01-08", params={"apiKey": config.polygon_key}).status_code == 200


def test_unsupported_span_is_refused_clearly(http, config):
    reply = http.get("/v2/aggs/ticker/AAPL/range/1/minute/2024-01-02/2024-01-02", params={"apiKey": config.polygon_key})
    assert reply.status_code == 400 and "fake serves" in reply.json()["error"]


def test_a_date_to_takes_in_the_whole_day(http, config):
    body = http.get("/v2/aggs/ticker/AAPL/range/15/minute/2024-01-02/2024-01-02", params={"apiKey": config.polygon_key}).json()
    assert body["resultsCount"] == 64
    assert body["results"][-1]["t"] == _ms(pd.Timestamp("2024-01-03T00:45:00Z"))  # 19:45 New York


def test_descending_pages_walk_back_in_time(fakes, http, config):
    url = _m15_path()
    results, params = [], {"apiKey": config.polygon_key, "limit": 1500, "sort": "desc"}
    while url:
        body = http.get(url, params=params).json()
        results.extend(body.get("results", []))
        url, params = body.get("next_url"), None
        if url:
            url += f"&apiKey={config.polygon_key}"
    expected = pd.concat([fakes.bars("m15", "AAPL", s) for s in SESSIONS], ignore_index=True)
    assert [r["t"] for r in results] == (expected["ts"].astype("int64") // 1_000_000).tolist()[::-1]


def test_share_classes_are_written_with_a_dot_and_the_dash_is_unknown(fakes, http, config):
    day = "/range/1/day/2024-02-26/2024-02-28"
    dotted = http.get(f"/v2/aggs/ticker/BRK.B{day}", params={"apiKey": config.polygon_key}).json()
    expected = [fakes.bars("d1", "BRK.B", d)["close"].iloc[0] for d in (date(2024, 2, 26), date(2024, 2, 27), date(2024, 2, 28))]
    assert dotted["ticker"] == "BRK.B" and [r["c"] for r in dotted["results"]] == expected
    dashed = http.get(f"/v2/aggs/ticker/BRK-B{day}", params={"apiKey": config.polygon_key}).json()
    assert dashed["resultsCount"] == 0 and "results" not in dashed and dashed["status"] == "OK"  # an unknown ticker

"""The fakes after a split: every API serves the same split-adjusted bars (and raw ones where the
API offers them) as a real provider does — the old basis until the split is announced and
effective, the new one after — and Alpaca's and Polygon's corporate-action endpoints list it."""

from __future__ import annotations

from datetime import date

import httpx
import numpy as np
import pandas as pd
import pytest

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.fakes.actions import CashDividend, CorporateActions, Split
from tests.conftest import aggregate_day

from .conftest import BROWSER, alpaca_headers, epoch_s

CAL = xnys()
EX = date(2024, 2, 12)
BEFORE = CAL.previous_session(EX)
NOW_BEFORE = pd.Timestamp("2024-02-20T22:00:00Z")  # after EX, before the late announcement
NOW_AFTER = pd.Timestamp("2024-02-23T22:00:00Z")
ANNOUNCED = date(2024, 2, 21)


def registry(numerator=4, denominator=1, announced=ANNOUNCED):
    return CorporateActions(splits=[Split("AAPL", EX, numerator, denominator, announced)], default_dividends=False)


@pytest.fixture
def clock():
    return [NOW_BEFORE]


@pytest.fixture
def served(clock):
    config = FakeConfig(now=lambda: clock[0], corporate_actions=registry())
    with FakeProviders(config) as fakes, httpx.Client(base_url=fakes.url, timeout=10, headers={"User-Agent": BROWSER}) as http:
        yield fakes, http, config


def model(timeframe, session):
    """The bars without any split (the model series): what a fake serves for a symbol without splits."""
    with FakeProviders(FakeConfig(now=lambda: NOW_AFTER)) as plain:
        return plain.bars(timeframe, "AAPL", session)


def prices(frame):
    return frame[["open", "high", "low", "close"]].to_numpy()


@pytest.mark.parametrize("numerator, denominator", [(4, 1), (1, 10)])
def test_split_adjusted_bars_move_to_the_new_basis_once_the_split_is_announced(clock, numerator, denominator):
    config = FakeConfig(now=lambda: clock[0], corporate_actions=registry(numerator, denominator))
    with FakeProviders(config) as fakes:
        old_m15, post_m15 = fakes.bars("m15", "AAPL", BEFORE), fakes.bars("m15", "AAPL", EX)
        clock[0] = NOW_AFTER
        new_m15, raw_m15 = fakes.bars("m15", "AAPL", BEFORE), fakes.bars("m15", "AAPL", BEFORE, adjusted=False)
        new_d1 = fakes.bars("d1", "AAPL", BEFORE)
    base = model("m15", BEFORE)
    # Before the announcement the history is on the old basis: the ratio higher, volume lower.
    assert np.array_equal(prices(old_m15), np.round(prices(base) * numerator / denominator, 2))
    assert np.array_equal(old_m15.volume, np.round(base.volume * denominator / numerator))
    # After it, the split-adjusted history is the model's; raw stays on the old basis.
    pd.testing.assert_frame_equal(new_m15, base)
    pd.testing.assert_frame_equal(raw_m15, old_m15)
    pd.testing.assert_frame_equal(post_m15, model("m15", EX))  # the ex-date itself never changes
    for frame in (old_m15, new_m15):
        assert (frame.high >= frame[["open", "close", "low"]].max(axis=1)).all()
        assert (frame.low <= frame[["open", "close"]].min(axis=1)).all() and (frame.low > 0).all()
    # d1 is built from the served m15 bars: it bounds them exactly.
    lo, hi = CAL.window(BEFORE)
    regular = new_m15[(new_m15.ts >= lo) & (new_m15.ts < hi)]
    pd.testing.assert_frame_equal(new_d1, aggregate_day(regular, "AAPL", CAL.midnight(BEFORE)))


def test_every_api_serves_the_same_adjusted_and_raw_bars(served, clock):
    fakes, http, config = served
    clock[0] = NOW_AFTER
    lo, hi = CAL.window(BEFORE, extended=True)
    window = {"start": lo.strftime("%Y-%m-%dT%H:%M:%SZ"), "end": (hi - pd.Timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    for adjustment, adjusted in (("split", True), ("raw", False), ("dividend", False), ("all", True)):
        body = http.get("/v2/stocks/bars", headers=alpaca_headers(config), params={
            "symbols": "AAPL", "timeframe": "15Min", "adjustment": adjustment, **window}).json()
        closes = [b["c"] for b in body["bars"]["AAPL"]]
        assert closes == fakes.bars("m15", "AAPL", BEFORE, adjusted=adjusted).close.tolist(), adjustment
    for flag, adjusted in (("true", True), ("false", False)):
        body = http.get(f"/v2/aggs/ticker/AAPL/range/1/day/{BEFORE}/{BEFORE}",
                        params={"adjusted": flag, "apiKey": config.polygon_key}).json()
        assert body["results"][0]["c"] == fakes.bars("d1", "AAPL", BEFORE, adjusted=adjusted).close.iloc[0]
    chart = http.get("/v8/finance/chart/AAPL", params={"interval": "1d", "period1": epoch_s(f"{BEFORE}T05:00Z"),
                                                      "period2": epoch_s(f"{EX}T05:00Z")}).json()
    assert chart["chart"]["result"][0]["indicators"]["quote"][0]["close"] == fakes.bars("d1", "AAPL", BEFORE).close.tolist()
    history = http.get("/v1/markets/history", params={"symbol": "AAPL", "start": str(BEFORE), "end": str(BEFORE)},
                       headers={"Authorization": f"Bearer {config.tradier_token}", "Accept": "application/json"}).json()
    assert history["history"]["day"]["close"] == fakes.bars("d1", "AAPL", BEFORE).close.iloc[0]


def test_the_d1_jump_of_an_unannounced_split_is_its_ratio(served):
    fakes, _, _ = served
    last_close = fakes.bars("d1", "AAPL", BEFORE).close.iloc[0]
    first_open = fakes.bars("d1", "AAPL", EX).open.iloc[0]
    assert abs(last_close / first_open / 4 - 1) < 0.02


# ---------------------------------------------------------------------------- Alpaca /v1/corporate-actions
def alpaca_actions(http, config, **params):
    reply = http.get("/v1/corporate-actions", headers=alpaca_headers(config), params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_alpaca_lists_a_split_only_once_it_is_announced_with_dates_defaulting_to_today(served, clock):
    fakes, http, config = served
    window = {"symbols": "AAPL,MSFT", "start": "2024-01-01", "end": "2024-06-30"}
    assert alpaca_actions(http, config, **window, types="forward_split,reverse_split") == {
        "corporate_actions": {}, "next_page_token": None}
    clock[0] = NOW_AFTER
    body = alpaca_actions(http, config, **window, types="forward_split,reverse_split")
    (split,) = body["corporate_actions"]["forward_splits"]
    assert split | {"id": "-"} == {
        "id": "-", "symbol": "AAPL", "cusip": "000000000", "new_rate": 4, "old_rate": 1, "process_date": "2024-02-21",
        "ex_date": "2024-02-12", "record_date": "2024-02-12", "payable_date": "2024-02-12"}
    # start and end default to today: nothing booked today.
    assert alpaca_actions(http, config, symbols="AAPL")["corporate_actions"] == {}
    assert alpaca_actions(http, config, symbols="AAPL", start="2024-02-22")["corporate_actions"] == {}
    assert len(alpaca_actions(http, config, symbols="AAPL", start="2024-02-21")["corporate_actions"]["forward_splits"]) == 1


def test_alpaca_pages_across_types_with_a_small_limit(fakes, http, config):
    config.corporate_actions = CorporateActions(
        splits=[Split("AAPL", date(2023, 6, 5), 4, 1, date(2023, 5, 1)), Split("MSFT", date(2023, 9, 5), 1, 10, date(2023, 8, 1))],
        dividends=[CashDividend("AAPL", date(2023, 5, 12), 0.24, date(2023, 5, 1))],
    )
    params = {"symbols": "AAPL,MSFT,XOM", "start": "2023-01-01", "end": "2023-12-31", "limit": 2}
    pages, token = [], None
    while True:
        body = alpaca_actions(http, config, **params, **({"page_token": token} if token else {}))
        pages.append(body["corporate_actions"])
        assert sum(len(rows) for rows in body["corporate_actions"].values()) <= 2
        token = body["next_page_token"]
        if token is None:
            break
        assert len(pages) < 20
    rows = [(kind, row["symbol"], row["process_date"]) for page in pages for kind, listed in page.items() for row in listed]
    xom = CorporateActions().dividends("XOM", date(2022, 12, 1), date(2023, 12, 31))
    expected = len([d for d in xom if date(2023, 1, 1) <= d.payable <= date(2023, 12, 31)])
    assert len(rows) == 3 + expected and len(pages) == -(-(3 + expected) // 2)
    assert [r[2] for r in rows] == sorted(r[2] for r in rows)  # in process_date order, across types
    assert ("reverse_splits", "MSFT", "2023-09-05") in rows
    assert ("cash_dividends", "AAPL", "2023-05-26") in rows  # booked on its payable date


@pytest.mark.parametrize("params, status, message", [
    ({"types": "forward_split"}, 400, "the fake needs symbols"),
    ({"symbols": "AAPL", "types": "splits"}, 422, "invalid types: splits"),
    ({"symbols": "AAPL", "limit": 1001}, 422, "must be between 1 and 1000"),
    ({"symbols": "AAPL", "start": "2024-03-01", "end": "2024-02-01"}, 422, "end must not be before start"),
    ({"symbols": "AAPL", "page_token": "%%%"}, 422, "invalid page token"),
])
def test_alpaca_refuses_bad_requests_in_its_words(fakes, http, config, params, status, message):
    reply = http.get("/v1/corporate-actions", headers=alpaca_headers(config), params=params)
    assert reply.status_code == status and message in reply.json()["message"]
    assert http.get("/v1/corporate-actions", params={"symbols": "AAPL"}).status_code == 401


# ---------------------------------------------------------------------------- Polygon /stocks/v1
def polygon(http, config, path, **params):
    # params=None on a next_url: httpx drops a URL's own query when given params, even empty ones.
    reply = http.get(path, params=params or None, headers={"Authorization": f"Bearer {config.polygon_key}"})
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_polygon_lists_splits_newest_first_by_default_and_pages_by_next_url(fakes, http, config):
    config.corporate_actions = CorporateActions(splits=[
        Split("AAPL", date(2020, 8, 31), 4, 1, date(2020, 7, 30)), Split("AAPL", date(2014, 6, 9), 7, 1, date(2014, 4, 23)),
        Split("NVDA", date(2024, 2, 12), 10, 1, date(2024, 1, 22)), Split("NVDA", date(2024, 2, 14), 10, 1, date(2024, 12, 1)),
    ])
    body = polygon(http, config, "/stocks/v1/splits", **{"ticker.any_of": "AAPL,NVDA"})
    assert [(r["ticker"], r["execution_date"]) for r in body["results"]] == [
        ("NVDA", "2024-02-12"), ("AAPL", "2020-08-31"), ("AAPL", "2014-06-09")]  # the late one is not listed yet
    first = body["results"][1]
    assert first | {"id": "-"} == {"id": "-", "ticker": "AAPL", "execution_date": "2020-08-31", "split_from": 1.0,
                                   "split_to": 4.0, "adjustment_type": "forward_split", "historical_adjustment_factor": 0.25}
    assert body["results"][2]["historical_adjustment_factor"] == round(1 / 28, 8)  # cumulative: 7:1 then 4:1
    rows, params = [], {"ticker.any_of": "AAPL,NVDA", "sort": "execution_date.asc", "limit": 1,
                        "execution_date.gte": "2014-01-01"}
    url, pages = "/stocks/v1/splits", 0
    while url:
        page = polygon(http, config, url, **params)
        rows += page["results"]
        url, params, pages = page.get("next_url"), {}, pages + 1
        assert "apiKey" not in (url or "") and pages < 10
    assert [r["execution_date"] for r in rows] == ["2014-06-09", "2020-08-31", "2024-02-12"] and pages == 3
    filtered = polygon(http, config, "/stocks/v1/splits", ticker="AAPL", **{"execution_date.gt": "2015-01-01"})
    assert [r["execution_date"] for r in filtered["results"]] == ["2020-08-31"]


def test_polygon_lists_dividends_of_the_tickers_asked(fakes, http, config):
    config.corporate_actions = CorporateActions(
        dividends=[CashDividend("AAPL", date(2024, 2, 9), 0.24, date(2024, 2, 1))],
        splits=[Split("AAPL", date(2024, 2, 26), 4, 1, date(2024, 1, 1))], default_dividends=False)
    body = polygon(http, config, "/stocks/v1/dividends", **{"ticker.any_of": "AAPL,MSFT", "ex_dividend_date.gte": "2024-01-01"})
    (row,) = body["results"]
    assert row | {"id": "-"} == {
        "id": "-", "ticker": "AAPL", "cash_amount": 0.24, "currency": "USD", "declaration_date": "2024-02-01",
        "distribution_type": "recurring", "ex_dividend_date": "2024-02-09", "frequency": 4, "pay_date": "2024-02-23",
        "record_date": "2024-02-09", "split_adjusted_cash_amount": 0.06, "historical_adjustment_factor": 1.0}
    reply = http.get("/stocks/v1/dividends", headers={"Authorization": f"Bearer {config.polygon_key}"})
    assert reply.status_code == 400 and "needs ticker" in reply.json()["error"]
    bad = http.get("/stocks/v1/splits", params={"sort": "price.asc"}, headers={"Authorization": f"Bearer {config.polygon_key}"})
    assert bad.status_code == 400 and "sort 'price.asc'" in bad.json()["error"]
    assert http.get("/stocks/v1/splits").status_code == 401


def test_a_price_gap_moves_prices_from_its_session_on_and_is_no_corporate_action(clock):
    from backfill_dagster.fakes.actions import PriceGap

    gapped = CorporateActions(gaps=[PriceGap("AAPL", EX, 1.3)], default_dividends=False)
    clock[0] = NOW_AFTER
    with FakeProviders(FakeConfig(now=lambda: clock[0], corporate_actions=gapped)) as fakes:
        for adjusted in (True, False):
            after, before = fakes.bars("m15", "AAPL", EX, adjusted=adjusted), fakes.bars("m15", "AAPL", BEFORE, adjusted=adjusted)
            assert np.array_equal(prices(after), np.round(prices(model("m15", EX)) * 13 / 10, 2))
            assert np.array_equal(after.volume, model("m15", EX).volume)  # news moves prices, not shares
            pd.testing.assert_frame_equal(before, model("m15", BEFORE))
        jump = fakes.bars("d1", "AAPL", BEFORE).close.iloc[0] / fakes.bars("d1", "AAPL", EX).open.iloc[0]
        assert abs(jump * 1.3 - 1) < 0.03  # a 30% gap up overnight
        with httpx.Client(base_url=fakes.url, headers={"User-Agent": BROWSER}) as client:
            listed = client.get("/stocks/v1/splits", params={"ticker": "AAPL"},
                                headers={"Authorization": f"Bearer {fakes.config.polygon_key}"}).json()
        assert listed["results"] == []

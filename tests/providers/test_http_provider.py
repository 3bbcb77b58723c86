"""The paging loop and the base the HTTP providers share, against a loopback server playing scripted pages."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest

from backfill_dagster.domain.provider_errors import ProviderError
from backfill_dagster.providers.http import HttpClient, RetryPolicy
from backfill_dagster.providers.http_provider import follow_pages
from backfill_dagster.providers.payload import PayloadError
from backfill_dagster.providers.registry import FACTORIES
from backfill_dagster.providers.yahoo import BROWSER_USER_AGENT
from tests.providers.scripted import Answer, ScriptedServer

FAST = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.02, max_server_wait_s=1.0)


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


@pytest.fixture
def http():
    with HttpClient("alpaca", policy=FAST, sleep=lambda s: None) as client:
        yield client


def parse(payload):
    if not isinstance(payload.get("rows"), list):
        raise PayloadError("page: field 'rows' is missing")
    return payload["rows"]


def token_pages(http, server, attempts, max_pages=10):
    """Pages of `server` followed by `next_page_token`, the way Alpaca's are."""
    url, params = server.url + "/bars", {"symbols": "AAPL"}

    def follow(payload):
        token = payload.get("next_page_token")
        return None if token is None else (url, {**params, "page_token": token})

    return follow_pages(
        http, (url, params), parse=parse, follow=follow, count=attempts.append, provider="alpaca",
        cursor="next_page_token", max_pages=max_pages, context="bars: ",
    )


def test_follows_every_page_in_order_and_counts_each_pages_attempts(http, server):
    server.script(
        Answer(body={"rows": [1, 2], "next_page_token": "p2"}),
        Answer(503, {"message": "busy"}),  # page 2 is retried: two attempts
        Answer(body={"rows": [3], "next_page_token": "p3"}),
        Answer(body={"rows": [], "next_page_token": None}),
    )
    attempts: list[int] = []
    assert token_pages(http, server, attempts) == [[1, 2], [3], []]
    assert attempts == [1, 2, 1]
    tokens = [parse_qs(urlsplit(r["path"]).query).get("page_token") for r in server.requests]
    assert tokens == [None, ["p2"], ["p2"], ["p3"]]
    assert all(parse_qs(urlsplit(r["path"]).query)["symbols"] == ["AAPL"] for r in server.requests)


def test_a_repeated_cursor_fails_instead_of_paging_forever(http, server):
    server.script(*(Answer(body={"rows": [1], "next_page_token": "same"}) for _ in range(3)))
    attempts: list[int] = []
    with pytest.raises(ProviderError, match=r"^alpaca: bars: the API repeated a next_page_token"):
        token_pages(http, server, attempts)
    assert len(server.requests) == 2 and attempts == [1, 1]  # the calls made are counted


def test_more_pages_than_the_guard_allows_fail(http, server):
    server.script(*(Answer(body={"rows": [i], "next_page_token": f"p{i}"}) for i in range(4)))
    with pytest.raises(ProviderError, match="more than 3 pages"):
        token_pages(http, server, [], max_pages=3)
    assert len(server.requests) == 3


def test_a_malformed_page_is_the_providers_error_with_its_status_and_counted(http, server):
    server.script(Answer(body={"rows": [1], "next_page_token": "p2"}), Answer(body={"next_page_token": None}))
    attempts: list[int] = []
    with pytest.raises(ProviderError, match=r"bars: page: field 'rows' is missing \(last HTTP status 200\)") as err:
        token_pages(http, server, attempts)
    assert err.value.status == 200 and err.value.provider == "alpaca"
    assert attempts == [1, 1]


def env(url):
    return {
        "ALPACA_DATA_URL": url, "ALPACA_API_KEY": "k", "ALPACA_API_SECRET": "s",
        "POLYGON_API_URL": url, "POLYGON_API_KEY": "k", "TRADIER_API_URL": url, "TRADIER_API_TOKEN": "t",
        "YAHOO_CHART_URL": url,
    }


@pytest.mark.parametrize("name", ["alpaca", "polygon", "tradier", "yahoo"])
def test_from_config_gives_the_client_the_budget_and_the_policy(name, server, calendar):
    class Budget:
        acquired = 0

        def acquire(self):
            self.acquired += 1

        def sent(self):
            pass

    budget = Budget()
    provider = FACTORIES[name](env(server.url), calendar, lambda: pd.Timestamp("2024-03-01 17:00", tz="UTC"),
                               budget, FAST)
    try:
        assert provider._http.budget is budget and provider._http.policy is FAST
        server.script(Answer(body={}))
        provider._http.get_json(server.url + "/ping")
        assert budget.acquired == 1
        agent = server.requests[0]["headers"]["User-Agent"]
        assert (agent == BROWSER_USER_AGENT) == (name == "yahoo")
    finally:
        provider.close()


def test_from_config_names_the_missing_setting(calendar):
    with pytest.raises(ValueError, match="POLYGON_API_KEY"):
        FACTORIES["polygon"]({"POLYGON_API_URL": "http://127.0.0.1:1"}, calendar, lambda: None, None, None)

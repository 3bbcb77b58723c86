"""The shared server: rate windows and their 429s, fault injection (reproducible by seed), truncated
bodies, stalls, the request log, env(), runtime config changes, stop()."""

from __future__ import annotations

import time

import httpx
import pytest

from backfill_dagster.fakes import FakeConfig, FakeProviders

from .conftest import BROWSER, NOW, alpaca_headers, tradier_headers

DAILY = {"symbols": "AAPL", "timeframe": "1Day", "feed": "iex"}


def _alpaca(http, config, day: int = 2, **extra):
    params = {**DAILY, "start": f"2024-01-{day:02d}", "end": f"2024-01-{day:02d}", **extra}
    return http.get("/v2/stocks/bars", params=params, headers=alpaca_headers(config))


def test_rate_limit_429_with_alpaca_headers_then_the_window_resets(fakes, http, config):
    config.rate_limits = {"alpaca": 5}
    # A window long enough that eight loopback requests fit in it on a loaded machine.
    config.rate_window_s = 3.0
    before = time.time()
    replies = [_alpaca(http, config) for _ in range(8)]
    after = time.time()
    assert [r.status_code for r in replies] == [200] * 5 + [429] * 3
    assert [int(r.headers["X-RateLimit-Remaining"]) for r in replies[:5]] == [4, 3, 2, 1, 0]
    limited = replies[-1]
    assert limited.json() == {"code": 42910000, "message": "too many requests"}
    assert limited.headers["X-RateLimit-Limit"] == "5" and limited.headers["X-RateLimit-Remaining"] == "0"
    assert before <= int(limited.headers["X-RateLimit-Reset"]) <= after + 4
    assert "Retry-After" not in limited.headers
    assert fakes.calls("alpaca") == 8 and fakes.max_in_window("alpaca", 3.0) == 8
    time.sleep(max(0.0, int(limited.headers["X-RateLimit-Reset"]) - time.time()) + 0.05)
    assert _alpaca(http, config).status_code == 200


def test_rate_limit_answers_of_the_other_providers(fakes, http, config):
    config.rate_limits = {"tradier": 1, "polygon": 1, "yahoo": 1}
    for _ in range(2):
        tradier = http.get("/v1/markets/history", params={"symbol": "AAPL"}, headers=tradier_headers(config))
        polygon = http.get("/v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-05", params={"apiKey": config.polygon_key})
        yahoo = http.get("/v8/finance/chart/AAPL", params={"interval": "1d"})
    assert tradier.status_code == polygon.status_code == yahoo.status_code == 429
    assert tradier.text.startswith("Quota Violation") and tradier.text.endswith(tradier.headers["X-Ratelimit-Expiry"])
    assert tradier.headers["X-Ratelimit-Available"] == "0"
    assert polygon.json()["status"] == "ERROR" and "maximum requests per minute" in polygon.json()["error"]
    assert "Too Many Requests" in yahoo.text
    assert not any(h.lower().startswith("x-ratelimit") for h in (*polygon.headers, *yahoo.headers))


def test_a_spent_quota_answers_every_request_429_with_retry_after(fakes, http, config):
    config.quota_exhausted = {"alpaca": 3600, "tradier": 120}
    before = time.time()
    replies = [_alpaca(http, config) for _ in range(3)]
    after = time.time()
    assert [r.status_code for r in replies] == [429] * 3
    reply = replies[-1]
    assert reply.headers["Retry-After"] == "3600" and reply.json()["message"] == "too many requests"
    assert reply.headers["X-RateLimit-Remaining"] == "0"
    assert before + 3600 <= int(reply.headers["X-RateLimit-Reset"]) <= after + 3601  # the reset agrees
    tradier = http.get("/v1/markets/history", params={"symbol": "AAPL"}, headers=tradier_headers(config))
    assert tradier.status_code == 429 and tradier.headers["Retry-After"] == "120"
    assert http.get("/v2/stocks/bars", params=DAILY).status_code == 401  # auth is checked first
    polygon = http.get("/v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-05", params={"apiKey": config.polygon_key})
    assert polygon.status_code == 200  # other providers serve as usual
    assert [e.status for e in fakes.log if e.provider == "alpaca"] == [429, 429, 429, 401]
    config.quota_exhausted = {}  # read per request: the quota is back
    assert _alpaca(http, config).status_code == 200


def test_max_in_window_counts_the_busiest_sliding_window(fakes, http, config):
    for _ in range(3):
        _alpaca(http, config)
    time.sleep(1.0)  # longer than the window counted below, however slowly the three were answered
    for _ in range(2):
        _alpaca(http, config)
    assert fakes.max_in_window("alpaca", 0.8) == 3
    assert fakes.max_in_window("alpaca", 10) == 5
    assert fakes.max_in_window("polygon", 10) == 0
    fakes.reset()
    assert fakes.calls("alpaca") == 0 and fakes.log == []


def _statuses(http, config, n=30):
    return [_alpaca(http, config, day=1 + i % 28, limit=str(100 + i)).status_code for i in range(n)]


def test_faults_are_reproducible_by_seed(fakes, http, config):
    config.fault_rate = 0.5
    config.faults = ("429", "500", "503")
    first = _statuses(http, config)
    assert set(first) == {200, 429, 500, 503}
    fakes.reset()
    assert _statuses(http, config) == first
    assert [e.status for e in fakes.log] == first  # the log records what was sent
    fakes.reset()
    config.seed = 1
    assert _statuses(http, config) != first


def test_injected_429_says_the_wait_is_short_and_401_is_never_faulted(http, config):
    config.fault_rate = 1.0
    config.faults = ("429",)
    # Bounded by clocks read around each request, not after it: under load the answer can arrive
    # after the second it names has begun, and "<= 1 s away" is about when the server said it.
    before = time.time()
    reply = _alpaca(http, config)
    after = time.time()
    assert reply.status_code == 429 and reply.headers["X-RateLimit-Remaining"] == "0"
    assert before < int(reply.headers["X-RateLimit-Reset"]) <= after + 1.0
    before = time.time()
    tradier = http.get("/v1/markets/history", params={"symbol": "AAPL"}, headers=tradier_headers(config))
    after = time.time()
    assert tradier.status_code == 429 and before < int(tradier.headers["X-Ratelimit-Expiry"]) / 1000 <= after + 1.0
    wrong = http.get("/v2/stocks/bars", params=DAILY, headers={"APCA-API-KEY-ID": "x", "APCA-API-SECRET-KEY": "y"})
    assert wrong.status_code == 403
    assert http.get("/v2/stocks/bars", params=DAILY).status_code == 401


def test_truncated_body_breaks_the_client_read(fakes, http, config):
    config.fault_rate = 1.0
    config.faults = ("truncated",)
    with pytest.raises(httpx.RemoteProtocolError):
        _alpaca(http, config)
    assert fakes.log[-1].status == 200
    config.fault_rate = 0.0
    assert _alpaca(http, config).status_code == 200  # a new connection serves normally


def test_timeout_fault_stalls_then_answers(fakes, config):
    config.fault_rate = 1.0
    config.faults = ("timeout",)
    config.timeout_sleep_s = 0.3
    with httpx.Client(base_url=fakes.url, timeout=0.1) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            impatient.get("/v8/finance/chart/AAPL", params={"interval": "1d"}, headers={"User-Agent": BROWSER})
    with httpx.Client(base_url=fakes.url, timeout=5) as patient:
        started = time.monotonic()
        reply = patient.get("/v8/finance/chart/AAPL", params={"interval": "1d"}, headers={"User-Agent": BROWSER})
        assert reply.status_code == 200 and time.monotonic() - started >= 0.3


def test_unknown_paths_are_404_and_logged(fakes, http):
    reply = http.get("/v3/reference/tickers", params={"a": "1"})
    assert reply.status_code == 404
    assert (fakes.log[-1].provider, fakes.log[-1].path, fakes.log[-1].query) == ("unknown", "/v3/reference/tickers", {"a": "1"})


def test_the_log_counts_the_bars_each_alpaca_page_carried(fakes, http, config):
    """A benchmark's floor, ceil(bars returned / page size), is summed from the log: each 200 of a
    paged multi-symbol request logs exactly the bars its body holds; an answer with no bars logs None."""
    params = {"symbols": "AAPL,MSFT", "timeframe": "15Min", "feed": "iex", "limit": "1000",
              "start": "2024-01-02", "end": "2024-02-20"}
    carried, token = [], None
    while True:
        page = http.get("/v2/stocks/bars", params={**params, **({"page_token": token} if token else {})},
                        headers=alpaca_headers(config)).json()
        carried.append(sum(len(rows) for rows in page["bars"].values()))
        token = page["next_page_token"]
        if not token:
            break
    assert len(carried) > 2 and sum(carried) > 2_000
    assert [e.bars for e in fakes.log] == carried
    config.rate_limits = {"alpaca": 0}
    assert _alpaca(http, config).status_code == 429 and fakes.log[-1].bars is None
    assert http.get("/v1/markets/history", params={"symbol": "AAPL"},
                    headers=tradier_headers(config)).status_code == 200 and fakes.log[-1].bars is None


def test_env_points_every_client_at_the_fakes(fakes, config):
    env = fakes.env()
    assert fakes.url.startswith("http://127.0.0.1:")
    assert {env[k] for k in ("ALPACA_DATA_URL", "POLYGON_API_URL", "TRADIER_API_URL", "YAHOO_CHART_URL")} == {fakes.url}
    assert env["ALPACA_API_KEY"] == config.alpaca_key and env["ALPACA_API_SECRET"] == config.alpaca_secret
    assert env["POLYGON_API_KEY"] == config.polygon_key and env["TRADIER_API_TOKEN"] == config.tradier_token


def test_bars_follow_the_clock_for_the_open_session(fakes):
    today = fakes.bars("m15", "AAPL", NOW.date())
    assert today["ts"].max() == NOW - __import__("pandas").Timedelta(minutes=15)
    assert fakes.bars("m15", "ZZZQ", NOW.date()).empty


def test_invalid_config_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="unknown provider"):
        FakeConfig(rate_limits={"iex": 5})
    with pytest.raises(ValueError, match="fault kind"):
        FakeConfig(faults=("oops",))
    with pytest.raises(ValueError, match="quota_exhausted names unknown provider"):
        FakeConfig(quota_exhausted={"iex": 60})
    with pytest.raises(ValueError, match="at least 0 seconds"):
        FakeConfig(quota_exhausted={"alpaca": -1})


def test_stop_closes_keep_alive_connections():
    fakes = FakeProviders(FakeConfig(now=lambda: NOW)).start()
    with httpx.Client(base_url=fakes.url, timeout=2, headers={"User-Agent": BROWSER}) as client:
        assert client.get("/v8/finance/chart/AAPL", params={"interval": "1d"}).status_code == 200
        fakes.stop()
        with pytest.raises(httpx.TransportError):
            client.get("/v8/finance/chart/AAPL", params={"interval": "1d"})



def test_a_held_symbol_waits_unanswered_until_released_and_others_pass(fakes, http, config):
    import threading

    config.held_symbols.add("MSFT")
    answers = {}

    def ask(name, path, params, headers=None):
        answers[name] = http.get(path, params=params, headers=headers, timeout=30)

    polygon = {"apiKey": config.polygon_key}
    held = [
        threading.Thread(target=ask, args=("polygon", "/v2/aggs/ticker/MSFT/range/1/day/2024-01-02/2024-01-05", polygon)),
        # a multi-symbol request naming it waits as well
        threading.Thread(target=ask, args=("alpaca", "/v2/stocks/bars",
                                           {**DAILY, "symbols": "AAPL,MSFT", "start": "2024-01-02", "end": "2024-01-02"},
                                           alpaca_headers(config))),
    ]
    for thread in held:
        thread.start()
    ask("other", "/v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-05", polygon)
    assert answers["other"].status_code == 200
    for thread in held:
        thread.join(timeout=0.5)
    assert all(t.is_alive() for t in held) and set(answers) == {"other"}
    # The waiting requests are visible before they are answered (the log shows them only after).
    deadline = time.monotonic() + 30
    while len(fakes.held) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(fakes.held) == ["/v2/aggs/ticker/MSFT/range/1/day/2024-01-02/2024-01-05", "/v2/stocks/bars"]
    assert not any("MSFT" in e.path or e.query.get("symbols") for e in fakes.log)
    config.held_symbols.clear()
    for thread in held:
        thread.join(timeout=30)
    assert fakes.held == []
    assert answers["polygon"].status_code == 200 and answers["polygon"].json()["resultsCount"] > 0
    assert answers["alpaca"].status_code == 200 and set(answers["alpaca"].json()["bars"]) == {"AAPL", "MSFT"}

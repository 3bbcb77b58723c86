"""Each provider client against the fake provider servers (real HTTP on loopback, backfill_dagster.fakes).

The fakes serve deterministic bars; each client must return exactly them for a multi-symbol,
multi-session request, with the number of calls the API's paging implies, survive injected faults,
and report a wrong key as a 401/403 without ever showing it.
"""

from __future__ import annotations

import math
import time
from datetime import date

import pandas as pd
import pytest

from backfill_dagster.domain.bars import bars_frame
from backfill_dagster.domain.provider_errors import ProviderError
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.providers.alpaca import AlpacaProvider
from backfill_dagster.providers.base import Adjustment
from backfill_dagster.providers.http import DEFAULT_TIMEOUT, HttpClient, RetryPolicy
from backfill_dagster.providers.planner import plan_requests
from backfill_dagster.providers.polygon import PolygonProvider
from backfill_dagster.providers.registry import FACTORIES
from backfill_dagster.providers.tradier import TradierProvider
from backfill_dagster.providers.yahoo import YahooProvider
from tests.conftest import utc

NOW = utc("2024-03-01 17:00")  # a Friday, mid-session
FAST = RetryPolicy(attempts=8, backoff_s=0.01, max_backoff_s=0.05, max_server_wait_s=2.0)
TIMEOUT_S = 0.5  # the fakes' "timeout" fault must not cost a real 30 s
# A healthy fake on a loaded 2-core CI machine has been seen taking over 0.5 s for 40 sessions of
# m15 bars: the client retried and the exact call count was off by one. Tests that count calls on
# healthy fakes wait as long as a real client would (DEFAULT_TIMEOUT); only the fault test times out early.
PROVIDERS = ("alpaca", "polygon", "tradier", "yahoo")


def clock() -> pd.Timestamp:
    return NOW


@pytest.fixture
def fakes():
    config = FakeConfig(rate_limits={}, fault_rate=0.0, seed=0, now=clock)
    config.timeout_sleep_s = 3 * TIMEOUT_S  # a "timeout" fault outlasts the client's timeout
    with FakeProviders(config, host="127.0.0.1", port=0) as f:
        yield f


def make(name, fakes, calendar, *, env=None, timeout=DEFAULT_TIMEOUT, **extra):
    """A provider on the fakes, with fast retries."""
    env = env or fakes.env()
    http = HttpClient(name, policy=FAST, timeout=timeout)
    if name == "alpaca":
        return AlpacaProvider(
            calendar, clock, base_url=env["ALPACA_DATA_URL"], key_id=env["ALPACA_API_KEY"],
            secret_key=env["ALPACA_API_SECRET"], http=http, **extra,
        )
    if name == "polygon":
        return PolygonProvider(
            calendar, clock, base_url=env["POLYGON_API_URL"], api_key=env["POLYGON_API_KEY"], http=http, **extra
        )
    if name == "tradier":
        return TradierProvider(
            calendar, clock, base_url=env["TRADIER_API_URL"], token=env["TRADIER_API_TOKEN"], http=http, **extra
        )
    return YahooProvider(calendar, clock, base_url=env["YAHOO_CHART_URL"], http=http, **extra)


def logged_calls(fakes, name, expected, wait_s=5.0):
    """The fake's count of calls, once it has logged them all: a request the client gave up on
    (its timeout) is logged only when the stalled fake finally answers."""
    deadline = time.monotonic() + wait_s
    while fakes.calls(name) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return fakes.calls(name)


def sessions_for(provider, timeframe, calendar, count):
    """The last `count` closed sessions the provider reaches (Tradier and Yahoo stop early)."""
    today = NOW.tz_convert("America/New_York").date()
    sessions = calendar.recent_sessions(200, NOW)
    reachable = [d for d in sessions if provider.capabilities.reaches(timeframe, d, today)]
    return reachable[-count:]


def fetch_all(provider, symbols, sessions, timeframe, calendar, *, extended=True):
    requests = plan_requests(
        [(s, d) for s in symbols for d in sessions], timeframe, provider.capabilities, calendar,
        extended=extended, adjustment=Adjustment.SPLIT,
    )
    results = [provider.fetch(r) for r in requests]
    bars = pd.concat([r.bars for r in results], ignore_index=True)
    return requests, bars, sum(r.api_calls for r in results)


def fake_bars(fakes, symbols, sessions, timeframe, calendar, *, extended=True):
    frames = [fakes.bars(timeframe.value, s, d, extended=extended) for s in symbols for d in sessions]
    return in_hours(bars_frame(pd.concat(frames, ignore_index=True)), timeframe, calendar, extended)


def in_hours(bars, timeframe, calendar, extended):
    """Only bars inside the configured hours: what validation would keep (it drops the rest)."""
    inside = calendar.locate(bars["ts"], timeframe, extended)["inside"].to_numpy()
    return bars.loc[inside]


def same_bars(got, want):
    key = ["symbol", "ts"]
    got = got.sort_values(key).reset_index(drop=True)
    want = want.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[key + ["open", "high", "low", "close", "volume"]],
                                  want[key + ["open", "high", "low", "close", "volume"]], check_dtype=False)


# ---------------------------------------------------------------------------- exact bars, exact calls
def test_alpaca_pages_through_every_symbol(fakes, calendar):
    symbols = ["AAPL", "MSFT", "NVDA"]
    provider = make("alpaca", fakes, calendar, page_limit=1_000)
    sessions = sessions_for(provider, Timeframe.M15, calendar, 40)
    requests, bars, calls = fetch_all(provider, symbols, sessions, Timeframe.M15, calendar)
    want = fake_bars(fakes, symbols, sessions, Timeframe.M15, calendar)
    assert len(requests) == 1  # three symbols, forty sessions: one request ...
    assert calls == math.ceil(len(want) / 1_000) == logged_calls(fakes, "alpaca", calls)  # ... of several pages
    assert calls > 3 and set(bars["symbol"]) == set(symbols)
    same_bars(bars, want)


def test_alpaca_at_its_real_page_size_needs_one_call_per_10000_bars(fakes, calendar):
    symbols = ["AAPL", "MSFT", "NVDA"]
    provider = make("alpaca", fakes, calendar)
    sessions = sessions_for(provider, Timeframe.M15, calendar, 40)
    _, bars, calls = fetch_all(provider, symbols, sessions, Timeframe.M15, calendar)
    assert calls == math.ceil(len(bars) / 10_000)
    same_bars(bars, fake_bars(fakes, symbols, sessions, Timeframe.M15, calendar))


@pytest.mark.parametrize("name", PROVIDERS)
@pytest.mark.parametrize("timeframe", [Timeframe.M15, Timeframe.D1], ids=["m15", "d1"])
def test_each_provider_returns_exactly_the_fakes_bars(fakes, calendar, name, timeframe):
    symbols = ["AAPL", "MSFT"]
    provider = make(name, fakes, calendar)
    sessions = sessions_for(provider, timeframe, calendar, 40 if name != "tradier" or timeframe is Timeframe.D1 else 10)
    requests, bars, calls = fetch_all(provider, symbols, sessions, timeframe, calendar)
    same_bars(bars, fake_bars(fakes, symbols, sessions, timeframe, calendar))
    assert calls == logged_calls(fakes, name, calls)
    if name == "alpaca":
        assert calls == len(requests) == 1
    elif name == "polygon":
        assert calls >= len(requests) == len(symbols)  # one ticker a request, paged by next_url
    else:
        assert calls == len(requests) == len(symbols)  # one symbol a request, no paging


@pytest.mark.parametrize("name", PROVIDERS)
def test_regular_hours_only(fakes, calendar, name):
    symbols = ["AAPL", "MSFT"]
    provider = make(name, fakes, calendar)
    sessions = sessions_for(provider, Timeframe.M15, calendar, 5)
    _, bars, _ = fetch_all(provider, symbols, sessions, Timeframe.M15, calendar, extended=False)
    want = fake_bars(fakes, symbols, sessions, Timeframe.M15, calendar, extended=False)
    # Alpaca and Polygon cannot filter hours: what they add outside is dropped by validation
    same_bars(in_hours(bars, Timeframe.M15, calendar, False), want)


@pytest.mark.parametrize("name", PROVIDERS)
def test_a_share_class_is_the_same_bars_from_every_provider(fakes, calendar, name):
    """The store's BRK.B, asked in each provider's spelling (Yahoo: BRK-B) and labelled back."""
    provider = make(name, fakes, calendar)
    for timeframe in (Timeframe.M15, Timeframe.D1):
        sessions = sessions_for(provider, timeframe, calendar, 3)
        _, bars, _ = fetch_all(provider, ["BRK.B"], sessions, timeframe, calendar)
        assert set(bars["symbol"]) == {"BRK.B"}
        same_bars(in_hours(bars, timeframe, calendar, True), fake_bars(fakes, ["BRK.B"], sessions, timeframe, calendar))


def test_polygon_follows_next_url_with_the_key_in_a_header(fakes, calendar):
    provider = make("polygon", fakes, calendar, page_limit=5_000)
    sessions = sessions_for(provider, Timeframe.M15, calendar, 40)
    _, bars, calls = fetch_all(provider, ["AAPL"], sessions, Timeframe.M15, calendar)
    assert calls > 1 and calls == logged_calls(fakes, "polygon", calls)
    same_bars(bars, fake_bars(fakes, ["AAPL"], sessions, Timeframe.M15, calendar))
    key = fakes.env()["POLYGON_API_KEY"]
    assert all(key not in str(entry.query) for entry in fakes.log if entry.provider == "polygon")


@pytest.mark.parametrize("name", ["tradier", "yahoo"])
def test_the_open_session_gives_only_finished_bars(fakes, calendar, name):
    provider = make(name, fakes, calendar)
    today = date(2024, 3, 1)
    assert provider.capabilities.serves_open_session
    _, bars, _ = fetch_all(provider, ["AAPL"], [today], Timeframe.M15, calendar)
    assert len(bars) and (bars["ts"] + Timeframe.M15.period <= NOW).all()
    assert fetch_all(provider, ["AAPL"], [today], Timeframe.D1, calendar)[1].empty  # the day is not over


def test_delayed_history_providers_leave_the_open_session_to_others(fakes, calendar):
    for name in ("alpaca", "polygon"):  # SIP's latest 15 minutes / Polygon's delayed free plan
        assert not make(name, fakes, calendar).capabilities.serves_open_session


# ---------------------------------------------------------------------------- faults and errors
FAULT_SYMBOLS = ["AAPL", "AMZN", "GOOG", "META", "MSFT", "NFLX", "NVDA", "TSLA"]
SMALL_PAGES = {"alpaca": {"page_limit": 1_000}, "polygon": {"page_limit": 3_000}}  # many calls to fault


@pytest.mark.parametrize("name", PROVIDERS)
def test_faults_are_retried_and_the_bars_are_still_exact(fakes, calendar, name):
    healthy = make(name, fakes, calendar, **SMALL_PAGES.get(name, {}))
    sessions = sessions_for(healthy, Timeframe.M15, calendar, 10)
    _, clean, clean_calls = fetch_all(healthy, FAULT_SYMBOLS, sessions, Timeframe.M15, calendar)
    provider = make(name, fakes, calendar, timeout=TIMEOUT_S, **SMALL_PAGES.get(name, {}))
    fakes.reset()
    fakes.config.fault_rate = 0.3  # 429, 500, 503, stalls past the timeout, bodies cut in half
    _, bars, calls = fetch_all(provider, FAULT_SYMBOLS, sessions, Timeframe.M15, calendar)
    fakes.config.fault_rate = 0.0
    assert calls > clean_calls >= len(FAULT_SYMBOLS) if name != "alpaca" else calls > clean_calls > 1
    same_bars(bars, clean)
    same_bars(bars, fake_bars(fakes, FAULT_SYMBOLS, sessions, Timeframe.M15, calendar))
    assert calls == logged_calls(fakes, name, calls)  # every attempt counted, the failed ones too


@pytest.mark.parametrize("name", ["alpaca", "polygon", "tradier"])
def test_a_wrong_key_is_a_401_or_403_that_never_shows_the_key(fakes, calendar, name):
    env = dict(fakes.env())
    wrong = "WRONG-KEY-0123456789"
    for var in ("ALPACA_API_KEY", "ALPACA_API_SECRET", "POLYGON_API_KEY", "TRADIER_API_TOKEN"):
        env[var] = f"{wrong}-{var}"
    provider = make(name, fakes, calendar, env=env)
    sessions = sessions_for(provider, Timeframe.D1, calendar, 3)
    with pytest.raises(ProviderError) as raised:
        fetch_all(provider, ["AAPL"], sessions, Timeframe.D1, calendar)
    assert raised.value.status in (401, 403) and not raised.value.retryable
    assert wrong not in str(raised.value) and "check the API key" in str(raised.value)
    assert logged_calls(fakes, name, 1) == 1  # not retried


@pytest.mark.parametrize("name", PROVIDERS)
def test_the_registry_builds_each_provider_from_the_environment(fakes, calendar, name):
    provider = FACTORIES[name](fakes.env(), calendar, clock, None)
    try:
        sessions = sessions_for(provider, Timeframe.D1, calendar, 3)
        _, bars, calls = fetch_all(provider, ["AAPL"], sessions, Timeframe.D1, calendar)
        same_bars(bars, fake_bars(fakes, ["AAPL"], sessions, Timeframe.D1, calendar))
        assert calls == 1
        secrets = [v for k, v in fakes.env().items() if k.endswith(("KEY", "SECRET", "TOKEN"))]
        assert not any(s in repr(provider) for s in secrets)
    finally:
        provider.close()


# ---------------------------------------------------------------------------- configuration
def test_alpaca_sip_is_final_only_15_minutes_behind_the_clock(calendar):
    """The free plan refuses SIP's latest 15 minutes (the fake too), so the query ends 15 minutes
    ago and what it returns is final only up to then: 5 minutes after the close the 15:45 bar
    (built from trades up to 15:50 at most) and the day's d1 bar are cut, and the answer says it is
    complete through 15:50; 15 minutes after the close the session is whole."""
    session = [date(2024, 2, 29)]
    for now, bars_kept, through in [
        (utc("2024-02-29 21:05"), 25, utc("2024-02-29 20:50")),
        (utc("2024-02-29 21:15"), 26, utc("2024-02-29 21:00")),
    ]:
        config = FakeConfig(rate_limits={}, now=lambda now=now: now)
        with FakeProviders(config) as fakes:
            provider = FACTORIES["alpaca"](fakes.env(), calendar, lambda now=now: now, None)
            assert provider.provenance == "alpaca:sip"
            (request,) = plan_requests([("AAPL", session[0])], Timeframe.M15, provider.capabilities, calendar)
            result = provider.fetch(request)
            assert result.api_calls == 1 and result.complete_through == through
            want = fake_bars(fakes, ["AAPL"], session, Timeframe.M15, calendar, extended=False)
            same_bars(in_hours(result.bars, Timeframe.M15, calendar, False), want.iloc[:bars_kept])
            (daily,) = plan_requests([("AAPL", session[0])], Timeframe.D1, provider.capabilities, calendar)
            day = provider.fetch(daily)
            assert day.complete_through == through and len(day.bars) == (bars_kept == 26)


@pytest.mark.parametrize("name", ["polygon", "tradier", "yahoo", "alpaca-iex"])
def test_providers_without_a_data_delay_are_final_up_to_their_clock(fakes, calendar, name):
    if name == "alpaca-iex":
        provider = FACTORIES["alpaca"]({**fakes.env(), "ALPACA_FEED": "iex"}, calendar, clock, None)
    else:
        provider = make(name, fakes, calendar)
    for timeframe in (Timeframe.M15, Timeframe.D1):
        (request,) = plan_requests(
            [("AAPL", date(2024, 2, 29))], timeframe, provider.capabilities, calendar, adjustment=Adjustment.SPLIT
        )
        assert provider.fetch(request).complete_through == NOW


def test_alpaca_iex_serves_the_open_session(fakes, calendar):
    provider = FACTORIES["alpaca"]({**fakes.env(), "ALPACA_FEED": "IEX"}, calendar, clock, None)
    assert provider.provenance == "alpaca:iex" and provider.capabilities.serves_open_session
    _, bars, _ = fetch_all(provider, ["AAPL"], [date(2024, 3, 1)], Timeframe.M15, calendar)
    assert len(bars) and (bars["ts"] + Timeframe.M15.period <= NOW).all()


@pytest.mark.parametrize(
    "name, change, variable",
    [
        ("alpaca", {"ALPACA_FEED": "bloomberg"}, "ALPACA_FEED"),
        ("alpaca", {"ALPACA_API_SECRET": ""}, "ALPACA_API_SECRET"),
        ("polygon", {"POLYGON_API_URL": "api.polygon.io"}, "POLYGON_API_URL"),
        ("polygon", {"POLYGON_HISTORY_DAYS": "two years"}, "POLYGON_HISTORY_DAYS"),
        ("tradier", {"TRADIER_API_TOKEN": None}, "TRADIER_API_TOKEN"),
        ("yahoo", {"YAHOO_CHART_URL": "ftp://query2.finance.yahoo.com"}, "YAHOO_CHART_URL"),
    ],
)
def test_bad_settings_name_the_variable(fakes, calendar, name, change, variable):
    from backfill_dagster.providers.base import ProviderConfigError

    with pytest.raises(ProviderConfigError, match=variable):
        FACTORIES[name]({**fakes.env(), **change}, calendar, clock, None)


def test_polygon_history_depth_is_configurable(fakes, calendar):
    default = FACTORIES["polygon"](fakes.env(), calendar, clock, None)
    full = FACTORIES["polygon"]({**fakes.env(), "POLYGON_HISTORY_DAYS": "0"}, calendar, clock, None)
    assert default.capabilities.history_days[Timeframe.M15] == 730
    assert full.capabilities.history_days[Timeframe.M15] is None

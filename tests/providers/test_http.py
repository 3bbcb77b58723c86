"""The shared HTTP client against a real local HTTP server that plays scripted answers.

Sleeps are recorded instead of slept (the client takes `sleep`), so back-offs of seconds cost
nothing; only the timeout test waits for real, a fraction of a second. The server's clock (its
`Date` header) and the client's are both NOW unless a test skews one.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
from datetime import UTC, datetime
from urllib.parse import quote, quote_plus

import pytest

from backfill_dagster.domain.provider_errors import ProviderError, ProviderUnavailable, Unavailability
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers.base import FetchRequest, ProviderConfigError
from backfill_dagster.providers.config import setting_secret, setting_url
from backfill_dagster.providers.http import (
    Credentials,
    HttpClient,
    RetryPolicy,
    ServerWait,
    Unlimited,
    server_wait,
)
from backfill_dagster.providers.redaction import redact_secrets
from tests.providers.scripted import Answer, ScriptedServer

SECRET = "sk-live-0123456789abcdef"
KEY_ID = "AKIDEXAMPLE123456"
CREDENTIALS = Credentials(
    {"APCA-API-KEY-ID": KEY_ID, "APCA-API-SECRET-KEY": SECRET}, hint="ALPACA_API_KEY / ALPACA_API_SECRET"
)
NOW = 1_700_000_000.0
FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05, max_server_wait_s=60.0)


class RecordingBudget:
    """A budget that records what the client told it: delays in seconds, as the server meant them."""

    def __init__(self):
        self.acquired = 0
        self.answered = 0
        self.pauses: list[float] = []
        self.unavailable: list[tuple[float, str]] = []

    def acquire(self) -> None:
        self.acquired += 1

    def pause_for(self, seconds: float) -> None:
        self.pauses.append(seconds)

    def unavailable_for(self, seconds: float, reason: str) -> Unavailability:
        self.unavailable.append((seconds, reason))
        return Unavailability(datetime.fromtimestamp(NOW + seconds, UTC), reason)

    def sent(self) -> None:
        self.answered += 1


@pytest.fixture
def server():
    with ScriptedServer(now=lambda: NOW) as s:
        yield s


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def budget():
    return RecordingBudget()


@pytest.fixture
def client(sleeps, budget):
    # The real client timeout: a scripted answer is one attempt, and a timeout under load would
    # spend the next one and shift every count that follows.
    http = HttpClient("alpaca", budget=budget, policy=FAST, sleep=sleeps.append, clock=lambda: NOW)
    yield http
    http.close()


def get(client, server, path="/v2/stocks/bars", params=None):
    return client.get_json(server.url + path, params, credentials=CREDENTIALS)


# ---------------------------------------------------------------------------- success and retries
def test_sends_credentials_user_agent_and_reuses_the_connection(client, server, budget):
    server.script(Answer(body={"bars": {}}), Answer(body={"bars": {}}))
    first = get(client, server, params={"symbols": "AAPL"})
    get(client, server)
    assert first.payload == {"bars": {}} and first.attempts == 1 and first.status == 200
    sent = server.requests[0]
    assert sent["headers"]["APCA-API-KEY-ID"] == KEY_ID and sent["headers"]["APCA-API-SECRET-KEY"] == SECRET
    assert sent["headers"]["User-Agent"].startswith("backfill-dagster/")
    assert sent["headers"]["Accept"] == "application/json"
    assert sent["path"] == "/v2/stocks/bars?symbols=AAPL"
    assert server.requests[0]["port"] == server.requests[1]["port"]  # one kept-alive connection
    assert budget.acquired == 2


def test_retries_5xx_and_429_with_growing_backoff_then_succeeds(client, server, sleeps, budget):
    server.script(Answer(503), Answer(500), Answer(429), Answer(body={"ok": 1}))
    reply = get(client, server)
    assert reply.payload == {"ok": 1} and reply.attempts == 4
    assert budget.acquired == 4  # the budget is asked before every attempt, retries included
    assert budget.answered == 4  # and told when each one was answered, failed ones too
    assert len(sleeps) == 3
    # exponential with jitter: 0.01, 0.02, 0.04 (+ up to 0.01 jitter each)
    for wait, base in zip(sleeps, (0.01, 0.02, 0.04)):
        assert base <= wait <= base + 0.01 + 1e-9
    # the 429 without any header still pauses everyone, for the back-off it chose
    assert budget.pauses == [pytest.approx(sleeps[2])]


@pytest.mark.parametrize(
    "headers, wait",
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": email.utils.formatdate(NOW + 12, usegmt=True)}, 12.0),
        ({"X-RateLimit-Reset": str(int(NOW + 20)), "X-RateLimit-Limit": "200"}, 20.0),  # Alpaca
        ({"X-Ratelimit-Expiry": str(int((NOW + 30) * 1000)), "X-Ratelimit-Allowed": "120"}, 30.0),  # Tradier ms
        ({"X-Ratelimit-Expiry": str(int(NOW + 25))}, 25.0),  # the same header in seconds
        ({"Retry-After": "60"}, 60.0),  # as long as a retry may wait (max_server_wait_s)
    ],
    ids=["retry-after-seconds", "retry-after-date", "alpaca-reset", "tradier-expiry-ms", "tradier-expiry-s", "at-cap"],
)
def test_a_429_waits_until_the_server_says_and_pauses_the_shared_budget(client, server, sleeps, budget, headers, wait):
    server.script(Answer(429, {"message": "too many requests"}, headers), Answer())
    assert get(client, server).attempts == 2
    assert sleeps[0] == pytest.approx(wait, abs=0.011)  # + jitter of at most backoff_s
    assert budget.pauses == [pytest.approx(wait)]  # a delay: the budget ends it on its own clock
    assert budget.unavailable == []


@pytest.mark.parametrize(
    "headers",
    [
        {"X-RateLimit-Reset": str(int(NOW + 20))},  # Alpaca, epoch seconds
        {"X-Ratelimit-Expiry": str(int((NOW + 20) * 1000))},  # Tradier, epoch milliseconds
        {"Retry-After": email.utils.formatdate(NOW + 20, usegmt=True)},  # an HTTP date
    ],
    ids=["alpaca-reset", "tradier-expiry", "retry-after-date"],
)
@pytest.mark.parametrize("skew", [3600.0, -3600.0])
def test_an_absolute_reset_is_read_on_the_servers_clock_not_a_skewed_local_one(server, sleeps, budget, headers, skew):
    # The client's clock is an hour off; the server's Date header says NOW, its reset NOW + 20 s.
    with HttpClient("alpaca", budget=budget, policy=FAST, sleep=sleeps.append, clock=lambda: NOW + skew) as http:
        server.script(Answer(429, {"message": "too many requests"}, headers), Answer())
        assert get(http, server).attempts == 2
    assert budget.pauses == [pytest.approx(20.0)] and sleeps[0] == pytest.approx(20.0, abs=0.011)


@pytest.mark.parametrize(
    "headers",
    [{"X-RateLimit-Reset": str(int(NOW + 3600))}, {"X-Ratelimit-Expiry": str(int((NOW + 3600) * 1000))}],
    ids=["alpaca-reset", "tradier-expiry"],
)
def test_a_reset_without_a_date_header_pauses_at_most_one_rate_window(server, sleeps, budget, headers):
    """No Date header: the reset is read on this worker's clock, an hour behind the server's. The
    pause is bounded by the per-minute window the reset ends, not an hour for every process."""
    with HttpClient("alpaca", budget=budget, policy=FAST, sleep=sleeps.append, clock=lambda: NOW) as http:
        server.script(Answer(429, {"message": "too many requests"}, {**headers, "Date": ""}), Answer())
        assert get(http, server).attempts == 2
    assert budget.unavailable == [] and budget.pauses == [pytest.approx(60.0)]
    assert sleeps[0] == pytest.approx(60.0, abs=0.011)
    # A nearer reset is waited as said.
    assert server_wait({"x-ratelimit-reset": str(int(NOW + 9))}, 429, NOW).seconds == 9


@pytest.mark.parametrize("status", [429, 503])
def test_a_server_wait_beyond_the_cap_fails_at_once_and_makes_the_provider_unavailable(
    client, server, sleeps, budget, status, caplog
):
    server.script(Answer(status, {"message": "daily quota exhausted"}, {"Retry-After": "3600"}), Answer())
    request = FetchRequest(Timeframe.M15, ("AAPL",), (datetime(2023, 11, 13).date(),), None, None)
    with caplog.at_level(logging.WARNING), pytest.raises(ProviderUnavailable) as raised:
        client.get_json(server.url + "/v2/stocks/bars", credentials=CREDENTIALS, request=request)
    error = raised.value
    assert len(server.requests) == 1 and sleeps == []  # neither retried nor waited out
    assert not error.retryable and error.status == status and error.provider == "alpaca"
    reason = f"HTTP {status} with Retry-After 3600 s: daily quota exhausted"
    assert budget.unavailable == [(3600.0, reason)] and budget.pauses == []  # every process is told
    assert error.until == datetime(2023, 11, 14, 23, 13, 20, tzinfo=UTC)  # NOW + 1 h
    assert str(error) == (
        f"alpaca for m15 AAPL 2023-11-13: unavailable until 2023-11-14 23:13:20 UTC: {reason} "
        f"(last HTTP status {status})"
    )
    assert "alpaca is unavailable until 2023-11-14 23:13:20 UTC" in caplog.text and reason in caplog.text


def test_a_budget_that_refuses_sends_nothing_and_the_error_names_the_request(server, sleeps):
    until = Unavailability(datetime(2023, 11, 14, 23, 13, 20, tzinfo=UTC), "HTTP 429 with Retry-After 3600 s")

    class Refusing(Unlimited):
        def acquire(self) -> None:
            raise ProviderUnavailable("alpaca", until, sent=False)

    request = FetchRequest(Timeframe.D1, ("MSFT",), (datetime(2023, 11, 13).date(),), None, None)
    with HttpClient("alpaca", budget=Refusing(), policy=FAST, sleep=sleeps.append) as http:
        with pytest.raises(ProviderUnavailable) as raised:
            http.get_json(server.url + "/v2/stocks/bars", request=request)
    assert server.requests == [] and sleeps == []
    assert str(raised.value) == (
        "alpaca for d1 MSFT 2023-11-13: unavailable until 2023-11-14 23:13:20 UTC: "
        "HTTP 429 with Retry-After 3600 s; not sent"
    )
    assert raised.value.request is request and not raised.value.retryable


def test_retry_after_on_503_is_honoured_without_pausing_the_budget(client, server, sleeps, budget):
    server.script(Answer(503, headers={"Retry-After": "3", "X-RateLimit-Reset": str(int(NOW + 50))}), Answer())
    get(client, server)
    assert sleeps[0] == pytest.approx(3, abs=0.011) and budget.pauses == []


def test_a_cut_off_body_is_retried(client, server):
    body = json.dumps({"bars": {"AAPL": [{"t": "x"}] * 50}}).encode()
    server.script(
        Answer(body=body, truncate_to=40),  # Content-Length promises more than arrives
        Answer(body=body[:40], headers={}),  # a complete message whose JSON is cut
        Answer(body=b""),  # an empty body
        Answer(body=body),
    )
    reply = get(client, server)
    assert reply.attempts == 4 and len(reply.payload["bars"]["AAPL"]) == 50


def test_a_timeout_is_retried(server, sleeps):
    # The stall is far longer than the timeout and the healthy answers are spares: under load a
    # retry may time out too, and that must not spend the only good answer.
    with HttpClient("polygon", policy=FAST, sleep=sleeps.append, timeout=1.0) as http:
        server.script(Answer(delay_s=3.0), *[Answer(body={"ok": 2})] * 3)
        reply = http.get_json(server.url + "/v2/aggs")
    assert reply.payload == {"ok": 2} and reply.attempts >= 2
    assert len(server.requests) == reply.attempts  # each attempt was a request, the first one timed out


def test_a_refused_connection_is_retried_then_reported(sleeps):
    with HttpClient("yahoo", policy=FAST, sleep=sleeps.append, timeout=0.5) as http:
        with pytest.raises(ProviderError) as raised:
            http.get_json("http://127.0.0.1:9/v8/finance/chart/AAPL")  # discard port: nobody listens
    assert raised.value.retryable and raised.value.status is None
    assert "after 4 attempt(s)" in str(raised.value) and "ConnectError" in str(raised.value)


def test_giving_up_raises_a_retryable_provider_error_with_the_last_status(client, server, budget):
    server.script(*[Answer(503, {"message": "upstream maintenance"})] * 4)
    with pytest.raises(ProviderError) as raised:
        get(client, server)
    error = raised.value
    assert error.status == 503 and error.retryable and error.provider == "alpaca"
    assert "failed after 4 attempt(s)" in str(error) and "upstream maintenance" in str(error)
    assert budget.acquired == 4 and len(server.requests) == 4


# ---------------------------------------------------------------------------- what is not retried
def test_a_bad_request_is_not_retried(client, server, sleeps):
    server.script(Answer(422, {"code": 42210000, "message": "invalid timeframe"}))
    with pytest.raises(ProviderError) as raised:
        get(client, server)
    assert raised.value.status == 422 and not raised.value.retryable
    assert "invalid timeframe" in str(raised.value)
    assert len(server.requests) == 1 and sleeps == []


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_credentials_say_to_check_the_key_and_never_show_it(client, server, status, caplog):
    # a server that echoes the key back must not get it into our message either
    server.script(Answer(status, {"message": f"key {KEY_ID} / {SECRET} is not authorized"}))
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(ProviderError) as raised:
            get(client, server)
    text = str(raised.value)
    assert raised.value.status == status and not raised.value.retryable
    assert "check the API key (ALPACA_API_KEY / ALPACA_API_SECRET)" in text
    assert SECRET not in text and KEY_ID not in text and "***" in text
    assert SECRET not in caplog.text and KEY_ID not in caplog.text
    error = raised.value  # nothing chained that could print the request
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


SLASHED = "AbC/dEf+gh=IjKlMnOp/qrst"  # base64-looking, as many API secrets are


def lower_hex(text):
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(lambda: "x" * 290 + SECRET, id="across-the-300-character-cut"),
        pytest.param(lambda: "y" * 293 + SECRET, id="cut-after-its-first-four-characters"),
        pytest.param(lambda: "bad key " + quote(SLASHED, safe=""), id="percent-encoded"),
        pytest.param(lambda: "bad key " + lower_hex(quote(SLASHED, safe="")), id="percent-encoded-lower-hex"),
        pytest.param(lambda: "bad key " + quote_plus(SLASHED), id="form-encoded"),
    ],
)
def test_an_echoed_key_is_blanked_however_the_server_cut_or_encoded_it(server, sleeps, echo):
    """Error texts are cut at 300 characters: a key straddling the cut must not leave its first
    characters, and a key echoed URL-encoded must be blanked as well as one echoed as sent."""
    creds = Credentials({"APCA-API-KEY-ID": KEY_ID, "APCA-API-SECRET-KEY": SECRET, "X-Other": SLASHED},
                        hint="ALPACA_API_KEY / ALPACA_API_SECRET")
    server.script(Answer(403, {"message": echo()}), Answer(400, echo()))
    for _ in range(2):  # a JSON error body, then a plain-text one
        with HttpClient("alpaca", policy=FAST, sleep=sleeps.append, clock=lambda: NOW) as http:
            with pytest.raises(ProviderError) as raised:
                http.get_json(server.url + "/v2/stocks/bars", credentials=creds)
        text = str(raised.value)
        assert "HTTP 40" in text
        for secret in (SECRET, SLASHED):
            for form in (secret, quote(secret, safe=""), quote_plus(secret)):
                assert form[:4] not in text, (form, text)


def test_secrets_in_query_strings_never_reach_messages_or_logs(server, sleeps, caplog):
    token = "pk_ABCDEF0123456789"
    creds = Credentials({"Authorization": f"Bearer {token}"}, hint="POLYGON_API_KEY")
    server.script(*[Answer(500, f"upstream said: bad apiKey={token}")] * 2)
    with caplog.at_level(logging.DEBUG):
        with HttpClient("polygon", policy=RetryPolicy(attempts=2, backoff_s=0.0), sleep=sleeps.append) as http:
            with pytest.raises(ProviderError) as raised:
                http.get_json(f"{server.url}/v2/aggs/ticker/AAPL?apiKey={token}", credentials=creds)
    assert token not in str(raised.value) and token not in caplog.text
    assert "apiKey=***" in str(raised.value)
    assert "retry 1 of 1" in caplog.text  # retries are logged, redacted
    assert token not in repr(creds) and token not in repr(http)


def test_a_200_that_is_not_json_is_not_retried(client, server):
    server.script(Answer(200, "<html>Will be right back</html>", {"Content-Type": "text/html"}))
    with pytest.raises(ProviderError, match="expected JSON, got text/html") as raised:
        get(client, server)
    assert not raised.value.retryable and len(server.requests) == 1


def test_redirects_are_not_followed(client, server):
    server.script(Answer(302, b"", {"Location": "http://example.invalid/steal"}))
    with pytest.raises(ProviderError, match="unexpected redirect"):
        get(client, server)
    assert len(server.requests) == 1


# ---------------------------------------------------------------------------- pure helpers
def test_server_wait_reads_each_header_and_unit():
    assert server_wait({"retry-after": "5"}, 429, NOW) == ServerWait(5.0, "Retry-After 5 s")
    assert server_wait({"retry-after": "3600"}, 503, NOW) == ServerWait(3600.0, "Retry-After 3600 s")
    assert server_wait({"x-ratelimit-reset": str(int(NOW + 9))}, 429, NOW) == ServerWait(
        9.0, f"X-RateLimit-Reset {int(NOW + 9)} (in 9 s)"
    )
    assert server_wait({"x-ratelimit-expiry": str(int(NOW + 9) * 1000)}, 429, NOW).seconds == 9
    assert server_wait({"x-ratelimit-reset": "30"}, 429, NOW).seconds == 30  # a delta, not an epoch
    assert server_wait({"x-ratelimit-reset": str(NOW + 9)}, 500, NOW) is None  # only a 429 means "wait"
    assert server_wait({"retry-after": "5"}, 500, NOW) is None
    assert server_wait({"x-ratelimit-reset": str(NOW - 9)}, 429, NOW) is None  # past: not said
    assert server_wait({"retry-after": "soon"}, 429, NOW) is None
    assert server_wait({}, 429, NOW) is None


def test_server_wait_measures_absolute_times_on_the_servers_date_header():
    date = email.utils.formatdate(NOW, usegmt=True)
    fast, slow = NOW + 3600, NOW - 3600  # the local clock, an hour off either way
    reset = {"date": date, "x-ratelimit-reset": str(int(NOW + 9))}
    assert server_wait(reset, 429, fast).seconds == 9 and server_wait(reset, 429, slow).seconds == 9
    later = email.utils.formatdate(NOW + 12, usegmt=True)
    assert server_wait({"date": date, "retry-after": later}, 429, fast) == ServerWait(12.0, f"Retry-After {later} (in 12 s)")
    assert server_wait({"date": date, "retry-after": "7"}, 429, fast).seconds == 7  # a delay needs no clock
    # no Date header, or one that does not parse: the local clock is all there is
    assert server_wait({"x-ratelimit-reset": str(int(NOW + 9))}, 429, NOW - 1).seconds == 10
    assert server_wait({"date": "yesterday", "x-ratelimit-reset": str(int(NOW + 9))}, 429, NOW).seconds == 9


def test_redact_blanks_secrets_tokens_and_key_parameters():
    text = f"GET /x?apiKey=abc123&symbols=AAPL token={SECRET} Authorization: Bearer abcdefghijkl {KEY_ID}"
    out = redact_secrets(text, [KEY_ID])
    assert "abc123" not in out and SECRET not in out and "abcdefghijkl" not in out and KEY_ID not in out
    assert "symbols=AAPL" in out


def test_settings_errors_name_the_variable_never_the_value():
    with pytest.raises(ProviderConfigError, match="ALPACA_API_KEY"):
        setting_secret({"ALPACA_API_KEY": "  "}, "ALPACA_API_KEY", "alpaca")
    for bad in ("ftp://host", "not a url", "https://user:hunter2@host", "https://host/?apiKey=hunter2"):
        with pytest.raises(ProviderConfigError) as raised:
            setting_url({"POLYGON_API_URL": bad}, "POLYGON_API_URL", "https://api.polygon.io")
        assert "POLYGON_API_URL" in str(raised.value) and "hunter2" not in str(raised.value)
    assert setting_url({}, "YAHOO_CHART_URL", "https://query2.finance.yahoo.com") == "https://query2.finance.yahoo.com"
    assert setting_url({"X": "http://127.0.0.1:8080/"}, "X", "https://d") == "http://127.0.0.1:8080"

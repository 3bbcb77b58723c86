"""The shared HTTP client against a real local HTTP server that plays scripted answers.

Sleeps are recorded instead of slept (the client takes `sleep`), so back-offs of seconds cost
nothing; only the timeout test waits for real, a fraction of a second.
"""

from __future__ import annotations

import email.utils
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from backfill_dagster.providers.base import ProviderConfigError, ProviderError
from backfill_dagster.providers.config import setting_secret, setting_url
from backfill_dagster.providers.http import (
    Credentials,
    HttpClient,
    RetryPolicy,
    redact,
    server_retry_at,
)

SECRET = "sk-live-0123456789abcdef"
KEY_ID = "AKIDEXAMPLE123456"
CREDENTIALS = Credentials(
    {"APCA-API-KEY-ID": KEY_ID, "APCA-API-SECRET-KEY": SECRET}, hint="ALPACA_API_KEY / ALPACA_API_SECRET"
)
NOW = 1_700_000_000.0
FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05, max_server_wait_s=60.0)


@dataclass
class Answer:
    status: int = 200
    body: bytes | dict | str = b'{"ok": true}'
    headers: dict = field(default_factory=dict)
    truncate_to: int | None = None  # send only this many body bytes, then drop the connection
    delay_s: float = 0.0


class ScriptedServer:
    """A loopback HTTP/1.1 server answering from a queue; it records every request it got."""

    def __init__(self):
        self.answers: queue.Queue[Answer] = queue.Queue()
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse is visible

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "port": self.client_address[1]}
                )
                try:
                    answer = outer.answers.get_nowait()
                except queue.Empty:
                    answer = Answer(500, b'{"message": "script exhausted"}')
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                body = answer.body
                if isinstance(body, dict):
                    body = json.dumps(body).encode()
                elif isinstance(body, str):
                    body = body.encode()
                try:
                    self.send_response(answer.status)
                    headers = {"Content-Type": "application/json", **answer.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if answer.truncate_to is not None:
                        self.wfile.write(body[: answer.truncate_to])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def script(self, *answers: Answer) -> None:
        for a in answers:
            self.answers.put(a)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class RecordingBudget:
    def __init__(self):
        self.acquired = 0
        self.answered = 0
        self.pauses: list[float] = []

    def acquire(self) -> None:
        self.acquired += 1

    def pause_until(self, epoch_s: float) -> None:
        self.pauses.append(epoch_s)

    def sent(self) -> None:
        self.answered += 1


@pytest.fixture
def server():
    with ScriptedServer() as s:
        yield s


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def budget():
    return RecordingBudget()


@pytest.fixture
def client(sleeps, budget):
    http = HttpClient("alpaca", budget=budget, policy=FAST, sleep=sleeps.append, clock=lambda: NOW, timeout=2.0)
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
    assert budget.pauses == [pytest.approx(NOW + sleeps[2])]


@pytest.mark.parametrize(
    "headers, wait",
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": email.utils.formatdate(NOW + 12, usegmt=True)}, 12.0),
        ({"X-RateLimit-Reset": str(int(NOW + 20)), "X-RateLimit-Limit": "200"}, 20.0),  # Alpaca
        ({"X-Ratelimit-Expiry": str(int((NOW + 30) * 1000)), "X-Ratelimit-Allowed": "120"}, 30.0),  # Tradier ms
        ({"X-Ratelimit-Expiry": str(int(NOW + 25))}, 25.0),  # the same header in seconds
        ({"Retry-After": "3600"}, 60.0),  # capped at max_server_wait_s
    ],
    ids=["retry-after-seconds", "retry-after-date", "alpaca-reset", "tradier-expiry-ms", "tradier-expiry-s", "capped"],
)
def test_a_429_waits_until_the_server_says_and_pauses_the_shared_budget(client, server, sleeps, budget, headers, wait):
    server.script(Answer(429, {"message": "too many requests"}, headers), Answer())
    assert get(client, server).attempts == 2
    assert sleeps[0] == pytest.approx(wait, abs=0.011)  # + jitter of at most backoff_s
    assert budget.pauses == [pytest.approx(NOW + wait)]


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
    with HttpClient("polygon", policy=FAST, sleep=sleeps.append, timeout=0.2) as http:
        server.script(Answer(delay_s=0.6), Answer(body={"ok": 2}))
        reply = http.get_json(server.url + "/v2/aggs")
    assert reply.payload == {"ok": 2} and reply.attempts == 2


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
def test_server_retry_at_reads_each_header_and_unit():
    assert server_retry_at({"retry-after": "5"}, 429, NOW) == NOW + 5
    assert server_retry_at({"x-ratelimit-reset": str(NOW + 9)}, 429, NOW) == NOW + 9
    assert server_retry_at({"x-ratelimit-expiry": str((NOW + 9) * 1000)}, 429, NOW) == NOW + 9
    assert server_retry_at({"x-ratelimit-reset": "30"}, 429, NOW) == NOW + 30  # a delta, not an epoch
    assert server_retry_at({"x-ratelimit-reset": str(NOW + 9)}, 500, NOW) is None  # only a 429 means "wait"
    assert server_retry_at({"x-ratelimit-reset": str(NOW - 9)}, 429, NOW) is None  # past: clock skew
    assert server_retry_at({"retry-after": "soon"}, 429, NOW) is None
    assert server_retry_at({}, 429, NOW) is None


def test_redact_blanks_secrets_tokens_and_key_parameters():
    text = f"GET /x?apiKey=abc123&symbols=AAPL token={SECRET} Authorization: Bearer abcdefghijkl {KEY_ID}"
    out = redact(text, [KEY_ID])
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

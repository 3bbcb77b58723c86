"""The HTTP client every provider shares: one connection pool, timeouts, retries, the request budget.

It only moves bytes: it sends a GET, retries what a retry can fix, and hands back decoded JSON.
Pagination and parsing stay with each provider.

The retry policy, in one place:
- retried: HTTP 429, 408, every 5xx, timeouts and transport errors (refused or reset connections, a
  body cut short), and a 2xx whose JSON body does not decode because it was cut off;
- never retried: any other 4xx (a retry cannot fix a bad parameter or a bad key; 401/403 say to
  check the key and the plan's entitlement), and a 2xx that is not JSON at all;
- the wait: exponential back-off with jitter (tenacity), unless the server said when to come back
  (`Retry-After` on 429/503, `X-RateLimit-Reset` for Alpaca, `X-Ratelimit-Expiry` for Tradier on
  429): then that long, plus a little jitter so waiting clients do not return at once. An absolute
  time is turned into a delay on the server's own clock (its `Date` header), never ours;
- a server wait beyond `max_server_wait_s` (a quota spent: `Retry-After: 3600`) is not waited out:
  the request fails at once, not retryable, and the budget marks the provider unavailable for that
  long, so every process falls back to the next provider instead of sleeping;
- the budget: `budget.acquire()` before every attempt, retries included (it waits a bounded time and
  refuses at once while the provider is unavailable); a 429 calls `budget.pause_for(seconds)` so
  every process sharing the budget holds off, not only this one.

Secrets never leave: credentials travel in headers passed per request (`Credentials`), never in a
URL, and every message built here is passed through `redact_secrets` (redaction.py), which blanks the
credential values and any `apiKey=`/`token=`-like query parameter.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
import tenacity

from backfill_dagster.domain.provider_errors import (
    BudgetWaitExceeded,
    ProviderError,
    ProviderUnavailable,
    Unavailability,
    utc_text,
)
from backfill_dagster.providers.base import FetchRequest
from backfill_dagster.providers.redaction import REDACTED, redact_library_logs, redact_secrets
from backfill_dagster.providers.server_wait import ServerWait, server_wait

log = logging.getLogger(__name__)

USER_AGENT = "backfill-dagster/0.1 (python-httpx)"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)

# A 4xx that a retry can fix: 408 Request Timeout and 429 Too Many Requests.
_RETRYABLE_4XX = frozenset({408, 429})


class Budget(Protocol):
    """The provider's shared request budget (the real one lives in the store's database).

    Waits are handed over as seconds from now and the budget ends them on its own clock, so a
    process whose clock is off never pauses the others longer than the server asked."""

    def acquire(self) -> None: ...  # wait (bounded) until one more request may go; ProviderUnavailable
    # at once while the provider is unavailable, BudgetWaitExceeded past the bound

    def pause_for(self, seconds: float) -> None: ...  # a 429: nobody sends for this long

    def unavailable_for(self, seconds: float, reason: str) -> Unavailability: ...  # requests fail
    # at once for this long (a server wait too long to sit out); returns the unavailability in force

    def sent(self) -> None: ...  # the request booked last by this thread has been answered


class Unlimited:
    """No budget: every request may go at once (local fakes, tests, unmetered providers). Nothing is
    shared, so nothing is remembered: an unavailable provider answers each request for itself."""

    def acquire(self) -> None:
        return None

    def pause_for(self, seconds: float) -> None:
        return None

    def unavailable_for(self, seconds: float, reason: str) -> Unavailability:
        return Unavailability(datetime.now(UTC) + timedelta(seconds=seconds), reason)

    def sent(self) -> None:
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry (BACKFILL_HTTP_ATTEMPTS, BACKFILL_HTTP_BACKOFF_SECONDS: settings.py);
    tests use tiny waits."""

    attempts: int = 6  # total tries per request, the first included
    backoff_s: float = 1.0  # first back-off; doubles each retry (plus up to this much jitter)
    max_backoff_s: float = 30.0
    # Longest wait a server may impose with Retry-After / X-RateLimit-Reset and still be waited out
    # (a provider window is a minute). A longer one (a spent quota) makes the provider unavailable.
    max_server_wait_s: float = 90.0

    def __post_init__(self):
        if self.attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < 0 or self.max_server_wait_s < 0:
            raise ValueError(f"invalid retry policy {self}")


@dataclass(frozen=True, repr=False)
class Credentials:
    """Auth headers for one provider, and the names of the settings that hold them (for messages)."""

    headers: Mapping[str, str]
    hint: str  # e.g. "ALPACA_API_KEY / ALPACA_API_SECRET": names, never values

    def __repr__(self) -> str:
        return f"Credentials({self.hint}: {REDACTED})"

    @property
    def secrets(self) -> tuple[str, ...]:
        values = []
        for value in self.headers.values():
            values.append(value)
            # "Bearer abc": the token alone may be echoed back too
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                values.append(token)
        return tuple(v for v in values if v)


@dataclass(frozen=True)
class Reply:
    """A decoded JSON response and what it cost."""

    payload: Any
    status: int
    attempts: int  # requests sent for it, retries included: each one spends the rate budget


class _Transient(Exception):
    """An attempt that failed in a way a retry may fix; `wait_s`: what the server asked for."""

    def __init__(self, reason: str, status: int | None = None, wait_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.wait_s = wait_s


class HttpClient:
    """GET JSON from a provider with connection reuse, timeouts, retries and the shared budget."""

    def __init__(
        self,
        provider: str,
        *,
        budget: Budget | None = None,
        policy: RetryPolicy | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        user_agent: str = USER_AGENT,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ):
        self.provider = provider
        self.budget: Budget = budget or Unlimited()
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._clock = clock
        self._backoff = tenacity.wait_exponential_jitter(
            multiplier=self.policy.backoff_s, max=self.policy.max_backoff_s, jitter=self.policy.backoff_s
        )
        redact_library_logs()
        self._client = httpx.Client(
            timeout=timeout,
            headers={"User-Agent": user_agent, "Accept": "application/json"},
            transport=transport,
            follow_redirects=False,  # a redirect could carry auth headers to another host
        )

    def __repr__(self) -> str:
        return f"HttpClient({self.provider!r}, attempts={self.policy.attempts})"

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ the one public call
    def get_json(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        *,
        credentials: Credentials | None = None,
        request: FetchRequest | None = None,
    ) -> Reply:
        """GET `url` and decode its JSON body, retrying per the policy; ProviderError otherwise."""
        secrets = credentials.secrets if credentials else ()
        where = _describe(url, secrets)
        attempts = 0

        def attempt() -> tuple[Any, int]:
            nonlocal attempts
            attempts += 1
            try:
                self.budget.acquire()
            except (ProviderUnavailable, BudgetWaitExceeded) as refused:
                raise refused.for_request(request) from None
            try:
                return self._attempt(url, params, credentials, request, where, secrets)
            finally:
                self.budget.sent()

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception()
            log.warning(
                "%s %s: %s; retry %d of %d in %.1f s",
                self.provider, where, exc, state.attempt_number, self.policy.attempts - 1,
                state.upcoming_sleep,
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.policy.attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Transient),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            payload, status = retrying(attempt)
        except _Transient as exc:
            raise ProviderError(
                self.provider,
                f"GET {where} failed after {attempts} attempt(s): {exc.reason}",
                status=exc.status,
                request=request,
                retryable=True,
            ) from None
        return Reply(payload=payload, status=status, attempts=attempts)

    # ------------------------------------------------------------------ internals
    def _attempt(self, url, params, credentials, request, where, secrets) -> tuple[Any, int]:
        try:
            response = self._client.get(
                url, params=params, headers=dict(credentials.headers) if credentials else None
            )
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            # a configuration problem: no retry will fix it
            raise ProviderError(
                self.provider, f"GET {where}: {redact_secrets(str(exc), secrets)}", request=request
            ) from None
        except (httpx.TransportError, httpx.DecodingError) as exc:  # timeouts, refused/reset, cut bodies
            raise _Transient(f"{type(exc).__name__}: {redact_secrets(str(exc), secrets) or 'no detail'}") from None

        status = response.status_code
        if status >= 500 or status in _RETRYABLE_4XX:
            wait = server_wait(response.headers, status, self._clock())
            if wait is not None and wait.seconds > self.policy.max_server_wait_s:
                raise self._unavailable(response, wait, where, request, secrets)
            if wait is not None and status == 429:
                self.budget.pause_for(wait.seconds)  # everyone sharing the budget holds off
            raise _Transient(_status_text(response, secrets), status, None if wait is None else wait.seconds)
        if status >= 400:
            message = _status_text(response, secrets)
            if status in (401, 403):
                hint = f" ({credentials.hint})" if credentials else ""
                message += f": check the API key{hint} and that the plan is entitled to this data"
            raise ProviderError(self.provider, f"GET {where}: {message}", status=status, request=request)
        if status >= 300:
            raise ProviderError(
                self.provider,
                f"GET {where}: unexpected redirect (HTTP {status}); check the provider's base URL",
                status=status,
                request=request,
            )
        body = response.content
        try:
            return json.loads(body), status
        except ValueError:
            head = body.lstrip()[:1]
            if not head or head in (b"{", b"["):
                # an empty or cut-off JSON body: the connection dropped mid-transfer
                raise _Transient(f"truncated JSON body ({len(body)} bytes)", status) from None
            kind = response.headers.get("content-type", "unknown content type")
            raise ProviderError(
                self.provider,
                f"GET {where}: expected JSON, got {kind}: {_excerpt(body, secrets)}",
                status=status,
                request=request,
            ) from None

    def _unavailable(self, response, wait: ServerWait, where, request, secrets) -> ProviderUnavailable:
        """Mark the provider unavailable for as long as the server said, for every process."""
        status = response.status_code
        detail = _error_detail(response, secrets)
        reason = f"HTTP {status} with {wait.said}" + (f": {detail}" if detail else "")
        unavailability = self.budget.unavailable_for(wait.seconds, reason)
        log.warning(
            "%s %s: %s, longer than a retry waits (%.0f s): %s is unavailable until %s; requests to it "
            "fail at once until then", self.provider, where, reason, self.policy.max_server_wait_s,
            self.provider, utc_text(unavailability.until),
        )
        return ProviderUnavailable(self.provider, unavailability, sent=True, status=status, request=request)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception()
        if isinstance(exc, _Transient) and exc.wait_s is not None:
            return exc.wait_s + random.uniform(0, self.policy.backoff_s)
        wait = self._backoff(state)
        if isinstance(exc, _Transient) and exc.status == 429:
            # The server did not say when; the back-off is our best guess, for everyone.
            self.budget.pause_for(wait)
        return wait


def _describe(url: str, secrets: Iterable[str]) -> str:
    """The URL's path for messages: no host noise, no query string (it may hold a secret)."""
    try:
        path = httpx.URL(url).path
    except httpx.InvalidURL:
        path = url.split("?", 1)[0]
    return redact_secrets(path, secrets)


def _status_text(response: httpx.Response, secrets: Iterable[str]) -> str:
    phrase = response.reason_phrase or ""
    detail = _error_detail(response, secrets)
    text = f"HTTP {response.status_code} {phrase}".rstrip()
    if not detail or detail.strip(" .").lower() == phrase.lower():
        return text
    return f"{text}: {detail}"


def _error_detail(response: httpx.Response, secrets: Iterable[str]) -> str:
    """The provider's own words from an error body (each API nests them differently), redacted,
    then cut to length (the other order could leave the first characters of an echoed key)."""
    try:
        body = response.json()
    except ValueError:
        return _excerpt(response.content, secrets)
    text = json.dumps(body)
    if isinstance(body, dict):
        chart = body.get("chart")
        fault = body.get("fault")
        found = [str(body[key]) for key in ("message", "error", "errors", "detail") if body.get(key)]
        if isinstance(chart, dict) and isinstance(chart.get("error"), dict):  # Yahoo
            error = chart["error"]
            text = f"{error.get('code', '')}: {error.get('description', '')}".strip(": ")
        elif isinstance(fault, dict) and fault.get("faultstring"):  # Tradier (Apigee)
            text = str(fault["faultstring"])
        elif found:  # Alpaca, Polygon
            text = found[0]
    return _excerpt(text, secrets)


def _excerpt(body: bytes | str, secrets: Iterable[str]) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return _shorten(redact_secrets(text.strip(), secrets))


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "Budget",
    "Credentials",
    "HttpClient",
    "Reply",
    "RetryPolicy",
    "ServerWait",
    "Unlimited",
    "server_wait",
]

"""What a server says about when to come back: `Retry-After`, and Alpaca's and Tradier's reset headers.

Pure: headers in, a delay in seconds out. Absolute times are read against the server's own clock
(its `Date` header) so that a client whose clock is off still waits what the server meant.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass


# Alpaca's and Tradier's rate limits are per minute (their documentation): a reset header names the
# end of the current window, at most this far away.
RESET_WINDOW_S = 60.0


@dataclass(frozen=True)
class ServerWait:
    """How long the server said to stay away, and what it said (for messages)."""

    seconds: float
    said: str  # e.g. "Retry-After 3600 s", "X-RateLimit-Reset 1741017600 (in 20 s)"


def server_wait(headers: Mapping[str, str], status: int, local_now: float) -> ServerWait | None:
    """How long the server said to wait, or None if it did not say.

    `Retry-After` (seconds or an HTTP date) counts on 429 and 503. The rate-limit reset headers are
    sent with every response but only mean "wait" on a 429: `X-RateLimit-Reset` (Alpaca, epoch
    seconds) and `X-Ratelimit-Expiry` (Tradier, epoch milliseconds — some clients read seconds, so
    the unit is decided by magnitude). An absolute time is measured against the server's clock, its
    `Date` header, when it sent one (else `local_now`): a client whose clock is off still waits what
    the server meant. Without a Date header a reset is read on `local_now` and bounded by the rate
    window it ends (`RESET_WINDOW_S`), so an hour's skew cannot pause every process for an hour. A
    moment already past counts as not said.
    """
    server_date = _http_date(headers.get("date"))
    server_now = server_date or local_now
    retry_after = headers.get("retry-after") if status in (429, 503) else None
    if retry_after:
        value = retry_after.strip()
        try:
            return _positive(float(value), f"Retry-After {value} s")
        except ValueError:
            at = _http_date(value)
            if at is not None:
                return _positive(at - server_now, f"Retry-After {value} (in {at - server_now:.0f} s)")
    if status == 429:
        for name in ("X-RateLimit-Reset", "X-Ratelimit-Expiry"):
            value = (headers.get(name.lower()) or "").strip()
            at = _parse_epoch(value, server_now) if value else None
            if at is None:
                continue
            seconds = at - server_now
            if server_date is None and seconds > RESET_WINDOW_S:
                # Read on this worker's clock, which may be off by an hour: the reset ends the
                # current window, so it cannot be further away than one window.
                return ServerWait(RESET_WINDOW_S, f"{name} {value} (in {seconds:.0f} s by this worker's "
                                  f"clock; no Date header: at most the {RESET_WINDOW_S:.0f} s rate window)")
            return _positive(seconds, f"{name} {value} (in {seconds:.0f} s)")
    return None


def _positive(seconds: float, said: str) -> ServerWait | None:
    return ServerWait(seconds, said) if seconds > 0 else None


def _http_date(value: str | None) -> float | None:
    """An HTTP date (RFC 9110: "Sun, 06 Nov 1994 08:49:37 GMT") as epoch seconds, or None."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return when.timestamp() if when.tzinfo is not None else None


def _parse_epoch(value: str, now: float) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    if number > 1e11:  # epoch milliseconds (seconds will not reach 1e11 until the year 5138)
        return number / 1000.0
    if number < 1e8:  # too small for an epoch: a number of seconds from now
        return now + number
    return number

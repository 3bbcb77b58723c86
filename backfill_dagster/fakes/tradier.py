"""Fake Tradier market data v1: time & sales and daily history (providers.md §3).

- `GET /v1/markets/timesales?symbol=&interval=15min&start=&end=&session_filter=all|open` with
  New York wall-clock `YYYY-MM-DD HH:MM` bounds, `end` inclusive; `GET /v1/markets/history?
  symbol=&interval=daily&start=&end=` with dates.
- `Authorization: Bearer <token>` (missing or wrong: 401 Apigee fault JSON); the answer is XML
  unless `Accept: application/json`.
- XML-born JSON: one bar comes as a bare object, no bars as `null` or the string `"null"` (which
  one is decided by a hash of the request, so both appear, reproducibly).
- Time & sales reach back 40 calendar days for `session_filter=open` and 18 for `all`; older bars
  are simply not there (an empty series, not an error). `session_filter=open` keeps 09:30 to the
  close. Unknown symbols (BRK-B too: Tradier writes BRK.B): no bars.
- `X-Ratelimit-Allowed/Used/Available/Expiry` (Expiry in epoch ms) on every response; over the
  limit, 429 with a `Quota Violation ... <expiry ms>` text body.

The fake serves the 15min interval and daily history; tick/1min/5min and weekly/monthly get a 400
saying so.
"""

from __future__ import annotations

import re
import zlib
from datetime import date, timedelta
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK
from backfill_dagster.fakes.base import BadRequest, ProviderFake, Request, Response, json_response, text_response
from backfill_dagster.fakes.control import WindowState
from backfill_dagster.fakes.data import CLOSE, HIGH, LOW, OPEN, VOLUME, VWAP, ny_date, ny_midnight_ns

# Calendar days back time & sales reach at 15 minutes, by session_filter (documented table).
TIMESALES_DAYS = {"open": 40, "all": 18}
INTERVALS = ("tick", "1min", "5min", "15min")
HISTORY_INTERVALS = ("daily", "weekly", "monthly")
NOMINAL_LIMIT = 10_000  # reported when no budget is configured
_WALL_CLOCK = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?$")


class TradierFake(ProviderFake):
    name = "tradier"
    routes = (
        (re.compile(r"^/v1/markets/timesales$"), "timesales"),
        (re.compile(r"^/v1/markets/history$"), "history"),
    )
    rate_headers_always = True

    # ------------------------------------------------------------------ auth, limits, errors
    def authenticate(self, request: Request) -> Response | None:
        auth = request.header("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.config.tradier_token:
            return json_response(401, _fault("Invalid Access Token", "keymanagement.service.invalid_access_token"))
        return None

    def rate_headers(self, window: WindowState) -> dict[str, str]:
        limit = window.limit if window.limit is not None else NOMINAL_LIMIT
        return {
            "X-Ratelimit-Allowed": str(limit),
            "X-Ratelimit-Used": str(window.used),
            "X-Ratelimit-Available": str(window.remaining(NOMINAL_LIMIT)),
            "X-Ratelimit-Expiry": str(int(window.resets_at * 1000)),
        }

    def too_many_requests(self, window: WindowState) -> Response:
        expiry = int(window.resets_at * 1000)
        limit = window.limit if window.limit is not None else NOMINAL_LIMIT
        return text_response(429, f"Quota Violation: rate limit of {limit} requests exceeded, expires {expiry}")

    def server_error(self, status: int) -> Response:
        if status == 503:
            fault = _fault("The Service is temporarily unavailable", "messaging.adaptors.http.flow.ServiceUnavailable")
        else:
            fault = _fault("Internal Server Error", "protocol.http.InternalServerError")
        return json_response(status, fault)

    # ------------------------------------------------------------------ endpoints
    def timesales(self, request: Request) -> Response:
        q = request.query
        symbol = _required_symbol(request)
        interval = q.get("interval", "tick")
        if interval not in INTERVALS:
            raise _bad(request, f"Invalid Parameter: interval {interval!r} (use {', '.join(INTERVALS)})")
        if interval != "15min":
            raise _bad(request, f"the fake serves interval=15min only, not {interval!r}")
        session_filter = q.get("session_filter", "all")
        if session_filter not in TIMESALES_DAYS:
            raise _bad(request, f"Invalid Parameter: session_filter {session_filter!r} (use all or open)")
        now_ns = request.now.value
        today = ny_date(now_ns)
        start_ns = _wall_clock(request, "start", ny_midnight_ns(today))
        end_ns = _wall_clock(request, "end", now_ns) + 1  # inclusive
        # Older bars than the documented window are simply not served.
        start_ns = max(start_ns, ny_midnight_ns(today - timedelta(days=TIMESALES_DAYS[session_filter])))
        rows: list[dict] = []
        known = self.data_symbol(symbol)
        if known is not None and end_ns > start_ns:
            slots = self.data.m15(
                known, start_ns, end_ns, now_ns,
                regular_only=session_filter == "open", no_trade_rate=self.config.no_trade_rate,
            ).traded_only()
            rows = _timesales_rows(slots.ts, slots.values)
        return _answer(request, "series", "data", rows)

    def history(self, request: Request) -> Response:
        q = request.query
        symbol = _required_symbol(request)
        interval = q.get("interval", "daily")
        if interval not in HISTORY_INTERVALS:
            raise _bad(request, f"Invalid Parameter: interval {interval!r} (use daily, weekly or monthly)")
        if interval != "daily":
            raise _bad(request, f"the fake serves interval=daily only, not {interval!r}")
        now_ns = request.now.value
        last = _date(request, "end", ny_date(now_ns))
        first = _date(request, "start", last - timedelta(days=365))
        rows: list[dict] = []
        known = self.data_symbol(symbol)
        if known is not None and first <= last:
            days = self.data.daily(known, first, last, now_ns)
            columns = days.values.T.tolist() if len(days) else [[]] * 7
            rows = [
                {"date": d.isoformat(), "open": o, "high": h, "low": lo, "close": c, "volume": int(v)}
                for d, o, h, lo, c, v in zip(
                    days.sessions, columns[OPEN], columns[HIGH], columns[LOW], columns[CLOSE], columns[VOLUME]
                )
            ]
        return _answer(request, "history", "day", rows)


# ---------------------------------------------------------------------------- answers
def _fault(text: str, code: str) -> dict:
    return {"fault": {"faultstring": text, "detail": {"errorcode": code}}}


def _answer(request: Request, outer: str, inner: str, rows: list[dict]) -> Response:
    """{outer: {inner: [rows] | row}} or {outer: null | "null"}, as JSON or XML per Accept."""
    if not rows:
        # XML-to-JSON turns an empty element into null or "null": serve both, decided by the request.
        key = request.path + "?" + "&".join(f"{k}={v}" for k, v in sorted(request.query.items()))
        payload = {outer: None if zlib.crc32(key.encode()) % 2 else "null"}
    else:
        payload = {outer: {inner: rows[0] if len(rows) == 1 else rows}}
    return _encode(request, 200, payload)


def _encode(request: Request, status: int, payload: dict) -> Response:
    if "application/json" in (request.header("Accept") or ""):
        return json_response(status, payload)
    (name, value), = payload.items()
    xml = '<?xml version="1.0" encoding="UTF-8"?>' + _xml(name, value)
    return text_response(status, xml, content_type="application/xml; charset=utf-8")


def _xml(name: str, value) -> str:
    if isinstance(value, list):
        return "".join(_xml(name, item) for item in value)
    if isinstance(value, dict):
        return f"<{name}>" + "".join(_xml(k, v) for k, v in value.items()) + f"</{name}>"
    if value is None or value == "null":
        return f"<{name}/>"
    return f"<{name}>{escape(str(value))}</{name}>"


def _bad(request: Request, message: str) -> BadRequest:
    return BadRequest(_encode(request, 400, {"errors": {"error": message}}))


def _timesales_rows(ts: np.ndarray, values: np.ndarray) -> list[dict]:
    if len(ts) == 0:
        return []
    local = pd.DatetimeIndex(ts.astype("datetime64[ns]")).tz_localize("UTC").tz_convert(NEW_YORK)
    times = local.strftime("%Y-%m-%dT%H:%M:%S").tolist()
    seconds = (ts // 1_000_000_000).tolist()
    columns = values.T.tolist()
    return [
        {"time": t, "timestamp": s, "price": c, "open": o, "high": h, "low": lo, "close": c,
         "volume": int(v), "vwap": vw}
        for t, s, o, h, lo, c, v, vw in zip(
            times, seconds, columns[OPEN], columns[HIGH], columns[LOW], columns[CLOSE], columns[VOLUME],
            columns[VWAP],
        )
    ]


# ---------------------------------------------------------------------------- parameters
def _required_symbol(request: Request) -> str:
    symbol = (request.query.get("symbol") or "").strip()
    if not symbol or "," in symbol:
        raise _bad(request, "Invalid Parameter: symbol (one symbol is required)")
    return symbol


def _wall_clock(request: Request, name: str, default: int) -> int:
    """A New York wall-clock bound ("YYYY-MM-DD HH:MM", or a date = its midnight) in UTC ns."""
    value = request.query.get(name)
    if not value:
        return default
    match = _WALL_CLOCK.match(value.strip())
    if not match:
        raise _bad(request, f"Invalid Parameter: {name} {value!r} (use YYYY-MM-DD HH:MM)")
    day, hour, minute, second = match.groups()
    try:
        local = pd.Timestamp(f"{day} {hour or '00'}:{minute or '00'}:{second or '00'}")
        return local.tz_localize(NEW_YORK, ambiguous=False, nonexistent="shift_forward").tz_convert("UTC").value
    except ValueError:
        raise _bad(request, f"Invalid Parameter: {name} {value!r} (use YYYY-MM-DD HH:MM)") from None


def _date(request: Request, name: str, default: date) -> date:
    value = request.query.get(name)
    if not value:
        return default
    try:
        return date.fromisoformat(value.strip()[:10])
    except ValueError:
        raise _bad(request, f"Invalid Parameter: {name} {value!r} (use YYYY-MM-DD)") from None

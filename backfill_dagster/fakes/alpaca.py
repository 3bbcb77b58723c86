"""Fake Alpaca Market Data v2 stock bars (providers.md §1), and v1 corporate actions
(fakes/alpaca_actions.py).

- `GET /v2/stocks/bars?symbols=A,B` and `GET /v2/stocks/{symbol}/bars`; headers
  `APCA-API-KEY-ID` + `APCA-API-SECRET-KEY` (missing: 401, wrong: 403).
- Results sorted by symbol (alphabetical), then time; `limit` (1..10000, default 1000) counts bars
  of all symbols together, so page one of a multi-symbol request may hold only the first symbol.
  `next_page_token` is base64 of `SYMBOL|M|<RFC3339Nano of the last bar>` (observed format; opaque
  to clients); the next page resumes strictly after it.
- `start`/`end` inclusive, RFC 3339 or YYYY-MM-DD; start defaults to today 00:00 New York, end to
  now (15 minutes ago for SIP on the free plan, which is then served, not refused). Bars before 2016 do not exist. Unknown symbols (BRK-B too: Alpaca writes BRK.B) are simply
  absent.
- m15 bars span 04:00-20:00 (no regular-hours filter); d1 bars are stamped 00:00 New York (04:00Z
  or 05:00Z). `feed`, `adjustment`, `sort`, `asof`, `currency` are validated. `adjustment=raw` (the
  default) serves raw prices, `split` (or `all`) split-adjusted ones as of now (fakes/actions.py).
- Free plan: SIP data of the latest 15 minutes is refused with 403 (`alpaca_sip_delay_s`).
- `FakeConfig.misdated`: every bar request answered with the bars of earlier sessions (a fault).
- `X-RateLimit-Limit/Remaining/Reset` (epoch s) on every response; gzip when asked and > 256 bytes.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import math
import re
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK, xnys
from backfill_dagster.fakes import alpaca_actions
from backfill_dagster.fakes.base import BadRequest, ProviderFake, Request, Response, json_response, rfc3339
from backfill_dagster.fakes.control import WindowState
from backfill_dagster.fakes.data import CLOSE, HIGH, LOW, OPEN, TRADES, VOLUME, VWAP, ny_date, ny_midnight_ns

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
HISTORY_START = date(2016, 1, 1)
# Reported when no budget is configured (the paid plan's per-minute calls).
NOMINAL_LIMIT = 10_000
FEEDS = ("sip", "iex", "delayed_sip", "otc", "boats", "overnight")
ADJUSTMENTS = ("raw", "split", "dividend", "spin-off", "all")
_TIMEFRAME = re.compile(r"^(?:(\d+)(Min|T|Hour|H|Day|D|Week|W|Month|M))$")
_SERVED = {("15", "Min"): "M", ("15", "T"): "M", ("1", "Day"): "D", ("1", "D"): "D"}
_SYMBOL = re.compile(r"^[A-Z0-9][A-Z0-9./-]{0,20}$")


@dataclass(frozen=True)
class _Query:
    symbols: list[str]
    unit: str  # "M" (15 minutes) or "D"
    start_ns: int
    end_ns: int  # inclusive
    limit: int
    descending: bool
    after: tuple[str, int] | None  # (symbol, bar start ns) of the previous page's last bar
    adjusted: bool = False  # adjustment=split or all: split-adjusted as of now


def _error(status: int, code: int, message: str) -> BadRequest:
    return BadRequest(json_response(status, {"code": code, "message": message}))


class AlpacaFake(ProviderFake):
    name = "alpaca"
    routes = (
        (re.compile(r"^/v2/stocks/bars$"), "multi_bars"),
        (re.compile(r"^/v2/stocks/(?P<symbol>[^/]+)/bars$"), "symbol_bars"),
        (re.compile(r"^/v1/corporate-actions$"), "corporate_actions"),
    )
    rate_headers_always = True

    # ------------------------------------------------------------------ auth, limits, errors
    def authenticate(self, request: Request) -> Response | None:
        key, secret = request.header("APCA-API-KEY-ID"), request.header("APCA-API-SECRET-KEY")
        if not key or not secret:
            return json_response(401, {"message": "unauthorized"})
        if key != self.config.alpaca_key or secret != self.config.alpaca_secret:
            return json_response(403, {"message": "forbidden"})
        return None

    def rate_headers(self, window: WindowState) -> dict[str, str]:
        limit = window.limit if window.limit is not None else NOMINAL_LIMIT
        return {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(window.remaining(NOMINAL_LIMIT)),
            "X-RateLimit-Reset": str(math.ceil(window.resets_at)),
        }

    def too_many_requests(self, window: WindowState) -> Response:
        return json_response(429, {"code": 42910000, "message": "too many requests"})

    def server_error(self, status: int) -> Response:
        if status == 503:
            return json_response(503, {"code": 50310000, "message": "service unavailable"})
        return json_response(500, {"code": 50010000, "message": "internal server error"})

    # ------------------------------------------------------------------ endpoints
    def multi_bars(self, request: Request) -> Response:
        raw = request.query.get("symbols", "")
        symbols = [s.strip() for s in raw.split(",") if s.strip()]
        if not symbols:
            raise _error(400, 40010001, "missing symbols")
        query = self._parse(request, symbols)
        page, token = self._page(query, request.now.value)
        bars: dict[str, list] = {}
        for symbol, rows in page:
            bars.setdefault(symbol, []).extend(rows)
        body: dict = {"bars": bars, "next_page_token": token}
        if "currency" in request.query:
            body["currency"] = request.query["currency"]
        return self._json(request, body, bars=sum(len(rows) for rows in bars.values()))

    def symbol_bars(self, request: Request) -> Response:
        symbol = request.params["symbol"]
        query = self._parse(request, [symbol])
        page, token = self._page(query, request.now.value)
        rows = [bar for _, chunk in page for bar in chunk]
        # Empty answers carry `null` bars (clients must treat null and [] alike).
        return self._json(request, {"bars": rows or None, "symbol": symbol, "next_page_token": token}, bars=len(rows))

    def corporate_actions(self, request: Request) -> Response:
        return self._json(request, alpaca_actions.answer(request, self.config.corporate_actions, self.data_symbol))

    # ------------------------------------------------------------------ parameters
    def _parse(self, request: Request, symbols: list[str]) -> _Query:
        q = request.query
        for symbol in symbols:
            if not _SYMBOL.match(symbol):
                raise _error(400, 40010001, f"invalid symbol: {symbol!r}")
        timeframe = q.get("timeframe")
        match = _TIMEFRAME.match(timeframe or "")
        if not match:
            raise _error(422, 42210000, f"invalid timeframe: {timeframe!r}")
        unit = _SERVED.get(match.groups())
        if unit is None:
            raise _error(422, 42210000, f"the fake serves timeframes 15Min and 1Day only, not {timeframe!r}")
        now_ns = request.now.value
        feed = q.get("feed", "sip")
        if feed not in FEEDS:
            raise _error(422, 42210000, f"invalid feed: {feed!r}")
        delay = self.config.alpaca_sip_delay_s
        sip_delay_ns = int(delay * 1e9) if feed == "sip" and delay > 0 else 0
        start_ns = _parse_time(q, "start", end_of_day=False)
        end_ns = _parse_time(q, "end", end_of_day=True)
        if start_ns is None:
            start_ns = ny_midnight_ns(ny_date(now_ns))  # "beginning of the current day"
        if end_ns is None:
            end_ns = now_ns - sip_delay_ns  # now, or 15 minutes ago without real-time SIP
        limit = _parse_limit(q.get("limit"))
        sort = q.get("sort", "asc")
        if sort not in ("asc", "desc"):
            raise _error(422, 42210000, f"invalid sort: {sort!r} (use asc or desc)")
        adjustments = {part.strip() for part in q.get("adjustment", "raw").split(",")}
        for part in sorted(adjustments - set(ADJUSTMENTS)):
            raise _error(422, 42210000, f"invalid adjustment: {part!r}")
        if sip_delay_ns and end_ns > now_ns - sip_delay_ns:
            raise BadRequest(json_response(403, {"message": "subscription does not permit querying recent SIP data"}))
        after = _decode_token(q["page_token"]) if q.get("page_token") else None
        back = self.config.misdated.get(self.name)
        if back:  # the fault FakeConfig.misdated: the bars of earlier sessions, as if they were asked for
            shift = _sessions_back_ns(start_ns, int(back))
            start_ns, end_ns = start_ns - shift, end_ns - shift
        return _Query(sorted(set(symbols)), unit, start_ns, end_ns, limit, sort == "desc", after,
                      adjusted=bool(adjustments & {"split", "all"}))

    # ------------------------------------------------------------------ paging
    def _page(self, query: _Query, now_ns: int) -> tuple[list[tuple[str, list[dict]]], str | None]:
        """Up to `limit` bars across symbols in order, and the token of what remains."""
        page: list[tuple[str, list[dict]]] = []
        taken = 0
        last: tuple[str, int] | None = None
        for symbol in query.symbols:
            if query.after and symbol < query.after[0]:
                continue
            ts, values = self._series(symbol, query, now_ns)
            if query.descending:
                ts, values = ts[::-1], values[::-1]
            if query.after and symbol == query.after[0]:
                keep = ts < query.after[1] if query.descending else ts > query.after[1]
                ts, values = ts[keep], values[keep]
            if len(ts) == 0:
                continue
            if taken == query.limit:
                # the page is full and this symbol still has bars: they go on the next page
                return page, _encode_token(*last, query.unit)
            n = min(len(ts), query.limit - taken)
            page.append((symbol, _bars(ts[:n], values[:n])))
            taken += n
            last = (symbol, int(ts[n - 1]))
            if n < len(ts):
                return page, _encode_token(*last, query.unit)
        return page, None

    def _series(self, symbol: str, query: _Query, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Bar starts and values of one symbol inside [start, end], ascending."""
        empty = np.empty(0, np.int64), np.empty((0, 7))
        symbol = self.data_symbol(symbol)
        if symbol is None:  # unknown symbols are simply absent
            return empty
        start_ns = max(query.start_ns, ny_midnight_ns(HISTORY_START))
        if query.unit == "D":
            days = self.data.daily(symbol, ny_date(start_ns), ny_date(query.end_ns), now_ns, adjusted=query.adjusted)
            keep = (days.midnight >= start_ns) & (days.midnight <= query.end_ns)
            return days.midnight[keep], days.values[keep]
        slots = self.data.m15(
            symbol, start_ns, query.end_ns + 1, now_ns, no_trade_rate=self.config.no_trade_rate, adjusted=query.adjusted
        ).traded_only()
        return slots.ts, slots.values

    def _json(self, request: Request, body: dict, bars: int | None = None) -> Response:
        response = json_response(200, body)
        response.bars = bars
        # Alpaca compresses when asked and the body is worth it (> 256 bytes).
        if "gzip" in (request.header("Accept-Encoding") or "") and len(response.body) > 256:
            response.body = gzip.compress(response.body, compresslevel=1)
            response.headers["Content-Encoding"] = "gzip"
        return response


def _sessions_back_ns(start_ns: int, sessions: int) -> int:
    """How far back the session `sessions` sessions before the one holding `start_ns` lies
    (nanoseconds between their New York midnights)."""
    day = ny_date(start_ns)
    earlier = [d for d in xnys().sessions(day - timedelta(days=7 * sessions + 14), day) if d < day]
    return ny_midnight_ns(day) - ny_midnight_ns(earlier[-sessions])


def _bars(ts: np.ndarray, values: np.ndarray) -> list[dict]:
    columns = values.T.tolist()
    return [
        {"t": t, "o": o, "h": h, "l": lo, "c": c, "v": int(v), "n": int(n), "vw": vw}
        for t, o, h, lo, c, v, n, vw in zip(
            rfc3339(ts), columns[OPEN], columns[HIGH], columns[LOW], columns[CLOSE],
            columns[VOLUME], columns[TRADES], columns[VWAP],
        )
    ]


def _parse_time(query, name: str, *, end_of_day: bool) -> int | None:
    """RFC 3339 (any offset) or YYYY-MM-DD (the New York day: its start, or its end for `end`)."""
    value = query.get(name)
    if value is None or value == "":
        return None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        day = date.fromisoformat(value)
        midnight = pd.Timestamp(day).tz_localize(NEW_YORK)
        if end_of_day:
            return (midnight + pd.Timedelta(days=1)).tz_convert("UTC").value - 1
        return midnight.value
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})", value):
        raise _error(
            422, 42210000,
            f"Invalid format for parameter {name}: error parsing {value!r} as RFC3339 or 2006-01-02 time",
        )
    return pd.Timestamp(value).tz_convert("UTC").value


def _parse_limit(value: str | None) -> int:
    return alpaca_actions.parse_limit(value, DEFAULT_LIMIT, MAX_LIMIT)


def _encode_token(symbol: str, ts_ns: int, unit: str) -> str:
    stamp = pd.Timestamp(ts_ns, tz="UTC").strftime("%Y-%m-%dT%H:%M:%S") + f".{ts_ns % 1_000_000_000:09d}Z"
    return base64.b64encode(f"{symbol}|{unit}|{stamp}".encode()).decode()


def _decode_token(token: str) -> tuple[str, int]:
    try:
        symbol, _unit, stamp = base64.b64decode(token, validate=True).decode().split("|")
        return symbol, pd.Timestamp(stamp).tz_convert("UTC").value
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _error(422, 42210000, "invalid page token") from None

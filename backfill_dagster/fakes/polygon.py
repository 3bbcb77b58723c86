"""Fake Polygon.io (Massive) aggregates v2 (providers.md §2), and the splits and dividends of
`/stocks/v1` (fakes/polygon_actions.py).

- `GET /v2/aggs/ticker/{T}/range/{multiplier}/{timespan}/{from}/{to}`; auth by `apiKey` query
  parameter or `Authorization: Bearer` (missing or unknown key: 401 `{"status":"ERROR",...}`).
- `from`/`to` are YYYY-MM-DD or Unix ms, both inclusive, read in New York time and snapped to
  whole buckets. Buckets are anchored at 00:00 New York (clock hours; days at midnight).
- `limit` (default 5000, max 50000) counts *base* aggregates: each m15 bar is 15 base minutes,
  each day one base day. A bucket cut off by the limit is dropped; if base bars remain, `next_url`
  (on this server's host) carries `from` = the first unreturned bucket and `cursor` = base64url of
  the other query parameters, and never the apiKey.
- Empty answers have no `results` key and `resultsCount: 0` (unknown tickers too, BRK-B among them:
  Polygon writes BRK.B).
- Free plan: ~2 years of history (`polygon_history_days`): a window entirely older is 403
  NOT_AUTHORIZED, one that merely starts earlier is silently clipped.
- No rate-limit headers; 429 carries the JSON error body only.
- `FakeConfig.polygon_epoch_seconds`: `t` in Unix seconds instead of milliseconds (a fault).
- `adjusted=true` (the default) serves split-adjusted bars as of now, `false` raw ones
  (fakes/actions.py).

The fake serves minute multiples of 15, any hour multiple and 1 day; other spans get a 400 saying so.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass, replace
from datetime import date, timedelta
from urllib.parse import parse_qsl, quote, urlencode

import numpy as np
import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK
from backfill_dagster.fakes import polygon_actions
from backfill_dagster.fakes.base import BadRequest, ProviderFake, Request, Response, json_response
from backfill_dagster.fakes.control import WindowState
from backfill_dagster.fakes.data import (
    CLOSE,
    HIGH,
    LOW,
    OPEN,
    TRADES,
    VOLUME,
    VWAP,
    aggregate_runs,
    ny_date,
    ny_midnight_ns,
)

DEFAULT_LIMIT = 5000
MAX_LIMIT = 50_000
MINUTE_NS = 60 * 1_000_000_000
TIMESPANS = ("second", "minute", "hour", "day", "week", "month", "quarter", "year")
PRICING = "https://polygon.io/pricing"


@dataclass(frozen=True)
class _Range:
    ticker: str
    multiplier: int
    timespan: str
    bucket_ns: int  # 0 for days (a bucket per session)
    base_units: int  # base aggregates one stored bar stands for (15 minutes, or 1 day)
    from_ns: int  # snapped down to its bucket
    to_ns: int  # exclusive: the end of the bucket holding `to`


def _request_id() -> str:
    return uuid.uuid4().hex


def _error(status: int, message: str, kind: str = "ERROR") -> BadRequest:
    key = "message" if kind == "NOT_AUTHORIZED" else "error"
    return BadRequest(json_response(status, {"status": kind, "request_id": _request_id(), key: message}))


class PolygonFake(ProviderFake):
    name = "polygon"
    routes = (
        (
            re.compile(
                r"^/v2/aggs/ticker/(?P<ticker>[^/]+)/range/(?P<multiplier>[^/]+)/(?P<timespan>[^/]+)"
                r"/(?P<start>[^/]+)/(?P<end>[^/]+)$"
            ),
            "aggregates",
        ),
        (re.compile(r"^/stocks/v1/splits$"), "splits"),
        (re.compile(r"^/stocks/v1/dividends$"), "dividends"),
    )

    # ------------------------------------------------------------------ auth, limits, errors
    def authenticate(self, request: Request) -> Response | None:
        key = request.query.get("apiKey")
        auth = request.header("Authorization") or ""
        if key is None and auth.lower().startswith("bearer "):
            key = auth[7:].strip()
        if not key:
            return json_response(401, {"status": "ERROR", "request_id": _request_id(), "error": "API Key was not provided"})
        if key != self.config.polygon_key:
            return json_response(401, {"status": "ERROR", "request_id": _request_id(), "error": "Unknown API Key"})
        return None

    def too_many_requests(self, window: WindowState) -> Response:
        return json_response(429, {
            "status": "ERROR",
            "request_id": _request_id(),
            "error": "You've exceeded the maximum requests per minute, please wait or upgrade your "
            f"subscription to continue. {PRICING}",
        })

    def server_error(self, status: int) -> Response:
        text = "Service Unavailable" if status == 503 else "Internal Server Error"
        return json_response(status, {"status": "ERROR", "request_id": _request_id(), "error": text})

    # ------------------------------------------------------------------ the endpoint
    def aggregates(self, request: Request) -> Response:
        params = _options(request.query)
        window = self._range(request)
        now_ns = request.now.value
        window = self._plan_window(window, now_ns)
        ts, values = self._base_bars(window, now_ns, adjusted=params["adjusted"] == "true")
        descending = params["sort"] == "desc"
        if descending:
            ts, values = ts[::-1], values[::-1]
        keys = _bucket_keys(ts, window.bucket_ns)
        taken = _take(keys, max(1, params["limit"] // window.base_units))
        out_keys, out_values = aggregate_runs(keys[:taken], values[:taken], descending=descending)
        body: dict = {
            "ticker": window.ticker,
            "queryCount": taken * window.base_units,
            "resultsCount": len(out_keys),
            "adjusted": params["adjusted"] == "true",
        }
        if len(out_keys):
            body["results"] = _results(out_keys, out_values, seconds=self.config.polygon_epoch_seconds)
        body.update({"status": "OK", "request_id": _request_id(), "count": len(out_keys)})
        if taken < len(ts):
            body["next_url"] = _next_url(request, window, params, int(keys[taken]), descending)
        return json_response(200, body)

    def splits(self, request: Request) -> Response:
        return json_response(200, polygon_actions.splits(request, self.config.corporate_actions, self.data_symbol))

    def dividends(self, request: Request) -> Response:
        return json_response(200, polygon_actions.dividends(request, self.config.corporate_actions, self.data_symbol))

    # ------------------------------------------------------------------ parameters
    def _range(self, request: Request) -> _Range:
        p = request.params
        ticker = p["ticker"]
        try:
            multiplier = int(p["multiplier"])
        except ValueError:
            raise _error(400, f"multiplier {p['multiplier']!r} is not a whole number") from None
        timespan = p["timespan"]
        if multiplier < 1:
            raise _error(400, "multiplier must be at least 1")
        if timespan not in TIMESPANS:
            raise _error(400, f"timespan {timespan!r} is not one of {', '.join(TIMESPANS)}")
        if timespan == "minute" and multiplier % 15 == 0:
            bucket, units = multiplier * MINUTE_NS, 15
        elif timespan == "hour":
            bucket, units = multiplier * 60 * MINUTE_NS, 15
        elif timespan == "day" and multiplier == 1:
            bucket, units = 0, 1
        else:
            raise _error(400, f"the fake serves minute multiples of 15, hours and 1 day, not {multiplier} {timespan}")
        from_ns = _snap_down(_parse_bound(p["start"], "from"), bucket)
        to_ns = _parse_bound(p["end"], "to")
        if _is_date(p["end"]):  # a date `to` takes in its whole New York day
            to_ns = ny_midnight_ns(ny_date(to_ns) + timedelta(days=1))
        else:
            to_ns = _snap_up(to_ns, bucket)
        return _Range(ticker, multiplier, timespan, bucket, units, from_ns, to_ns)

    def _plan_window(self, window: _Range, now_ns: int) -> _Range:
        days = self.config.polygon_history_days
        if days is None:
            return window
        plan_start = ny_midnight_ns(ny_date(now_ns) - timedelta(days=days))
        if window.to_ns <= plan_start:
            raise _error(
                403,
                f"Your plan doesn't include this data timeframe. Please upgrade your plan at {PRICING}",
                kind="NOT_AUTHORIZED",
            )
        if window.from_ns < plan_start:
            return replace(window, from_ns=plan_start)  # silently clipped
        return window

    def _base_bars(self, window: _Range, now_ns: int, *, adjusted: bool) -> tuple[np.ndarray, np.ndarray]:
        symbol = self.data_symbol(window.ticker)
        if symbol is None or window.to_ns <= window.from_ns:
            return np.empty(0, np.int64), np.empty((0, 7))
        if window.timespan == "day":
            days = self.data.daily(symbol, ny_date(window.from_ns), ny_date(window.to_ns - 1), now_ns, adjusted=adjusted)
            keep = (days.midnight >= window.from_ns) & (days.midnight < window.to_ns)
            return days.midnight[keep], days.values[keep]
        slots = self.data.m15(
            symbol, window.from_ns, window.to_ns, now_ns, no_trade_rate=self.config.no_trade_rate, adjusted=adjusted
        ).traded_only()
        return slots.ts, slots.values


def _options(query) -> dict:
    """adjusted/sort/limit, from the cursor when there is one (it carries the first page's)."""
    merged = dict(query)
    cursor = query.get("cursor")
    if cursor:
        try:
            decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise _error(400, "invalid cursor") from None
        merged.update(dict(parse_qsl(decoded)))
    adjusted = str(merged.get("adjusted", "true")).lower()
    if adjusted not in ("true", "false"):
        raise _error(400, f"adjusted must be true or false, not {adjusted!r}")
    sort = merged.get("sort", "asc")
    if sort not in ("asc", "desc"):
        raise _error(400, f"sort must be asc or desc, not {sort!r}")
    try:
        limit = int(merged.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise _error(400, f"limit {merged.get('limit')!r} is not a whole number") from None
    if limit < 1:
        raise _error(400, "limit must be at least 1")
    return {"adjusted": adjusted, "sort": sort, "limit": min(limit, MAX_LIMIT)}


def _parse_bound(value: str, name: str) -> int:
    """A window bound in UTC ns: Unix ms, or a date's 00:00 New York (snapping does the rest)."""
    if value.isdigit():
        return int(value) * 1_000_000
    if _is_date(value):
        try:
            return ny_midnight_ns(date.fromisoformat(value))
        except ValueError:
            pass
    raise _error(400, f"{name} {value!r} is neither YYYY-MM-DD nor a Unix millisecond timestamp")


def _is_date(value: str) -> bool:
    return re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) is not None


def _bucket_start(t_ns: int, bucket_ns: int) -> int:
    midnight = ny_midnight_ns(ny_date(t_ns))
    if bucket_ns == 0:
        return midnight
    return midnight + (t_ns - midnight) // bucket_ns * bucket_ns


def _snap_down(t_ns: int, bucket_ns: int) -> int:
    return _bucket_start(t_ns, bucket_ns)


def _snap_up(t_ns: int, bucket_ns: int) -> int:
    """The exclusive end of the bucket that holds `t_ns` (`to` is inclusive)."""
    start = _bucket_start(t_ns, bucket_ns)
    if bucket_ns == 0:
        return ny_midnight_ns(ny_date(start) + timedelta(days=1))  # the next New York midnight
    return start + bucket_ns


def _bucket_keys(ts: np.ndarray, bucket_ns: int) -> np.ndarray:
    """The bucket start of every base bar (bars of one bucket share a New York day)."""
    if bucket_ns == 0 or bucket_ns == 15 * MINUTE_NS or len(ts) == 0:
        return ts  # one base bar a bucket: days, and 15-minute bars of 15-minute slots
    local = pd.DatetimeIndex(ts.astype("datetime64[ns]")).tz_localize("UTC").tz_convert(NEW_YORK)
    midnights = local.normalize().tz_convert("UTC").as_unit("ns").asi8
    return midnights + (ts - midnights) // bucket_ns * bucket_ns


def _take(keys: np.ndarray, budget: int) -> int:
    """How many base bars the page uses: at most `budget`, whole buckets only (at least one)."""
    if budget >= len(keys):
        return len(keys)
    cut = keys[budget]
    taken = budget
    while taken > 0 and keys[taken - 1] == cut:  # the bucket at the edge is partial: drop it
        taken -= 1
    if taken == 0:  # a limit smaller than one bucket would never progress: give one whole bucket
        while taken < len(keys) and keys[taken] == keys[0]:
            taken += 1
    return taken


def _results(keys: np.ndarray, values: np.ndarray, *, seconds: bool = False) -> list[dict]:
    """Aggregate objects; `t` in Unix milliseconds as documented (`seconds`: in seconds, the
    FakeConfig.polygon_epoch_seconds fault)."""
    t_ms = (keys // (1_000_000_000 if seconds else 1_000_000)).tolist()
    columns = values.T.tolist()
    return [
        {"v": v, "vw": vw, "o": o, "c": c, "h": h, "l": lo, "t": t, "n": int(n)}
        for t, o, h, lo, c, v, vw, n in zip(
            t_ms, columns[OPEN], columns[HIGH], columns[LOW], columns[CLOSE],
            columns[VOLUME], columns[VWAP], columns[TRADES],
        )
    ]


def _next_url(request: Request, window: _Range, params: dict, next_key: int, descending: bool) -> str:
    """Same path with the bound moved past what was returned, plus `cursor`; no apiKey."""
    cursor = base64.urlsafe_b64encode(
        urlencode({"adjusted": params["adjusted"], "limit": params["limit"], "sort": params["sort"]}).encode()
    ).decode().rstrip("=")
    start, end = request.params["start"], request.params["end"]
    if descending:
        end = str((next_key + max(window.bucket_ns, 1)) // 1_000_000 - 1)  # up to that bucket's end
        if window.bucket_ns == 0:
            end = str(next_key // 1_000_000)  # a day bucket: its midnight, snapped up to its end
    else:
        start = str(next_key // 1_000_000)
    path = (
        f"/v2/aggs/ticker/{quote(window.ticker, safe='.-')}/range/{window.multiplier}/{window.timespan}"
        f"/{start}/{end}"
    )
    return f"{request.base_url}{path}?cursor={cursor}"

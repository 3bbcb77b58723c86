"""Fake Yahoo Finance chart v8 (unofficial, no key) (providers.md §4).

- `GET /v8/finance/chart/{symbol}?interval=&period1=&period2=&includePrePost=` (Unix seconds,
  `period2` exclusive) or `range=` instead of the periods. Share classes are written BRK-B (the
  store's BRK.B); BRK.B is an unknown symbol (a '.' names a listing on another exchange).
- History limits measured against now: 15m (and 2m/5m/30m/90m) only within the last 60 days
  (a start 59 days back is served, 60 is not), 60m/1h within 730 days, 1m within 30 days and 7
  days a request; beyond: HTTP 422 `Unprocessable Entity`. Daily: full history.
- `includePrePost=false` (the default) keeps regular hours; 1h bars are session-anchored.
- `events=div,splits` (or `div|split`): `events.dividends` / `events.splits` of the window from the
  fakes' corporate-actions registry (fakes/actions.py), keyed by the ex-date's open in Unix seconds
  (corporate_actions.md §3); absent when none. The bars are not adjusted for them.
- Quirks: an interval without trades is a row of nulls (`no_trade_rate`); while the session is
  open a trailing live row at `regularMarketTime` (inside the last interval, even past `period2`);
  daily rows stamped at the session's open; `adjclose` for daily only.
- Errors: unknown symbol 404 `{"chart":{"result":null,"error":{"code":"Not Found",...}}}`; a bad
  interval 400; a request without a User-Agent, or over the rate limit, 429 `Too Many Requests`
  as plain text; a 503 is the "Will be right back" HTML page.

The fake serves the 15m, 60m/1h and 1d intervals; other valid intervals get a 400 saying so.
"""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import unquote

import numpy as np
import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.fakes.base import BadRequest, ProviderFake, Request, Response, json_response, text_response
from backfill_dagster.fakes.control import WindowState
from backfill_dagster.fakes.data import CLOSE, HIGH, LOW, OPEN, VOLUME, Slots, aggregate_runs, ny_date

INTERVALS = ("1m", "2m", "5m", "15m", "30m", "60m", "90m", "1h", "1d", "5d", "1wk", "1mo", "3mo")
SERVED = ("15m", "60m", "1h", "1d")
VALID_RANGES = ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"]
# Days back each intraday interval reaches (a start this many days back is refused).
HISTORY_DAYS = {"1m": 30, "2m": 60, "5m": 60, "15m": 60, "30m": 60, "90m": 60, "60m": 730, "1h": 730}
ONE_MINUTE_SPAN_DAYS = 7
_RANGE_DAYS = {"1d": 1, "5d": 5, "1mo": 30, "3mo": 91, "6mo": 182, "1y": 365, "2y": 730, "5y": 1826, "10y": 3652}
FIRST_TRADE_DATE = 345479400  # 1980-12-12, AAPL's; the same for every fake symbol
S = 1_000_000_000


def _chart_error(status: int, code: str, description: str) -> BadRequest:
    return BadRequest(json_response(status, {"chart": {"result": None, "error": {"code": code, "description": description}}}))


class YahooFake(ProviderFake):
    name = "yahoo"
    routes = ((re.compile(r"^/v8/finance/chart/(?P<symbol>[^/]+)$"), "chart"),)
    class_separator = "-"

    # ------------------------------------------------------------------ admission, limits, errors
    def authenticate(self, request: Request) -> Response | None:
        # No key, but a request without a (browser-like) User-Agent is refused as "rate limited".
        if not (request.header("User-Agent") or "").strip():
            return text_response(429, "Too Many Requests\r\n")
        return None

    def too_many_requests(self, window: WindowState) -> Response:
        return text_response(429, "Too Many Requests\r\n")

    def server_error(self, status: int) -> Response:
        if status == 503:
            html = "<!doctype html><html><head><title>Yahoo</title></head><body>Will be right back...</body></html>"
            return text_response(503, html, content_type="text/html; charset=utf-8")
        return json_response(
            500, {"chart": {"result": None, "error": {"code": "Internal Server Error", "description": "Internal Server Error"}}}
        )

    # ------------------------------------------------------------------ the endpoint
    def chart(self, request: Request) -> Response:
        q = request.query
        requested = unquote(request.params["symbol"])
        symbol = self.data_symbol(requested)  # Yahoo's BRK-B is the store's BRK.B; BRK.B is unknown
        interval = q.get("interval", "1d")
        if interval not in INTERVALS:
            raise _chart_error(
                400, "Bad Request",
                f"Invalid input - interval={interval} is not supported. Valid intervals: [{', '.join(INTERVALS)}]",
            )
        if interval not in SERVED:
            raise _chart_error(400, "Bad Request", f"the fake serves intervals {', '.join(SERVED)} only, not {interval}")
        if symbol is None:
            raise _chart_error(404, "Not Found", "No data found, symbol may be delisted")
        now_ns = request.now.value
        period1, period2, range_ = _periods(q, now_ns)
        prepost = q.get("includePrePost", "false").lower() == "true"
        self._check_history(interval, period1, period2, now_ns)

        if interval == "1d":
            stamps, rows, sessions = self._daily(symbol, period1, period2, now_ns)
        else:
            stamps, rows, sessions = self._intraday(symbol, interval, period1, period2, now_ns, prepost)
        meta = self._meta(requested, symbol, interval, range_, now_ns, sessions, prepost, period1)
        result: dict = {"meta": meta}
        events = self._events(symbol, q.get("events", ""), period1, period2, now_ns)
        if events:
            result["events"] = events
        if stamps:
            result["timestamp"] = stamps
            quote = {name: [r[i] if r is not None else None for r in rows]
                     for name, i in (("open", OPEN), ("high", HIGH), ("low", LOW), ("close", CLOSE))}
            quote["volume"] = [int(r[VOLUME]) if r is not None else None for r in rows]
            result["indicators"] = {"quote": [quote]}
            if interval == "1d":
                result["indicators"]["adjclose"] = [{"adjclose": quote["close"]}]
        else:
            result["indicators"] = {"quote": [{}]}
        return json_response(200, {"chart": {"result": [result], "error": None}})

    # ------------------------------------------------------------------ rows
    def _daily(self, symbol: str, period1: int, period2: int, now_ns: int):
        if period2 <= period1:
            return [], [], []
        days = self.data.daily(symbol, ny_date(period1), ny_date(period2 - 1), now_ns)
        stamps = (days.open_ns // S).tolist()  # a daily row is stamped at the session's open
        return stamps, days.values.tolist(), list(days.sessions)

    def _intraday(self, symbol: str, interval: str, period1: int, period2: int, now_ns: int, prepost: bool):
        slots = self.data.m15(
            symbol, period1, period2, now_ns, regular_only=not prepost, no_trade_rate=self.config.no_trade_rate
        )
        if interval in ("60m", "1h"):
            slots = self._hourly(slots)
        rows: list = [list(v) if t else None for v, t in zip(slots.values.tolist(), slots.traded.tolist())]
        stamps = (slots.ts // S).tolist()
        positions = np.unique(self.data.calendar.locate_ns(slots.ts, Timeframe.M15, served=True)[0])
        sessions = [d for d in self.data.calendar.session_dates(positions) if d is not None]
        live = self._live_row(symbol, slots, now_ns, prepost)
        if live is not None:
            stamps.append(live[0])
            rows.append(live[1])
        return stamps, rows, sessions

    def _hourly(self, slots: Slots) -> Slots:
        """Session-anchored hours (09:30, 10:30 ... 15:30; pre/post from their own starts)."""
        if len(slots) == 0:
            return slots
        _, _, keys = self.data.calendar.locate_ns(slots.ts, Timeframe.H1, served=True)
        traded_keys, values = aggregate_runs(keys[slots.traded], slots.values[slots.traded])
        all_keys = np.unique(keys)
        out = np.full((len(all_keys), 7), np.nan)
        traded = np.isin(all_keys, traded_keys)
        out[traded] = values
        return Slots(all_keys, out, traded)

    def _live_row(self, symbol: str, slots: Slots, now_ns: int, prepost: bool):
        """While the session trades, the latest price stamped now: inside the last interval, and
        appended even when `period2` ended earlier that session."""
        today = ny_date(now_ns)
        calendar = self.data.calendar
        if len(slots) == 0 or not calendar.is_session(today):
            return None
        lo, hi = calendar.served_window(today) if prepost else calendar.window(today)
        if not (lo.value <= now_ns < hi.value) or slots.ts[-1] < lo.value:
            return None
        latest = self.data.m15(
            symbol, lo.value, now_ns + 1, now_ns, regular_only=not prepost, no_trade_rate=self.config.no_trade_rate
        ).traded_only()
        if len(latest) == 0:
            return None
        price = float(latest.values[-1, CLOSE])
        return now_ns // S, [price, price, price, price, 0.0, price, 0.0]

    def _events(self, symbol: str, asked: str, period1: int, period2: int, now_ns: int) -> dict:
        """Dividends and splits with an ex-date in the window, as asked (`events=div,splits` or
        `div|split`), keyed by the ex-date's regular open in Unix seconds; none: no key at all."""
        kinds = {k.strip() for k in re.split(r"[,|]", asked) if k.strip()}
        if period2 <= period1 or not kinds & {"div", "split", "splits"}:
            return {}
        actions, calendar = self.config.corporate_actions, self.data.calendar
        first, last, today = ny_date(period1), ny_date(period2 - 1), ny_date(now_ns)
        events: dict = {}
        if "div" in kinds:
            dividends = {}
            for dividend in actions.dividends(symbol, first, last, known_on=today):
                at = calendar.open(dividend.ex_date).value // S
                dividends[str(at)] = {"amount": dividend.amount, "date": at}
            if dividends:
                events["dividends"] = dividends
        if kinds & {"split", "splits"}:
            splits = {}
            for split in actions.splits(symbol, first, last, known_on=today):
                at = calendar.open(split.ex_date).value // S
                splits[str(at)] = {
                    "date": at,
                    "numerator": split.numerator,
                    "denominator": split.denominator,
                    "splitRatio": f"{split.numerator:g}:{split.denominator:g}",
                }
            if splits:
                events["splits"] = splits
        return events

    # ------------------------------------------------------------------ limits and meta
    def _check_history(self, interval: str, period1: int, period2: int, now_ns: int) -> None:
        days = HISTORY_DAYS.get(interval)
        if days is None:
            return
        too_old = now_ns - period1 >= days * 24 * 3600 * S
        if interval == "1m" and period2 - period1 > ONE_MINUTE_SPAN_DAYS * 24 * 3600 * S:
            raise _chart_error(
                422, "Unprocessable Entity",
                "Only 7 days worth of 1m granularity data are allowed to be fetched per request.",
            )
        if too_old:
            raise _chart_error(
                422, "Unprocessable Entity",
                f"{interval} data not available for startTime={period1 // S} and endTime={period2 // S}. "
                f"The requested range must be within the last {days} days.",
            )

    def _meta(self, requested, symbol, interval, range_, now_ns, sessions, prepost, period1) -> dict:
        calendar = self.data.calendar
        now_local = pd.Timestamp(now_ns, tz="UTC").tz_convert(NEW_YORK)
        offset = int(now_local.utcoffset().total_seconds())
        zone = now_local.tzname()
        # The latest session that has opened: its price is the "regular market" one.
        recent = calendar.recent_sessions(1, pd.Timestamp(now_ns, tz="UTC"), closed_only=False)
        market_time, price, previous_close = now_ns // S, None, None
        current = recent[-1] if recent else None
        if current is not None:
            day = self.data.daily(symbol, current, current, now_ns)
            if len(day):
                price = day.values[0, CLOSE]
                market_time = min(now_ns, calendar.close(current).value) // S
        first = sessions[0] if sessions else ny_date(period1)
        try:
            before = calendar.previous_session(first)
            prior = self.data.daily(symbol, before, before, now_ns)
            previous_close = float(prior.values[0, CLOSE]) if len(prior) else None
        except ValueError:
            pass
        meta = {
            "currency": "USD",
            "symbol": requested,
            "exchangeName": "NMS",
            "instrumentType": "EQUITY",
            "firstTradeDate": FIRST_TRADE_DATE,
            "regularMarketTime": int(market_time),
            "gmtoffset": offset,
            "timezone": zone,
            "exchangeTimezoneName": "America/New_York",
            "regularMarketPrice": price,
            "chartPreviousClose": previous_close,
            "priceHint": 2,
        }
        if current is not None:
            meta["currentTradingPeriod"] = {
                seg.name: _period(seg.start, seg.end) for seg in calendar.segments(current, served=True)
            }
        if interval != "1d":
            if prepost:
                by_segment: dict[str, list] = {"pre": [], "regular": [], "post": []}
                for session in sessions:
                    for seg in calendar.segments(session, served=True):
                        by_segment[seg.name].append([_period(seg.start, seg.end)])
                meta["tradingPeriods"] = by_segment
            else:
                meta["tradingPeriods"] = [
                    [_period(calendar.open(s), calendar.close(s))] for s in sessions
                ]
        meta["dataGranularity"] = "1h" if interval == "60m" else interval
        meta["range"] = range_
        meta["validRanges"] = VALID_RANGES
        return meta


def _period(start: pd.Timestamp, end: pd.Timestamp) -> dict:
    local = start.tz_convert(NEW_YORK)
    return {
        "timezone": local.tzname(),
        "start": start.value // S,
        "end": end.value // S,
        "gmtoffset": int(local.utcoffset().total_seconds()),
    }


def _periods(q, now_ns: int) -> tuple[int, int, str]:
    """(period1, period2) in UTC ns and the `range` echoed in meta."""
    range_ = q.get("range", "")
    try:
        period2 = int(q["period2"]) * S if q.get("period2") else now_ns
        if q.get("period1"):
            return int(q["period1"]) * S, period2, ""
    except ValueError:
        raise _chart_error(400, "Bad Request", "Invalid input - period1 and period2 must be Unix seconds") from None
    range_ = range_ or "1d"
    if range_ not in VALID_RANGES:
        raise _chart_error(400, "Bad Request", f"Invalid input - range={range_} is not valid. Valid ranges: {VALID_RANGES}")
    today = ny_date(now_ns)
    if range_ == "max":
        start = pd.Timestamp(1980, 1, 1, tz="UTC").value
    elif range_ == "ytd":
        start = pd.Timestamp(today.year, 1, 1).tz_localize(NEW_YORK).value
    else:
        start = pd.Timestamp(today - timedelta(days=_RANGE_DAYS[range_] - 1)).tz_localize(NEW_YORK).value
    return start, now_ns, range_

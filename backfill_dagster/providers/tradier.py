"""Tradier market data v1: 15-minute time & sales for recent sessions, daily history for all.

`GET /v1/markets/timesales?symbol=&interval=15min&start=&end=&session_filter=` (start/end are New
York wall-clock "YYYY-MM-DD HH:MM") and `GET /v1/markets/history?symbol=&interval=daily&start=&end=`.
One symbol a request, no paging (one request spans the whole window), `Authorization: Bearer` and
`Accept: application/json` (the default answer is XML).

The JSON is converted from XML, which gives it its quirks: one bar comes as a bare object instead
of a list, and no bars as null or the string "null". Time & sales reach back only ~40 calendar
days for regular hours and ~18 with extended hours; older requests answer with no bars rather than
an error, so the capabilities declare 18 days and the router never asks beyond. Daily history is
split-adjusted but not reliably dividend-adjusted, and there is no raw series: only split-adjusted
stores may use Tradier.

No corporate actions: the v1 market-data endpoints publish none (the beta fundamentals endpoints
that do are for brokerage account holders only). With Tradier
alone, splits are found by the suspected-split check on d1 bars, or from another provider.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK, SessionCalendar
from backfill_dagster.domain.provider_errors import ProviderError
from backfill_dagster.domain.symbols import provider_symbol
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers.base import Adjustment, Capabilities, FetchRequest, FetchResult
from backfill_dagster.providers.config import setting_secret, setting_url
from backfill_dagster.providers.http import Budget, Credentials, HttpClient, RetryPolicy
from backfill_dagster.providers.http_provider import HttpProvider
from backfill_dagster.providers.payload import PayloadError, expect_mapping, one_or_many, records_to_bars

DEFAULT_URL = "https://api.tradier.com"
# Calendar days back time & sales reach at 15 minutes: 40 for regular hours, 18 with extended
# hours. The smaller one, so a store with extended hours never gets a silently empty answer.
TIMESALES_HISTORY_DAYS = 18

_PRICE_FIELDS = {"open": "open", "high": "high", "low": "low", "close": "close", "volume": "volume"}


# ---------------------------------------------------------------------------- pure parsing
def parse_timesales(payload: Any, symbol: str) -> pd.DataFrame:
    """Bars of a timesales answer: {"series": {"data": [bar, ...] | bar | null}} or {"series": null}.

    `timestamp` (Unix seconds) is the bar start; `time` is the same instant as New York wall clock
    without an offset, used only when `timestamp` is absent.
    """
    body = expect_mapping(payload, "tradier timesales")
    if "series" not in body:
        raise PayloadError("tradier timesales: field 'series' is missing")
    series = body["series"]
    if series is None or series == "null":
        rows: list = []
    else:
        rows = one_or_many(expect_mapping(series, "tradier timesales 'series'").get("data"), "tradier series.data")
    where = f"tradier series.data ({symbol})"
    if rows and all(isinstance(r, Mapping) and r.get("timestamp") is None for r in rows):
        rows = [{**r, "timestamp": _wall_clock_epoch(r.get("time"), where, i)} for i, r in enumerate(rows)]
    return records_to_bars(
        rows,
        symbol=symbol,
        where=where,
        fields={**_PRICE_FIELDS, "vwap": "vwap"},
        time_field="timestamp",
        time_unit="s",
    )


def parse_history(payload: Any, symbol: str) -> pd.DataFrame:
    """Daily bars of a history answer: {"history": {"day": [bar, ...] | bar | null}} or {"history": null}.

    Each bar is labelled 00:00 New York of its `date`, like every d1 bar in the store.
    """
    body = expect_mapping(payload, "tradier history")
    if "history" not in body:
        raise PayloadError("tradier history: field 'history' is missing")
    history = body["history"]
    if history is None or history == "null":
        rows: list = []
    else:
        rows = one_or_many(expect_mapping(history, "tradier 'history'").get("day"), "tradier history.day")
    return records_to_bars(
        rows,
        symbol=symbol,
        where=f"tradier history.day ({symbol})",
        fields=_PRICE_FIELDS,
        time_field="date",
        time_unit="date",
    )


def _wall_clock_epoch(value: Any, where: str, i: int) -> int:
    if not isinstance(value, str):
        raise PayloadError(f"{where}[{i}]: neither 'timestamp' nor 'time' gives the bar start")
    try:
        local = pd.Timestamp(value)
    except ValueError:
        raise PayloadError(f"{where}[{i}]: field 'time' = {value!r} is not a valid time") from None
    if local.tzinfo is None:
        local = local.tz_localize(NEW_YORK)
    return local.value // 1_000_000_000


# ---------------------------------------------------------------------------- the client
class TradierProvider(HttpProvider):
    """Recent 15-minute bars and full daily history from Tradier, one symbol a request."""

    name = "tradier"

    def __init__(
        self,
        calendar: SessionCalendar,
        clock: Callable[[], pd.Timestamp],
        *,
        base_url: str = DEFAULT_URL,
        token: str,
        http: HttpClient | None = None,
        budget: Budget | None = None,
        policy: RetryPolicy | None = None,
    ):
        """`base_url` is the host root; `budget` and `policy` are used when `http` is not given."""
        super().__init__(calendar, clock, http=http, budget=budget, policy=policy)
        self._base = base_url.rstrip("/")
        # HttpClient always sends `Accept: application/json`, which Tradier needs (else XML).
        self._credentials = Credentials({"Authorization": f"Bearer {token}"}, hint="TRADIER_API_TOKEN")
        self.capabilities = Capabilities(
            timeframes=frozenset({Timeframe.M15, Timeframe.D1}),
            adjustments=frozenset({Adjustment.SPLIT}),
            max_symbols_per_request=1,
            max_sessions_per_request=None,  # the history window bounds a time & sales request
            history_days={Timeframe.M15: TIMESALES_HISTORY_DAYS, Timeframe.D1: None},
            serves_open_session=True,  # time & sales include today's finished bars
            serves_closed_sessions=True,
            extended_hours=True,  # session_filter=all
        )

    @classmethod
    def settings(cls, config: Mapping[str, str | None]) -> dict[str, Any]:
        return {
            "base_url": setting_url(config, "TRADIER_API_URL", DEFAULT_URL),
            "token": setting_secret(config, "TRADIER_API_TOKEN", cls.name),
        }

    def __repr__(self) -> str:
        return f"TradierProvider({self._base!r})"

    def fetch(self, request: FetchRequest) -> FetchResult:
        if len(request.symbols) != 1 or request.timeframe not in self.capabilities.timeframes:
            raise ProviderError(self.name, "serves m15 and d1 bars, one symbol a request", request=request)
        if request.adjustment not in self.capabilities.adjustments:
            raise ProviderError(self.name, "serves split-adjusted bars only", request=request)
        (symbol,) = request.symbols
        now = self._clock()  # the answer is final up to this reading (no data delay)
        if request.timeframe is Timeframe.M15:
            url = f"{self._base}/v1/markets/timesales"
            params = {
                "symbol": provider_symbol(symbol, self.name),
                "interval": "15min",
                "start": _wall_clock(request.start),
                "end": _wall_clock(request.end - pd.Timedelta(minutes=1)),  # `end` is inclusive
                "session_filter": "all" if request.extended else "open",
            }
            parse = parse_timesales
        else:
            url = f"{self._base}/v1/markets/history"
            params = {
                "symbol": provider_symbol(symbol, self.name),
                "interval": "daily",
                "start": request.sessions[0].isoformat(),
                "end": request.sessions[-1].isoformat(),
            }
            parse = parse_history
        return self._fetch_one(request, url, params, lambda payload: parse(payload, symbol), now, self._credentials)


def _wall_clock(ts: pd.Timestamp) -> str:
    return ts.tz_convert(NEW_YORK).strftime("%Y-%m-%d %H:%M")

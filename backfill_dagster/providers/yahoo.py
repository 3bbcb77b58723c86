"""Yahoo Finance chart v8 (unofficial, no key): recent 15-minute bars and full daily history.

`GET /v8/finance/chart/{symbol}?interval=15m|1d&period1=&period2=&includePrePost=` with Unix-second
bounds (`period2` exclusive). One symbol a request, no paging. Intraday data reaches back ~60 days
(measured: 59 served, 60 refused with HTTP 422), so the capabilities stop at 59 and the router never
asks beyond. Prices are split-adjusted (dividend adjustment is only in `adjclose`), with no raw
series: only split-adjusted stores may use Yahoo.

Quirks handled here: OHLCV arrays hold null for an interval without trades (skipped, not a bar), a
trailing live row at the latest trade time while the market is open (dropped: not finished by the
clock), daily rows stamped at a time on the trading day (labelled 00:00 New York of that day), and
Yahoo's '-' for share classes (BRK-B is the store's BRK.B; backfill_dagster.domain.symbols translates).
Requests without a browser-like User-Agent are refused, so the client sends one.

Splits and cash dividends come from the chart's `events` (interval=1d&events=div,splits), through
the same client and budget, one call per symbol: providers/yahoo_actions.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from backfill_dagster.domain.bars import bars_frame, empty_bars
from backfill_dagster.domain.calendar import NEW_YORK, SessionCalendar
from backfill_dagster.domain.provider_errors import ProviderError, ProviderUnavailable
from backfill_dagster.domain.symbols import provider_symbol, store_symbol
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers import yahoo_actions
from backfill_dagster.providers.base import (
    ActionsResult,
    Adjustment,
    Capabilities,
    FetchRequest,
    FetchResult,
)
from backfill_dagster.providers.config import setting_url
from backfill_dagster.providers.http import Budget, HttpClient, RetryPolicy
from backfill_dagster.providers.http_provider import HttpProvider
from backfill_dagster.providers.payload import PayloadError, expect_list, expect_mapping

DEFAULT_URL = "https://query2.finance.yahoo.com"
BROWSER_USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) backfill-dagster/0.1"
INTRADAY_HISTORY_DAYS = 59

_INTERVALS = {Timeframe.M15: "15m", Timeframe.D1: "1d"}
_PRICES = ("open", "high", "low", "close")
# A daily row stamped this late in the New York evening belongs to the next day (Yahoo's DST slip).
_LATE_EVENING = pd.Timedelta(hours=20)


# ---------------------------------------------------------------------------- pure parsing
def parse_chart(payload: Any, symbol: str, timeframe: Timeframe) -> pd.DataFrame:
    """Bars of a chart answer {"chart": {"result": [{"meta", "timestamp", "indicators"}], "error"}},
    labelled with the symbol `meta.symbol` names (in the store's spelling), else `symbol`.

    An interval whose open, high, low and close are all null had no trades and yields no bar; one
    with only some of them null is malformed. An empty `result`, or no `timestamp` with empty quote
    arrays, is no data; no `timestamp` with quote values is malformed. `events` (dividends, splits)
    are ignored: the prices are already split-adjusted.
    """
    chart = expect_mapping(expect_mapping(payload, "yahoo chart").get("chart"), "yahoo 'chart'")
    error = chart.get("error")
    if error:
        detail = error.get("description") or error.get("code") if isinstance(error, Mapping) else error
        raise PayloadError(f"yahoo chart.error: {detail}")
    results = chart.get("result")
    if results is None:
        raise PayloadError("yahoo chart: neither 'result' nor 'error' is set")
    if not expect_list(results, "yahoo chart.result"):
        return empty_bars()
    result = expect_mapping(results[0], "yahoo chart.result[0]")
    meta = result.get("meta") or {}
    answered = meta.get("symbol")
    if answered is not None:
        if not isinstance(answered, str) or not answered:
            raise PayloadError(f"yahoo chart meta.symbol = {answered!r} is not a ticker")
        # Label the bars with the symbol the answer is for: another than asked is then rejected by
        # validation as not requested (into rejected_bars) instead of failing the request.
        symbol = store_symbol(answered, "yahoo")
    granularity = meta.get("dataGranularity")
    if granularity is not None and granularity != _INTERVALS[timeframe]:
        raise PayloadError(
            f"yahoo chart meta.dataGranularity is {granularity!r}, asked for {_INTERVALS[timeframe]!r}"
        )
    stamps = result.get("timestamp")
    if stamps is None:
        _require_no_quotes(result)
        return empty_bars()
    stamps = _column(stamps, "timestamp", None)
    n = len(stamps)
    indicators = expect_mapping(result.get("indicators"), "yahoo indicators")
    quotes = expect_list(indicators.get("quote"), "yahoo indicators.quote")
    if not quotes:
        raise PayloadError("yahoo indicators.quote is empty")
    quote_ = expect_mapping(quotes[0], "yahoo indicators.quote[0]")
    columns = {name: _column(quote_.get(name), f"indicators.quote[0].{name}", n) for name in (*_PRICES, "volume")}
    if np.isnan(stamps).any():
        raise PayloadError(f"yahoo timestamp[{int(np.argmax(np.isnan(stamps)))}] is null")

    prices = np.vstack([columns[name] for name in _PRICES])
    null = np.isnan(prices)
    no_trades = null.all(axis=0)
    partial = null.any(axis=0) & ~no_trades
    if partial.any():
        i = int(np.argmax(partial))
        field = _PRICES[int(np.argmax(null[:, i]))]
        raise PayloadError(f"yahoo indicators.quote[0].{field}[{i}] is null while other prices are not")
    no_volume = np.isnan(columns["volume"]) & ~no_trades
    if no_volume.any():
        raise PayloadError(f"yahoo indicators.quote[0].volume[{int(np.argmax(no_volume))}] is null for a traded bar")

    keep = ~no_trades
    ts = pd.to_datetime(stamps[keep].astype("int64"), unit="s", utc=True)
    if timeframe is Timeframe.D1:
        ts = _session_midnights(ts)
    return bars_frame(
        {"symbol": symbol, "ts": ts, **{name: values[keep] for name, values in columns.items()}}
    )


def _require_no_quotes(result: Mapping) -> None:
    """Without `timestamp` an answer is 'no data' only if its quote arrays are empty or absent:
    values that cannot be placed in time are a payload error, never silently no bars."""
    indicators = result.get("indicators")
    if indicators is None:
        return
    quotes = expect_list(expect_mapping(indicators, "yahoo indicators").get("quote") or [], "yahoo indicators.quote")
    for i, quote_ in enumerate(quotes):
        for name, values in expect_mapping(quote_, f"yahoo indicators.quote[{i}]").items():
            if values:
                count = len(values) if isinstance(values, list) else 1
                raise PayloadError(
                    f"yahoo chart.result[0]: field 'timestamp' is missing while indicators.quote[{i}].{name} "
                    f"holds {count} value{'s' if count != 1 else ''}"
                )


def _column(values: Any, where: str, length: int | None) -> np.ndarray:
    items = expect_list(values, f"yahoo {where}")
    if length is not None and len(items) != length:
        raise PayloadError(f"yahoo {where} has {len(items)} entries for {length} timestamps")
    bad = next((i for i, v in enumerate(items) if v is not None and not _is_number(v)), None)
    if bad is not None:
        raise PayloadError(f"yahoo {where}[{bad}] = {items[bad]!r} is not a number")
    return np.array(items, dtype=np.float64)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _session_midnights(ts: pd.DatetimeIndex) -> pd.DatetimeIndex:
    local = ts.tz_convert(NEW_YORK)
    day = local.normalize()
    day = day.where(local - day < _LATE_EVENING, day + pd.Timedelta(days=1))
    return day.normalize().tz_convert("UTC")


# ---------------------------------------------------------------------------- the client
class YahooProvider(HttpProvider):
    """Bars from Yahoo's chart API, one symbol a request, no key."""

    name = "yahoo"
    publishes_corporate_actions = True
    user_agent = BROWSER_USER_AGENT  # Yahoo refuses requests without a browser-like one

    def __init__(
        self,
        calendar: SessionCalendar,
        clock: Callable[[], pd.Timestamp],
        *,
        base_url: str = DEFAULT_URL,
        http: HttpClient | None = None,
        budget: Budget | None = None,
        policy: RetryPolicy | None = None,
    ):
        """`base_url` is the host root; `budget` and `policy` are used when `http` is not given."""
        super().__init__(calendar, clock, http=http, budget=budget, policy=policy)
        self._base = base_url.rstrip("/")
        self.capabilities = Capabilities(
            timeframes=frozenset(_INTERVALS),
            adjustments=frozenset({Adjustment.SPLIT}),
            max_symbols_per_request=1,
            max_sessions_per_request=None,
            history_days={Timeframe.M15: INTRADAY_HISTORY_DAYS, Timeframe.D1: None},
            serves_open_session=True,
            serves_closed_sessions=True,
            extended_hours=True,  # includePrePost=true
        )

    @classmethod
    def settings(cls, config: Mapping[str, str | None]) -> dict[str, Any]:
        return {"base_url": setting_url(config, "YAHOO_CHART_URL", DEFAULT_URL)}

    def __repr__(self) -> str:
        return f"YahooProvider({self._base!r})"

    def fetch(self, request: FetchRequest) -> FetchResult:
        if len(request.symbols) != 1 or request.timeframe not in _INTERVALS:
            raise ProviderError(self.name, "serves m15 and d1 bars, one symbol a request", request=request)
        if request.adjustment not in self.capabilities.adjustments:
            raise ProviderError(self.name, "serves split-adjusted bars only", request=request)
        (symbol,) = request.symbols
        now = self._clock()  # the answer is final up to this reading (no data delay)
        url = f"{self._base}/v8/finance/chart/{quote(provider_symbol(symbol, self.name), safe='-^=')}"
        params = {
            "interval": _INTERVALS[request.timeframe],
            "period1": request.start.value // 1_000_000_000,
            "period2": request.end.value // 1_000_000_000,
            "includePrePost": "true" if request.extended else "false",
        }
        return self._fetch_one(request, url, params, lambda body: parse_chart(body, symbol, request.timeframe), now)

    def corporate_actions(self, symbols: Sequence[str], first: date, last: date) -> ActionsResult:
        """One chart call per symbol over first..last with `events=div,splits`."""
        out = ActionsResult()
        symbols = list(symbols)
        for i, symbol in enumerate(symbols):
            url = f"{self._base}/v8/finance/chart/{quote(provider_symbol(symbol, self.name), safe='-^=')}"
            params = {
                "interval": "1d",
                "period1": self._calendar_midnight(first),
                "period2": self._calendar_midnight(last + timedelta(days=1)),
                "events": yahoo_actions.EVENTS,
            }
            try:
                reply = self._http.get_json(url, params)
                out.api_calls += reply.attempts
                out.records += yahoo_actions.parse_events(reply.payload, symbol)
            except ProviderUnavailable as exc:
                out.failed.update({s: str(exc) for s in symbols[i:]})
                break
            except ProviderError as exc:
                out.failed[symbol] = str(exc)
            except PayloadError as exc:
                out.failed[symbol] = str(ProviderError(self.name, f"corporate actions of {symbol}: {exc}"))
        return out

    @staticmethod
    def _calendar_midnight(day: date) -> int:
        return pd.Timestamp(day).tz_localize(NEW_YORK).value // 1_000_000_000

"""Alpaca Market Data v2: multi-symbol stock bars, paged by `next_page_token`.

One request covers many symbols: `GET /v2/stocks/bars?symbols=A,B,C`. Its `limit` counts bars of
all symbols together, and results come sorted by symbol, then time, so the first page may hold
only the first symbol: the client follows `next_page_token` until it is null (stopping at page one
is the classic "Alpaca only returns one symbol" bug). Each page costs one call of the budget.

Feed: `sip` by default, the consolidated tape of every US exchange, i.e. the real market's
OHLC and volume; `iex` alone is a few percent of the volume and its highs and lows differ. The free
plan may query SIP history except its latest 15 minutes, so with `sip` the query `end` is held 15
minutes behind the clock and the answer is final only up to then (`complete_through`): a bar ending
later is cut, and a session stays partial until 15 minutes after its close. The open session is left
to other providers. `ALPACA_FEED=iex` serves today too, at IEX's coverage.

Corporate actions (splits, cash dividends) come from `/v1/corporate-actions` through the same client
and budget: providers/alpaca_actions.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any

import pandas as pd

from backfill_dagster.domain.calendar import SessionCalendar
from backfill_dagster.domain.provider_errors import ProviderError
from backfill_dagster.domain.symbols import provider_symbol, store_symbol
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers import alpaca_actions
from backfill_dagster.providers.base import (
    ActionsResult,
    Adjustment,
    Capabilities,
    FetchRequest,
    FetchResult,
    ProviderConfigError,
)
from backfill_dagster.providers.config import setting_secret, setting_url
from backfill_dagster.providers.http import Budget, Credentials, HttpClient, RetryPolicy
from backfill_dagster.providers.http_provider import HttpProvider, Page, follow_pages
from backfill_dagster.providers.payload import PayloadError, concat_bars, expect_mapping, page_cursor, records_to_bars

DEFAULT_URL = "https://data.alpaca.markets"
FEEDS = ("sip", "iex", "delayed_sip", "boats", "overnight", "otc")
DEFAULT_FEED = "sip"
PAGE_LIMIT = 10_000  # the API's maximum bars per page (all symbols together)
# The v2 maximum of `symbols` is undocumented (v1 allowed 200, the options endpoints 100): 100 is
# inside both, keeps the URL far below 8 KB, and since a page is 10,000 bars whatever the symbols,
# batching more would save no calls, only make one failed request cost more.
MAX_SYMBOLS = 100
# m15: about a year a request, long enough that one symbol's request fills its 10,000-bar pages (a
# UI backfill often asks for one symbol), short enough that a failed request loses at most a year
# of one batch (calls per floor: docs/benchmarks.md). d1: ten years, so one symbol's two years
# are one page, not two requests of a page each (one call a symbol of the whole-market backfill:
# docs/benchmarks.md); a batch of 100 symbols pages at 10,000 bars whatever the window.
MAX_SESSIONS = {Timeframe.M15: 260, Timeframe.D1: 2_520}
HISTORY_START = date(2016, 1, 1)  # Alpaca's stock history begins here on every plan
SIP_DELAY = pd.Timedelta(minutes=15)  # free plans may not query the latest 15 minutes of SIP
# Feeds whose data trails the clock: an answer is final only up to now less this delay.
DATA_DELAYS = {"sip": SIP_DELAY, "delayed_sip": SIP_DELAY}
MAX_PAGES = 10_000  # a guard against a server that never stops paging

_TIMEFRAMES = {Timeframe.M15: "15Min", Timeframe.D1: "1Day"}
_FIELDS = {"open": "o", "high": "h", "low": "l", "close": "c", "volume": "v", "vwap": "vw", "trade_count": "n"}


# ---------------------------------------------------------------------------- pure parsing
def parse_bars(payload: Any) -> pd.DataFrame:
    """Bars of one `/v2/stocks/bars` page: {"bars": {SYMBOL: [bar, ...]}, "next_page_token": ...}.

    `bars` may be null or {} (no data); a symbol without data is absent. The single-symbol shape
    ({"symbol": "AAPL", "bars": [...]}) is accepted too. Bars are labelled in the store's spelling.
    """
    body = expect_mapping(payload, "alpaca page")
    if "bars" not in body:
        raise PayloadError("alpaca page: field 'bars' is missing")
    bars = body["bars"]
    if bars is None:
        return concat_bars([])
    if isinstance(bars, list):  # single-symbol endpoint
        symbol = body.get("symbol")
        if not isinstance(symbol, str) or not symbol:
            raise PayloadError("alpaca page: a list of 'bars' needs a 'symbol'")
        return _symbol_bars(symbol, bars)
    by_symbol = expect_mapping(bars, "alpaca page: 'bars'")
    return concat_bars([_symbol_bars(symbol, rows) for symbol, rows in by_symbol.items()])


def _symbol_bars(symbol: str, rows: Any) -> pd.DataFrame:
    return records_to_bars(
        [] if rows is None else rows,
        symbol=store_symbol(symbol, "alpaca"),
        where=f"alpaca bars[{symbol!r}]",
        fields=_FIELDS,
        time_field="t",
        time_unit="rfc3339",
    )


def next_page_token(payload: Any) -> str | None:
    """The token of the next page, or None on the last one."""
    return page_cursor(payload, "next_page_token", "alpaca page")


# ---------------------------------------------------------------------------- the client
class AlpacaProvider(HttpProvider):
    """Stock bars from Alpaca, many symbols a request."""

    name = "alpaca"
    publishes_corporate_actions = True

    def __init__(
        self,
        calendar: SessionCalendar,
        clock: Callable[[], pd.Timestamp],
        *,
        base_url: str = DEFAULT_URL,
        key_id: str,
        secret_key: str,
        feed: str = DEFAULT_FEED,
        page_limit: int = PAGE_LIMIT,
        actions_page_limit: int = alpaca_actions.PAGE_LIMIT,
        http: HttpClient | None = None,
        budget: Budget | None = None,
        policy: RetryPolicy | None = None,
    ):
        """`budget` and `policy` are used when `http` is not given (an HttpClient carries its own); `page_limit`
        and `actions_page_limit` are the bars and corporate actions a page may hold (the API's
        maximums unless a test wants many pages)."""
        if feed not in FEEDS:
            raise ProviderConfigError(f"unknown Alpaca feed {feed!r} in ALPACA_FEED: use one of {', '.join(FEEDS)}")
        super().__init__(calendar, clock, http=http, budget=budget, policy=policy)
        self._url = base_url.rstrip("/") + "/v2/stocks/bars"
        self._actions_url = base_url.rstrip("/") + alpaca_actions.PATH
        self._actions_page_limit = actions_page_limit
        self._credentials = Credentials(
            {"APCA-API-KEY-ID": key_id, "APCA-API-SECRET-KEY": secret_key},
            hint="ALPACA_API_KEY / ALPACA_API_SECRET",
        )
        self.feed = feed
        self._page_limit = page_limit
        today = clock().tz_convert("America/New_York").date()
        history = (today - HISTORY_START).days + 1
        self.capabilities = Capabilities(
            timeframes=frozenset(_TIMEFRAMES),
            adjustments=frozenset({Adjustment.SPLIT, Adjustment.RAW}),
            max_symbols_per_request=MAX_SYMBOLS,
            max_sessions_per_request=MAX_SESSIONS,
            history_days={Timeframe.M15: history, Timeframe.D1: history},
            # SIP's latest 15 minutes are off limits on the free plan: today comes from elsewhere.
            serves_open_session=feed != "sip",
            serves_closed_sessions=True,
            extended_hours=True,  # 04:00-20:00 always included; the client keeps what was asked
        )

    @classmethod
    def settings(cls, config: Mapping[str, str | None]) -> dict[str, Any]:
        return {
            "base_url": setting_url(config, "ALPACA_DATA_URL", DEFAULT_URL),
            "key_id": setting_secret(config, "ALPACA_API_KEY", cls.name),
            "secret_key": setting_secret(config, "ALPACA_API_SECRET", cls.name),
            "feed": (config.get("ALPACA_FEED") or "").strip().lower() or DEFAULT_FEED,
        }

    def __repr__(self) -> str:
        return f"AlpacaProvider(feed={self.feed!r})"

    @property
    def provenance(self) -> str:
        return f"alpaca:{self.feed}"

    def fetch(self, request: FetchRequest) -> FetchResult:
        if request.timeframe not in _TIMEFRAMES:
            raise ProviderError(self.name, f"cannot serve {request.timeframe.value} bars", request=request)
        # One clock reading decides what is asked, what is kept and (in the caller) the status:
        # SIP on the free plan is final only up to 15 minutes ago, so a bar ending later is cut.
        complete_through = self._clock() - DATA_DELAYS.get(self.feed, pd.Timedelta(0))
        end = request.end - pd.Timedelta(seconds=1)  # Alpaca's end is inclusive
        if self.feed == "sip":
            end = min(end, complete_through)
        if end < request.start:  # nothing old enough to ask for
            return FetchResult(bars=concat_bars([]), api_calls=0, complete_through=complete_through)
        params: dict[str, Any] = {
            "symbols": ",".join(provider_symbol(s, self.name) for s in request.symbols),
            "timeframe": _TIMEFRAMES[request.timeframe],
            "start": _rfc3339(request.start),
            "end": _rfc3339(end),
            "limit": self._page_limit,
            "feed": self.feed,
            "adjustment": request.adjustment.value,  # "raw" or "split", Alpaca's own words
            "sort": "asc",
        }

        def follow(payload: Any) -> Page | None:  # the same query with the page's token
            token = next_page_token(payload)
            return None if token is None else (self._url, {**params, "page_token": token})

        attempts: list[int] = []
        frames = follow_pages(
            self._http, (self._url, params), parse=parse_bars, follow=follow, count=attempts.append,
            provider=self.name, cursor="next_page_token", max_pages=MAX_PAGES,
            credentials=self._credentials, request=request,
        )
        return self._result(request, concat_bars(frames), sum(attempts), complete_through)

    def corporate_actions(self, symbols: Sequence[str], first: date, last: date) -> ActionsResult:
        return alpaca_actions.fetch_corporate_actions(
            self._http, self._actions_url, self._credentials, list(symbols), first, last,
            page_limit=self._actions_page_limit,
        )


def _rfc3339(ts: pd.Timestamp) -> str:
    return ts.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")

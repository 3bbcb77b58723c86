"""Polygon.io (Massive) aggregates v2: one ticker a request, paged by `next_url`.

`GET /v2/aggs/ticker/{T}/range/15/minute/{from}/{to}` (or `1/day`), `from`/`to` in Unix ms, both
inclusive and snapped to whole buckets. `limit` (at most 50,000) counts the *base* minutes (or days)
read, not the bars returned: a page of 15-minute bars holds at most ~3,333 of them. A page that
stops short carries `next_url`, which has no key in it: the key travels in the
`Authorization: Bearer` header on every page, so it is never in a URL at all. Like the official
client, only the path and query of `next_url` are used, against the configured host.

Splits and cash dividends come from `/stocks/v1/splits` and `/stocks/v1/dividends` through the same
client and budget: providers/polygon_actions.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any
from urllib.parse import quote

import httpx
import pandas as pd

from backfill_dagster.domain.calendar import SessionCalendar
from backfill_dagster.domain.provider_errors import ProviderError
from backfill_dagster.domain.symbols import provider_symbol, store_symbol
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers import polygon_actions
from backfill_dagster.providers.polygon_actions import next_url  # the same cursor on every Polygon list
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
from backfill_dagster.providers.payload import PayloadError, concat_bars, expect_mapping, records_to_bars

DEFAULT_URL = "https://api.polygon.io"
PAGE_LIMIT = 50_000  # base aggregates per page, the API's maximum
# The free plan reaches ~2 years back (a window wholly older is refused with 403, one that starts
# too early is silently clipped), so by default sessions older than that go to other providers.
# Paid plans reach further: set POLYGON_HISTORY_DAYS (0 = full history).
DEFAULT_HISTORY_DAYS = 730
MAX_PAGES = 10_000

_RANGES = {Timeframe.M15: "15/minute", Timeframe.D1: "1/day"}
_FIELDS = {"open": "o", "high": "h", "low": "l", "close": "c", "volume": "v", "vwap": "vw", "trade_count": "n"}
_OK_STATUSES = ("OK", "DELAYED")


# ---------------------------------------------------------------------------- pure parsing
def parse_aggs(payload: Any, symbol: str) -> pd.DataFrame:
    """Bars of one aggregates page. No data: `results` absent or null (with resultsCount 0).

    The bars are labelled with the page's `ticker` (in the store's spelling) when it has one: an
    answer for another ticker than `symbol` is then rejected by validation as not requested, and
    kept in rejected_bars.
    """
    body = expect_mapping(payload, "polygon page")
    status = body.get("status")
    if status is not None and status not in _OK_STATUSES:
        detail = body.get("error") or body.get("message") or ""
        raise PayloadError(f"polygon page: status {status!r} {detail}".rstrip())
    ticker = body.get("ticker")
    if ticker is not None:
        if not isinstance(ticker, str) or not ticker:
            raise PayloadError(f"polygon page: field 'ticker' = {ticker!r} is not a ticker")
        symbol = store_symbol(ticker, "polygon")
    results = body.get("results")
    return records_to_bars(
        [] if results is None else results,
        symbol=symbol,
        where=f"polygon results ({symbol})",
        fields=_FIELDS,
        time_field="t",
        time_unit="ms",
    )


# ---------------------------------------------------------------------------- the client
class PolygonProvider(HttpProvider):
    """Aggregates from Polygon/Massive, one symbol a request."""

    name = "polygon"
    publishes_corporate_actions = True

    def __init__(
        self,
        calendar: SessionCalendar,
        clock: Callable[[], pd.Timestamp],
        *,
        base_url: str = DEFAULT_URL,
        api_key: str,
        history_days: int | None = DEFAULT_HISTORY_DAYS,
        page_limit: int = PAGE_LIMIT,
        http: HttpClient | None = None,
        budget: Budget | None = None,
        policy: RetryPolicy | None = None,
        actions_page_limit: int = polygon_actions.PAGE_LIMIT,
    ):
        """`budget` and `policy` are used when `http` is not given (an HttpClient carries its own); `page_limit`
        is the base aggregates a page may read (the API's maximum unless a test wants many pages)."""
        super().__init__(calendar, clock, http=http, budget=budget, policy=policy)
        self._base = httpx.URL(base_url.rstrip("/"))
        self._credentials = Credentials({"Authorization": f"Bearer {api_key}"}, hint="POLYGON_API_KEY")
        self._page_limit = page_limit
        self._actions_page_limit = actions_page_limit
        self.capabilities = Capabilities(
            timeframes=frozenset(_RANGES),
            adjustments=frozenset({Adjustment.SPLIT, Adjustment.RAW}),  # adjusted=true|false
            max_symbols_per_request=1,
            max_sessions_per_request=None,  # one range, paged by next_url
            history_days={t: history_days for t in _RANGES},
            # The free plan is end-of-day / 15-minute delayed: today is left to other providers.
            serves_open_session=False,
            serves_closed_sessions=True,
            extended_hours=True,  # pre- and after-hours always included
        )

    @classmethod
    def settings(cls, config: Mapping[str, str | None]) -> dict[str, Any]:
        return {
            "base_url": setting_url(config, "POLYGON_API_URL", DEFAULT_URL),
            "api_key": setting_secret(config, "POLYGON_API_KEY", cls.name),
            "history_days": _history_days(config.get("POLYGON_HISTORY_DAYS")),
        }

    def __repr__(self) -> str:
        return f"PolygonProvider({str(self._base)!r})"

    def fetch(self, request: FetchRequest) -> FetchResult:
        if request.timeframe not in _RANGES or len(request.symbols) != 1:
            raise ProviderError(
                self.name, "serves m15 and d1 bars, one symbol a request", request=request
            )
        (symbol,) = request.symbols
        now = self._clock()  # the answer is final up to this reading (no data delay)
        first_ms = request.start.value // 1_000_000
        last_ms = request.end.value // 1_000_000 - 1  # `to` is inclusive
        ticker = quote(provider_symbol(symbol, self.name), safe=".-")
        path = f"/v2/aggs/ticker/{ticker}/range/{_RANGES[request.timeframe]}/{first_ms}/{last_ms}"
        url: str = str(self._base.copy_with(raw_path=(self._base.raw_path.rstrip(b"/") + path.encode())))
        params: dict[str, Any] = {
            "adjusted": "true" if request.adjustment is Adjustment.SPLIT else "false",
            "sort": "asc",
            "limit": self._page_limit,
        }
        attempts: list[int] = []
        frames = follow_pages(
            self._http, (url, params), parse=lambda payload: parse_aggs(payload, symbol), follow=self._follow,
            count=attempts.append, provider=self.name, cursor="next_url", max_pages=MAX_PAGES,
            credentials=self._credentials, request=request,
        )
        return self._result(request, concat_bars(frames), sum(attempts), now)

    def _follow(self, payload: Any) -> Page | None:
        """The page `next_url` names; the cursor carries the other parameters."""
        following = next_url(payload)
        return None if following is None else (self._page_url(following), None)

    def _page_url(self, following: str) -> str:
        """next_url's path and query on the configured host (as the official client does)."""
        try:
            parsed = httpx.URL(following)
        except httpx.InvalidURL:
            raise ProviderError(self.name, "the API sent an invalid next_url") from None
        return str(self._base.copy_with(raw_path=parsed.raw_path))

    def corporate_actions(self, symbols: Sequence[str], first: date, last: date) -> ActionsResult:
        return polygon_actions.fetch_corporate_actions(
            self._http, self._page_url, self._credentials, list(symbols), first, last,
            page_limit=self._actions_page_limit,
        )


def _history_days(value: str | None) -> int | None:
    if value is None or not value.strip():
        return DEFAULT_HISTORY_DAYS
    try:
        days = int(value)
    except ValueError:
        raise ProviderConfigError(
            "POLYGON_HISTORY_DAYS must be a whole number of days (0 = full history)"
        ) from None
    if days < 0:
        raise ProviderConfigError("POLYGON_HISTORY_DAYS must not be negative (0 = full history)")
    return days or None

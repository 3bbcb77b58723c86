"""What the four HTTP providers share: construction from configuration, one HttpClient, the paging loop.

Each provider module keeps its own quirks: the docstring, the constants with their reasons, the pure
parser, the request it builds and its paging rule (`follow`: how a page names the next one). This
module only runs them: one GET a page, each page's attempts counted as they happen (a failure later
still has them counted), and what must never pass silently turned into the provider's error: a
malformed page (with its HTTP status), a cursor that repeats, more pages than `max_pages`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, Self, TypeVar

import pandas as pd

from backfill_dagster.domain.calendar import SessionCalendar
from backfill_dagster.domain.provider_errors import ProviderError
from backfill_dagster.providers.base import FetchRequest, FetchResult, Provider
from backfill_dagster.providers.http import USER_AGENT, Budget, Credentials, HttpClient, RetryPolicy
from backfill_dagster.providers.payload import PayloadError, keep_requested

T = TypeVar("T")
# A page's URL and query parameters (None: the URL carries them, as Polygon's next_url does).
Page = tuple[str, Mapping[str, Any] | None]


def follow_pages(
    http: HttpClient,
    first: Page,
    *,
    parse: Callable[[Any], T],
    follow: Callable[[Any], Page | None],
    count: Callable[[int], None],
    provider: str,
    cursor: str,
    max_pages: int,
    context: str = "",
    credentials: Credentials | None = None,
    request: FetchRequest | None = None,
) -> list[T]:
    """`parse` of every page, from `first` on: `follow` reads the next page off a payload (None on
    the last one); `count` gets each page's attempts. Errors are `provider`'s, their messages start
    with `context` and name the `cursor` field that repeated."""
    parsed: list[T] = []
    url, params = first
    seen: set[tuple[str, tuple | None]] = set()
    for _ in range(max_pages):
        reply = http.get_json(url, params, credentials=credentials, request=request)
        count(reply.attempts)
        try:
            parsed.append(parse(reply.payload))
            following = follow(reply.payload)
        except PayloadError as exc:
            raise ProviderError(provider, f"{context}{exc}", status=reply.status, request=request) from None
        if following is None:
            return parsed
        url, params = following
        key = (url, None if params is None else tuple(params.items()))
        if key in seen:
            raise ProviderError(
                provider, f"{context}the API repeated a {cursor}: paging would never end", request=request
            )
        seen.add(key)
    raise ProviderError(provider, f"{context}more than {max_pages} pages for one request", request=request)


class HttpProvider(Provider):
    """A provider behind an HTTP API: a session calendar, a clock read once a request, and one
    HttpClient carrying the provider's shared budget and retry policy."""

    user_agent: str = USER_AGENT

    def __init__(
        self,
        calendar: SessionCalendar,
        clock: Callable[[], pd.Timestamp],
        *,
        http: HttpClient | None = None,
        budget: Budget | None = None,
        policy: RetryPolicy | None = None,
    ):
        """`budget` and `policy` are used when `http` is not given (an HttpClient carries its own)."""
        self._calendar = calendar
        self._clock = clock
        self._http = http or HttpClient(self.name, budget=budget, policy=policy, user_agent=self.user_agent)

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, str | None],
        calendar: SessionCalendar,
        clock: Callable[[], pd.Timestamp],
        budget: Budget | None = None,
        policy: RetryPolicy | None = None,
    ) -> Self:
        """The provider as `config` (environment variable -> value) sets it; a bad setting fails here."""
        return cls(calendar, clock, **cls.settings(config), budget=budget, policy=policy)

    @classmethod
    @abc.abstractmethod
    def settings(cls, config: Mapping[str, str | None]) -> dict[str, Any]:
        """The constructor's keywords that `config` sets (URL, key, options), each checked."""

    def _fetch_one(
        self,
        request: FetchRequest,
        url: str,
        params: Mapping[str, Any],
        parse: Callable[[Any], pd.DataFrame],
        complete_through: pd.Timestamp,
        credentials: Credentials | None = None,
    ) -> FetchResult:
        """The bars of an API that answers a request in one page."""
        reply = self._http.get_json(url, params, credentials=credentials, request=request)
        try:
            bars = parse(reply.payload)
        except PayloadError as exc:
            raise ProviderError(self.name, str(exc), status=reply.status, request=request) from None
        return self._result(request, bars, reply.attempts, complete_through)

    def _result(
        self, request: FetchRequest, bars: pd.DataFrame, api_calls: int, complete_through: pd.Timestamp
    ) -> FetchResult:
        """The answer: the bars asked for that are final by `complete_through`."""
        bars = keep_requested(bars, request, complete_through, self._calendar)
        return FetchResult(bars=bars, api_calls=api_calls, complete_through=complete_through)

    def close(self) -> None:
        self._http.close()

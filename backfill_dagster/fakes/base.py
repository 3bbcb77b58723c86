"""What every provider fake shares: the request and response objects and the provider interface.

A provider fake is a plain object with routes (path regex -> method) and the provider's own words
for auth failures, rate limits and server errors. The server (server.py) does the HTTP, the
counting and the fault injection; a fake only turns a request into a response, so adding a fifth
provider is copying one module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from backfill_dagster.fakes.config import FakeConfig
from backfill_dagster.fakes.control import WindowState
from backfill_dagster.fakes.data import BarData


@dataclass(frozen=True)
class Request:
    """A GET as a fake sees it."""

    path: str
    query: Mapping[str, str]  # the first value of each parameter
    headers: Any  # case-insensitive .get(name) (http.client.HTTPMessage)
    params: Mapping[str, str]  # captured from the route's path pattern
    now: pd.Timestamp  # UTC
    base_url: str  # "http://host:port", for URLs the fake hands out (Polygon's next_url)

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else str(value)


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    bars: int | None = None  # bars the answer carries, where the fake counts them (Alpaca's pages)


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    # Compact separators: pages of 10,000 bars are large enough already.
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return Response(status, body, headers=dict(headers or {}))


def text_response(status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    return Response(status, text.encode(), content_type=content_type)


def rfc3339(ns) -> list[str]:
    """UTC RFC 3339 strings ("2024-01-03T14:30:00Z") of epoch nanoseconds, vectorised."""
    values = np.asarray(ns, dtype=np.int64).astype("datetime64[ns]").astype("datetime64[s]")
    return [f"{s}Z" for s in np.datetime_as_string(values)]


class BadRequest(Exception):
    """A request a fake refuses; `response` is the provider's own error answer."""

    def __init__(self, response: Response):
        super().__init__(response.status)
        self.response = response


Handler = Callable[[Request], Response]


class ProviderFake:
    """One provider's behaviour. Subclasses set `name` and `routes` and override what differs."""

    name: str = ""
    # (compiled path pattern, name of the method serving it)
    routes: tuple[tuple[re.Pattern[str], str], ...] = ()
    # Alpaca and Tradier put their rate headers on every response; the others only say "429".
    rate_headers_always: bool = False
    # How the provider writes a share class: "." (BRK.B, CQS style) or "-" (Yahoo's BRK-B).
    class_separator: str = "."

    def __init__(self, config: FakeConfig, data: BarData):
        self.config = config
        self.data = data

    def route(self, path: str) -> tuple[Handler, dict[str, str]] | None:
        for pattern, method in self.routes:
            match = pattern.match(path)
            if match:
                return getattr(self, method), match.groupdict()
        return None

    def data_symbol(self, symbol: str) -> str | None:
        """The key of the fakes' bar data (the store's spelling, BRK.B) for a symbol as this provider
        spells it, or None for a symbol the provider does not know: an unknown one, or a share
        class written the other provider's way (Yahoo has no BRK.B, Alpaca no BRK-B)."""
        other = "-" if self.class_separator == "." else "."
        key = symbol.replace(self.class_separator, ".")
        if other in symbol or self.config.is_unknown(symbol) or self.config.is_unknown(key):
            return None
        return key

    def authenticate(self, request: Request) -> Response | None:
        """The auth failure answer, or None when the request may proceed."""
        return None

    def rate_headers(self, window: WindowState) -> dict[str, str]:
        return {}

    def too_many_requests(self, window: WindowState) -> Response:
        """The answer over the limit (`window.resets_at` says when the budget is back)."""
        raise NotImplementedError

    def server_error(self, status: int) -> Response:
        raise NotImplementedError

"""Massive (Polygon) `/stocks/v1/splits` and `/stocks/v1/dividends`: many tickers a request.

(The `/v3/reference/*` endpoints are deprecated.) Quirks handled
here:
- `sort` defaults to the date *descending* and `limit` to 100: both are always sent (ascending, the
  maximum 5000), and `next_url` is followed like the aggregates' (its path and query on the
  configured host, the key in the `Authorization` header, never in a URL).
- `ticker.any_of` takes a comma list; the date filters are `execution_date.gte/.lte` (splits) and
  `ex_dividend_date.gte/.lte` (dividends).
- A split is `split_to` new shares for `split_from` old ones, both floats (4-for-1: 1.0 and 4.0);
  `execution_date` is the ex-date. Stock dividends are filed among the splits
  (`adjustment_type=stock_dividend`): not asked for, the store adjusts for splits only.
- Duplicate rows for one event are known (polygon-io/issues#311): the store dedupes by
  symbol, kind and ex-date.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

from backfill_dagster.domain.corporate_actions import ActionError, ActionRecord, dividend_record, split_record
from backfill_dagster.domain.symbols import provider_symbol
from backfill_dagster.providers.base import ActionsResult, actions_in_batches
from backfill_dagster.providers.http import Credentials, HttpClient
from backfill_dagster.providers.http_provider import Page, follow_pages
from backfill_dagster.providers.payload import PayloadError, action_identity, expect_list, expect_mapping, page_cursor, required_field

SPLITS_PATH = "/stocks/v1/splits"
DIVIDENDS_PATH = "/stocks/v1/dividends"
PAGE_LIMIT = 5000  # the API's maximum rows a page
MAX_TICKERS = 100  # tickers in one ticker.any_of: a short URL, and a page holds 5,000 rows anyway
MAX_PAGES = 1000
SPLIT_TYPES = "forward_split,reverse_split"
_OK_STATUSES = ("OK", "DELAYED")


# ---------------------------------------------------------------------------- pure parsing
def parse_splits(payload: Any) -> list[ActionRecord]:
    out = []
    for i, row in enumerate(_results(payload, "splits")):
        where = f"polygon splits.results[{i}]"
        symbol, ex_date, action_id = action_identity(row, where, "polygon", "ticker", "execution_date")
        try:
            out.append(split_record(symbol, ex_date, "polygon", required_field(row, "split_from", where),
                                    required_field(row, "split_to", where), action_id))
        except ActionError as exc:
            raise PayloadError(f"{where}: {exc}") from None
    return out


def parse_dividends(payload: Any) -> list[ActionRecord]:
    out = []
    for i, row in enumerate(_results(payload, "dividends")):
        where = f"polygon dividends.results[{i}]"
        symbol, ex_date, action_id = action_identity(row, where, "polygon", "ticker", "ex_dividend_date")
        try:
            out.append(dividend_record(symbol, ex_date, "polygon", required_field(row, "cash_amount", where), action_id))
        except ActionError as exc:
            raise PayloadError(f"{where}: {exc}") from None
    return out


def next_url(payload: Any) -> str | None:
    """The next page's URL (it carries no key), or None on the last page."""
    return page_cursor(payload, "next_url", "polygon page")


def _results(payload: Any, what: str) -> list:
    body = expect_mapping(payload, f"polygon {what}")
    status = body.get("status")
    if status is not None and status not in _OK_STATUSES:
        raise PayloadError(f"polygon {what}: status {status!r} {body.get('error') or body.get('message') or ''}".rstrip())
    results = body.get("results")
    return [] if results is None else [expect_mapping(r, f"polygon {what}.results[]") for r in
                                       expect_list(results, f"polygon {what}.results")]


# ---------------------------------------------------------------------------- the client
def fetch_corporate_actions(
    http: HttpClient,
    url_for: Callable[[str], str],
    credentials: Credentials,
    symbols: Sequence[str],
    first: date,
    last: date,
    *,
    page_limit: int = PAGE_LIMIT,
) -> ActionsResult:
    """Splits and cash dividends of `symbols` with ex-dates first..last, MAX_TICKERS a request,
    following `next_url`; `url_for` puts a path (and query) on the configured host. A batch whose
    requests fail has its symbols in `failed`; once the provider is unavailable, the rest are not asked."""

    def batch_actions(batch: Sequence[str], out: ActionsResult) -> list[ActionRecord]:
        found = []  # splits and dividends of the batch, kept only if both lists were read
        for path, parse, column, extra in (
            (SPLITS_PATH, parse_splits, "execution_date", {"adjustment_type.any_of": SPLIT_TYPES}),
            (DIVIDENDS_PATH, parse_dividends, "ex_dividend_date", {}),
        ):
            params = {
                "ticker.any_of": ",".join(provider_symbol(s, "polygon") for s in batch),
                f"{column}.gte": first.isoformat(), f"{column}.lte": last.isoformat(),
                "sort": f"{column}.asc", "limit": page_limit, **extra,
            }
            found += _pages(http, url_for, credentials, path, params, parse, out)
        return found

    return actions_in_batches(symbols, MAX_TICKERS, batch_actions)


def _pages(
    http: HttpClient, url_for: Callable[[str], str], credentials: Credentials, path: str, params: dict[str, Any],
    parse: Callable[[Any], list[ActionRecord]], out: ActionsResult,
) -> list[ActionRecord]:
    """Every page of one query (the calls are counted on `out` as they go)."""

    def follow(payload: Any) -> Page | None:  # the page `next_url` names; the cursor carries the parameters
        following = next_url(payload)
        return None if following is None else (url_for(following), None)

    def count(attempts: int) -> None:
        out.api_calls += attempts

    pages = follow_pages(
        http, (url_for(path), params), parse=parse, follow=follow, count=count, provider="polygon",
        cursor="next_url", max_pages=MAX_PAGES, context=f"{path}: ", credentials=credentials,
    )
    return [record for page in pages for record in page]

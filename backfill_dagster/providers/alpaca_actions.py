"""Alpaca Market Data v1 corporate actions: splits and cash dividends of many symbols a request.

`GET /v1/corporate-actions?symbols=A,B&types=forward_split,reverse_split,cash_dividend&start=&end=
&limit=1000` (Alpaca Market Data v1), the bars' key headers. Quirks handled here:
- `start` and `end` default to *today*: both are always sent. They filter on `process_date`, the
  booking date, which for a cash dividend is its payable date, weeks after the ex-date: the caller
  asks up to a date well past today to see dividends whose ex-date has come.
- The answer groups rows by the *plural* type (`forward_splits` ...); a type without rows is absent;
  `limit` (at most 1000) counts rows of all types together and a type can continue on the next page,
  so pages are merged until `next_page_token` is null.
- The ratio is `new_rate` for `old_rate` (4-for-1: 4 and 1; a 1-for-10 reverse split: 1 and 10),
  and the share basis changes on `ex_date` (never `payable_date`, which can be the day before).
- Records from 2024 and older have no `id` (it appeared mid-2025): the id is optional.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from backfill_dagster.domain.corporate_actions import ActionError, ActionRecord, dividend_record, split_record
from backfill_dagster.domain.symbols import provider_symbol
from backfill_dagster.providers.base import ActionsResult, actions_in_batches
from backfill_dagster.providers.http import Credentials, HttpClient
from backfill_dagster.providers.http_provider import Page, follow_pages
from backfill_dagster.providers.payload import PayloadError, action_identity, expect_list, expect_mapping, page_cursor, required_field

PATH = "/v1/corporate-actions"
TYPES = ("forward_split", "reverse_split", "cash_dividend")
PAGE_LIMIT = 1000  # the API's maximum rows a page
# The maximum of `symbols` is undocumented; the bars' 100 keeps the URL short and is plenty, since
# a page holds 1,000 rows whatever the symbols.
MAX_SYMBOLS = 100
MAX_PAGES = 1000
_SPLITS = ("forward_splits", "reverse_splits")


# ---------------------------------------------------------------------------- pure parsing
def parse_corporate_actions(payload: Any) -> list[ActionRecord]:
    """The splits and cash dividends of one page, in the store's symbol spelling; other types
    (mergers, spin-offs ...) are not kept."""
    body = expect_mapping(payload, "alpaca corporate actions")
    if "corporate_actions" not in body:
        raise PayloadError("alpaca corporate actions: field 'corporate_actions' is missing")
    groups = body["corporate_actions"] or {}
    groups = expect_mapping(groups, "alpaca corporate_actions")
    out = []
    for group in (*_SPLITS, "cash_dividends"):
        rows = groups.get(group) or []
        for i, row in enumerate(expect_list(rows, f"alpaca corporate_actions.{group}")):
            where = f"alpaca corporate_actions.{group}[{i}]"
            row = expect_mapping(row, where)
            symbol, ex_date, action_id = action_identity(row, where, "alpaca", "symbol", "ex_date")
            try:
                if group == "cash_dividends":
                    out.append(dividend_record(symbol, ex_date, "alpaca", required_field(row, "rate", where), action_id))
                else:
                    out.append(split_record(symbol, ex_date, "alpaca", required_field(row, "old_rate", where),
                                            required_field(row, "new_rate", where), action_id))
            except ActionError as exc:
                raise PayloadError(f"{where}: {exc}") from None
    return out


def next_page_token(payload: Any) -> str | None:
    return page_cursor(payload, "next_page_token", "alpaca corporate actions")


# ---------------------------------------------------------------------------- the client
def fetch_corporate_actions(
    http: HttpClient,
    url: str,
    credentials: Credentials,
    symbols: Sequence[str],
    first: date,
    last: date,
    *,
    page_limit: int = PAGE_LIMIT,
) -> ActionsResult:
    """Every split and cash dividend of `symbols` booked first..last, in batches of MAX_SYMBOLS,
    following `next_page_token`. Each page is one call of the shared budget. A batch whose request
    fails has its symbols in `failed`; once the provider is unavailable, the rest are not asked."""
    return actions_in_batches(
        symbols, MAX_SYMBOLS, lambda batch, out: _fetch_batch(http, url, credentials, batch, first, last, page_limit, out)
    )


def _fetch_batch(
    http: HttpClient, url: str, credentials: Credentials, batch: Sequence[str], first: date, last: date,
    page_limit: int, out: ActionsResult,
) -> list[ActionRecord]:
    """One batch of symbols, every page of it (the calls are counted on `out` as they go)."""
    params: dict[str, Any] = {
        "symbols": ",".join(provider_symbol(s, "alpaca") for s in batch),
        "types": ",".join(TYPES),
        "start": first.isoformat(),  # both always: each defaults to today
        "end": last.isoformat(),
        "limit": page_limit,
        "sort": "asc",
    }

    def follow(payload: Any) -> Page | None:  # the same query with the page's token
        token = next_page_token(payload)
        return None if token is None else (url, {**params, "page_token": token})

    def count(attempts: int) -> None:
        out.api_calls += attempts

    pages = follow_pages(
        http, (url, params), parse=parse_corporate_actions, follow=follow, count=count, provider="alpaca",
        cursor="next_page_token", max_pages=MAX_PAGES, context="corporate actions: ", credentials=credentials,
    )
    return [record for page in pages for record in page]

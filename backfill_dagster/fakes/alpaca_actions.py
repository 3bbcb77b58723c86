"""Fake Alpaca Market Data v1 corporate actions (`/v1/corporate-actions`), from the fakes'
registry (fakes/actions.py).

- `GET /v1/corporate-actions?symbols=A,B&types=forward_split,reverse_split,cash_dividend&start=&end=
  &limit=&page_token=&sort=`; the bars' auth headers.
- `start`/`end` are dates, inclusive, and both default to *today*; they filter on `process_date`
  (the booking date: a split's ex-date, or the day it was listed if later; a dividend's payable date,
  two weeks after its ex-date). Only actions announced by today are listed.
- The body: `{"corporate_actions": {"forward_splits": [...], "reverse_splits": [...],
  "cash_dividends": [...]}, "next_page_token": ...}`; a type with no rows is absent. Rows are in
  `process_date` order (then id) across types; `limit` (1-1000, default 100) counts rows of all
  types together, and `next_page_token` (base64 of `process_date|id` of the last row) resumes after
  it, so a type's list can continue on the next page.
- A split is forward when it gives more shares (`new_rate` > `old_rate`), reverse otherwise.
- The fake needs `symbols` (the real API lists every symbol without it); unknown symbols are absent.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import date

from backfill_dagster.fakes.actions import CorporateActions
from backfill_dagster.fakes.base import BadRequest, Request, json_response
from backfill_dagster.fakes.data import ny_date

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
TYPES = ("forward_split", "reverse_split", "cash_dividend")
# What the real API accepts besides: served as no rows (the registry has none of them).
OTHER_TYPES = ("unit_split", "stock_dividend", "spin_off", "cash_merger", "stock_merger", "stock_and_cash_merger",
               "redemption", "name_change", "worthless_removal", "rights_distribution")
# History the registry is asked over when a request names no window of its own (the whole calendar).
_EVER = (date(1990, 1, 1), date(2100, 1, 1))


def _error(status: int, code: int, message: str) -> BadRequest:
    return BadRequest(json_response(status, {"code": code, "message": message}))


def answer(request: Request, registry: CorporateActions, data_symbol: Callable[[str], str | None]) -> dict:
    """The body of one page."""
    q = request.query
    symbols = [s.strip() for s in q.get("symbols", "").split(",") if s.strip()]
    if not symbols:
        raise _error(400, 40010001, "the fake needs symbols (the real API lists every symbol without them)")
    types = [t.strip() for t in q.get("types", ",".join(TYPES + OTHER_TYPES)).split(",") if t.strip()]
    unknown = [t for t in types if t not in TYPES + OTHER_TYPES]
    if unknown:
        raise _error(422, 42210000, f"invalid types: {', '.join(unknown)}")
    today = ny_date(request.now.value)
    start, end = _day(q, "start", today), _day(q, "end", today)
    if start > end:
        raise _error(422, 42210000, "end must not be before start")
    limit = parse_limit(q.get("limit"), DEFAULT_LIMIT, MAX_LIMIT)
    sort = q.get("sort", "asc")
    if sort not in ("asc", "desc"):
        raise _error(422, 42210000, f"invalid sort: {sort!r} (use asc or desc)")

    rows: list[tuple[date, str, str, dict]] = []  # (process_date, id, type, row)
    for asked in symbols:
        symbol = data_symbol(asked)
        if symbol is None:
            continue
        if {"forward_split", "reverse_split"} & set(types):
            for split in registry.splits(symbol, *_EVER, known_on=today):
                kind = "forward_split" if split.fraction > 1 else "reverse_split"
                if kind in types and start <= split.booked <= end:
                    rows.append((split.booked, split.id, kind, _split_row(asked, split, kind)))
        if "cash_dividend" in types:
            # Default dividends are generated per window: the ex-dates whose payable date can fall in it.
            for dividend in registry.dividends(symbol, date.fromordinal(start.toordinal() - 30), end, known_on=today):
                if start <= dividend.payable <= end:
                    rows.append((dividend.payable, dividend.id, "cash_dividend", _dividend_row(asked, dividend)))
    rows.sort(key=lambda r: (r[0], r[1]), reverse=sort == "desc")
    if q.get("page_token"):
        after = _decode(q["page_token"])
        rows = [r for r in rows if ((r[0].isoformat(), r[1]) < after if sort == "desc" else (r[0].isoformat(), r[1]) > after)]
    page, rest = rows[:limit], rows[limit:]
    body: dict[str, list] = {}
    for _, _, kind, row in page:
        body.setdefault(f"{kind}s", []).append(row)
    token = _encode(page[-1][0], page[-1][1]) if rest else None
    return {"corporate_actions": body, "next_page_token": token}


def _split_row(symbol: str, split, kind: str) -> dict:
    ratio = split.fraction
    row = {
        "id": split.id,
        "symbol": symbol,
        "new_rate": ratio.numerator,
        "old_rate": ratio.denominator,
        "process_date": split.booked.isoformat(),
        "ex_date": split.ex_date.isoformat(),
        "record_date": split.ex_date.isoformat(),
        "payable_date": split.ex_date.isoformat(),
    }
    if kind == "forward_split":
        row["cusip"] = "000000000"
    else:
        row["old_cusip"], row["new_cusip"] = "000000000", "000000001"
    return row


def _dividend_row(symbol: str, dividend) -> dict:
    return {
        "id": dividend.id,
        "symbol": symbol,
        "cusip": "000000000",
        "rate": dividend.amount,
        "special": False,
        "foreign": False,
        "process_date": dividend.payable.isoformat(),
        "ex_date": dividend.ex_date.isoformat(),
        "record_date": dividend.ex_date.isoformat(),
        "payable_date": dividend.payable.isoformat(),
    }


def _day(q, name: str, default: date) -> date:
    value = q.get(name)
    if not value:
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _error(422, 42210000, f"Invalid format for parameter {name}: error parsing {value!r} as 2006-01-02") from None


def parse_limit(value: str | None, default: int, maximum: int) -> int:
    """Alpaca's `limit` parameter, as both endpoints check it (their default and maximum differ)."""
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except ValueError:
        raise _error(422, 42210000, f"invalid limit: {value!r}") from None
    if not 1 <= limit <= maximum:
        raise _error(422, 42210000, f"invalid limit: {limit} (must be between 1 and {maximum})")
    return limit


def _encode(process_date: date, action_id: str) -> str:
    return base64.b64encode(f"{process_date.isoformat()}|{action_id}".encode()).decode()


def _decode(token: str) -> tuple[str, str]:
    try:
        process_date, action_id = base64.b64decode(token, validate=True).decode().split("|")
        return process_date, action_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _error(422, 42210000, "invalid page token") from None

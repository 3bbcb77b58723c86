"""Fake Massive (Polygon) `/stocks/v1/splits` and `/stocks/v1/dividends`, from the fakes' registry (fakes/actions.py); auth as the aggregates.

- Filters: `ticker`, `ticker.any_of` (comma list), and the date with `.gte/.gt/.lte/.lt`
  (`execution_date` for splits, `ex_dividend_date` for dividends); splits also `adjustment_type`
  (`.any_of`: forward_split, reverse_split, stock_dividend).
- `sort`: a comma list of `column.asc|desc`, default the date **descending**; `limit` default 100,
  at most 5000. A page that stops short carries `next_url` (this host, `cursor` = base64url of the
  query and the offset; never the key).
- Rows: splits `{id, ticker, execution_date, split_from, split_to, adjustment_type,
  historical_adjustment_factor}` with floats; dividends `{id, ticker, cash_amount, currency,
  declaration_date, distribution_type, ex_dividend_date, frequency, pay_date, record_date,
  split_adjusted_cash_amount, historical_adjustment_factor}`. Envelope `{results, status, request_id}`.
- Only actions announced by today are listed. Splits without a ticker filter list every symbol with
  a split; dividends need a ticker filter here (the default dividends exist for any symbol).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from datetime import date
from fractions import Fraction
from urllib.parse import urlencode

from backfill_dagster.fakes.actions import CorporateActions
from backfill_dagster.fakes.base import BadRequest, Request, json_response
from backfill_dagster.fakes.data import ny_date

DEFAULT_LIMIT = 100
MAX_LIMIT = 5000
ADJUSTMENT_TYPES = ("forward_split", "reverse_split", "stock_dividend")
_EVER = (date(1990, 1, 1), date(2100, 1, 1))
_OPS = {"gte": lambda a, b: a >= b, "gt": lambda a, b: a > b, "lte": lambda a, b: a <= b, "lt": lambda a, b: a < b}


def _error(status: int, message: str) -> BadRequest:
    return BadRequest(json_response(status, {"status": "ERROR", "request_id": uuid.uuid4().hex, "error": message}))


def splits(request: Request, registry: CorporateActions, data_symbol: Callable[[str], str | None]) -> dict:
    query = _query(request)
    today = ny_date(request.now.value)
    tickers = _tickers(query) or registry.split_symbols()
    types = _any_of(query, "adjustment_type", ADJUSTMENT_TYPES)
    rows = []
    for ticker in tickers:
        symbol = data_symbol(ticker)
        if symbol is None:
            continue
        listed = registry.splits(symbol, *_EVER, known_on=today)
        for split in listed:
            kind = "forward_split" if split.fraction > 1 else "reverse_split"
            if kind not in types or not _dated(query, "execution_date", split.ex_date):
                continue
            later = [s.fraction for s in listed if s.ex_date >= split.ex_date]
            rows.append({
                "id": "E" + split.id.replace("-", ""),
                "ticker": ticker,
                "execution_date": split.ex_date.isoformat(),
                "split_from": float(split.fraction.denominator),
                "split_to": float(split.fraction.numerator),
                "adjustment_type": kind,
                "historical_adjustment_factor": round(float(1 / _product(later)), 8),
            })
    return _page(request, query, rows, "execution_date")


def dividends(request: Request, registry: CorporateActions, data_symbol: Callable[[str], str | None]) -> dict:
    query = _query(request)
    today = ny_date(request.now.value)
    tickers = _tickers(query)
    if not tickers:
        raise _error(400, "the fake needs ticker or ticker.any_of (the real API lists every ticker without them)")
    rows = []
    for ticker in tickers:
        symbol = data_symbol(ticker)
        if symbol is None:
            continue
        first, last = _bounds(query, "ex_dividend_date")
        for dividend in registry.dividends(symbol, first, last, known_on=today):
            if not _dated(query, "ex_dividend_date", dividend.ex_date):
                continue
            later = [s.fraction for s in registry.splits(symbol, dividend.ex_date, _EVER[1], known_on=today)
                     if s.ex_date > dividend.ex_date]
            rows.append({
                "id": "E" + dividend.id.replace("-", ""),
                "ticker": ticker,
                "cash_amount": dividend.amount,
                "currency": "USD",
                "declaration_date": dividend.announced.isoformat(),
                "distribution_type": "recurring",
                "ex_dividend_date": dividend.ex_date.isoformat(),
                "frequency": 4,
                "pay_date": dividend.payable.isoformat(),
                "record_date": dividend.ex_date.isoformat(),
                "split_adjusted_cash_amount": round(dividend.amount / float(_product(later)), 6),
                "historical_adjustment_factor": 1.0,
            })
    return _page(request, query, rows, "ex_dividend_date")


# ---------------------------------------------------------------------------- parameters
def _query(request: Request) -> dict[str, str]:
    """The request's parameters, or those a `next_url` cursor carries (with the offset reached)."""
    cursor = request.query.get("cursor")
    if not cursor:
        return dict(request.query)
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _error(400, "invalid cursor") from None


def _tickers(query: dict) -> list[str]:
    listed = [t.strip() for t in query.get("ticker.any_of", "").split(",") if t.strip()]
    if query.get("ticker"):
        listed.append(query["ticker"].strip())
    return list(dict.fromkeys(listed))


def _any_of(query: dict, name: str, allowed: tuple[str, ...]) -> set[str]:
    values = [v.strip() for v in query.get(f"{name}.any_of", query.get(name, "")).split(",") if v.strip()]
    bad = [v for v in values if v not in allowed]
    if bad:
        raise _error(400, f"{name} {', '.join(bad)} is not one of {', '.join(allowed)}")
    return set(values) or set(allowed)


def _date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _error(400, f"{name} {value!r} is not YYYY-MM-DD") from None


def _dated(query: dict, column: str, day: date) -> bool:
    if query.get(column) and _date(query[column], column) != day:
        return False
    for op, test in _OPS.items():
        bound = query.get(f"{column}.{op}")
        if bound and not test(day, _date(bound, f"{column}.{op}")):
            return False
    return True


def _bounds(query: dict, column: str) -> tuple[date, date]:
    """The widest ex-date window the filters allow (the registry generates dividends per window)."""
    first, last = _EVER
    for op in ("gte", "gt"):
        if query.get(f"{column}.{op}"):
            first = max(first, _date(query[f"{column}.{op}"], column))
    for op in ("lte", "lt"):
        if query.get(f"{column}.{op}"):
            last = min(last, _date(query[f"{column}.{op}"], column))
    if query.get(column):
        first = last = _date(query[column], column)
    return first, last


def _page(request: Request, query: dict, rows: list[dict], date_column: str) -> dict:
    for column, descending in reversed(_sort(query.get("sort", f"{date_column}.desc"), {date_column, "ticker"})):
        rows.sort(key=lambda r: r[column], reverse=descending)
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
        offset = int(query.get("offset", 0))
    except ValueError:
        raise _error(400, f"limit {query.get('limit')!r} is not a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise _error(400, f"limit must be between 1 and {MAX_LIMIT}")
    page = rows[offset : offset + limit]
    body: dict = {"results": page, "status": "OK", "request_id": uuid.uuid4().hex}
    if offset + limit < len(rows):
        carried = {k: v for k, v in query.items() if k not in ("cursor", "apiKey")} | {"offset": str(offset + limit)}
        cursor = base64.urlsafe_b64encode(json.dumps(carried).encode()).decode().rstrip("=")
        body["next_url"] = f"{request.base_url}{request.path}?{urlencode({'cursor': cursor})}"
    return body


def _sort(text: str, columns: set[str]) -> list[tuple[str, bool]]:
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        column, _, direction = part.partition(".")
        if column not in columns or direction not in ("asc", "desc", ""):
            raise _error(400, f"sort {part!r}: use one of {', '.join(sorted(columns))} with .asc or .desc")
        out.append((column, direction == "desc"))
    return out


def _product(ratios: list[Fraction]) -> Fraction:
    out = Fraction(1)
    for r in ratios:
        out *= r
    return out

"""Yahoo chart `events`: the splits and cash dividends of one symbol a request, no key.

`GET /v8/finance/chart/{symbol}?interval=1d&period1=&period2=&events=div,splits`
(the chart endpoint's events). Quirks handled here:
- Events come only for the window asked, under `chart.result[0].events.splits` / `.dividends`, each
  an object keyed by the event's time in Unix seconds (the ex-date's regular open), absent when
  there are none. The ex-date is the New York date of that time.
- A split is `numerator` new shares for `denominator` old ones (4:1 -> 4 and 1), numbers that may
  be floats; `splitRatio` ("4:1") repeats them.
- The answer carries the window's daily bars too (the price of one call): they are not read here.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK
from backfill_dagster.domain.corporate_actions import ActionError, ActionRecord, dividend_record, split_record
from backfill_dagster.domain.symbols import store_symbol
from backfill_dagster.providers.payload import PayloadError, expect_list, expect_mapping, required_field

EVENTS = "div,splits"


def parse_events(payload: Any, symbol: str) -> list[ActionRecord]:
    """The splits and dividends of a chart answer, for `symbol` (the store's spelling), or for the
    symbol `meta.symbol` names if it says."""
    chart = expect_mapping(expect_mapping(payload, "yahoo chart").get("chart"), "yahoo 'chart'")
    if chart.get("error"):
        error = chart["error"]
        detail = error.get("description") or error.get("code") if isinstance(error, dict) else error
        raise PayloadError(f"yahoo chart.error: {detail}")
    results = chart.get("result")
    if results is None:
        raise PayloadError("yahoo chart: neither 'result' nor 'error' is set")
    if not expect_list(results, "yahoo chart.result"):
        return []
    result = expect_mapping(results[0], "yahoo chart.result[0]")
    answered = (result.get("meta") or {}).get("symbol")
    if isinstance(answered, str) and answered:
        symbol = store_symbol(answered, "yahoo")
    events = result.get("events") or {}
    events = expect_mapping(events, "yahoo chart.result[0].events")
    out = []
    for key, row in expect_mapping(events.get("splits") or {}, "yahoo events.splits").items():
        where = f"yahoo events.splits[{key!r}]"
        row = expect_mapping(row, where)
        try:
            out.append(split_record(symbol, _ex_date(row, key, where), "yahoo",
                                    required_field(row, "denominator", where), required_field(row, "numerator", where)))
        except ActionError as exc:
            raise PayloadError(f"{where}: {exc}") from None
    for key, row in expect_mapping(events.get("dividends") or {}, "yahoo events.dividends").items():
        where = f"yahoo events.dividends[{key!r}]"
        row = expect_mapping(row, where)
        try:
            out.append(dividend_record(symbol, _ex_date(row, key, where), "yahoo", required_field(row, "amount", where)))
        except ActionError as exc:
            raise PayloadError(f"{where}: {exc}") from None
    return sorted(out, key=lambda r: (r.ex_date, r.kind))


def _ex_date(row, key: str, where: str) -> date:
    stamp = row.get("date", key)
    try:
        seconds = int(stamp)
    except (TypeError, ValueError):
        raise PayloadError(f"{where}: 'date' = {stamp!r} is not Unix seconds") from None
    return pd.Timestamp(seconds, unit="s", tz="UTC").tz_convert(NEW_YORK).date()

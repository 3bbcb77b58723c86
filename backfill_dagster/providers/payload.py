"""What every provider parser shares: shape checks that name the field, records to bars, clipping.

Parsers are pure functions from a decoded JSON payload to a bar frame. A payload whose shape is not
what the API documents raises `PayloadError` naming the path of the bad field (``bars['AAPL'][3].o``);
nothing is silently dropped. What a provider legitimately leaves out (a no-trade interval) is
handled by the parser that knows the quirk, not here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from backfill_dagster.domain.bars import bars_frame, empty_bars
from backfill_dagster.domain.calendar import NEW_YORK, SessionCalendar
from backfill_dagster.domain.symbols import store_symbol
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers.base import FetchRequest

# An RFC 3339 timestamp must say its offset; a naive one would be silently read as UTC.
_RFC3339_OFFSET = r"(?:[Zz]|[+-]\d{2}:?\d{2})$"


class PayloadError(ValueError):
    """A response body whose shape is not what the provider documents."""


def expect_mapping(value: Any, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise PayloadError(f"{where}: expected an object, got {_kind(value)}")
    return value


def required_field(row: Mapping, name: str, where: str) -> Any:
    """A record's field that must be there and not null."""
    if row.get(name) is None:
        raise PayloadError(f"{where}: field {name!r} is missing or null")
    return row[name]


def page_cursor(payload: Any, field: str, where: str) -> str | None:
    """A page's cursor to the next one (Alpaca's `next_page_token`, Polygon's `next_url`), None on
    the last page; anything but a string is a malformed page."""
    cursor = expect_mapping(payload, where).get(field)
    if cursor is None or cursor == "":
        return None
    if not isinstance(cursor, str):
        raise PayloadError(f"{where}: {field!r} must be a string, got {cursor!r}")
    return cursor


def action_identity(row: Mapping, where: str, provider: str, symbol_field: str,
                    date_field: str) -> tuple[str, date, str | None]:
    """A corporate action's symbol (in the store's spelling), ex-date and the provider's id."""
    symbol = required_field(row, symbol_field, where)
    if not isinstance(symbol, str) or not symbol:
        raise PayloadError(f"{where}: field {symbol_field!r} = {symbol!r} is not a ticker")
    raw = required_field(row, date_field, where)
    try:
        ex_date = date.fromisoformat(str(raw))
    except ValueError:
        raise PayloadError(f"{where}: field {date_field!r} = {raw!r} is not a date") from None
    action_id = row.get("id")
    return store_symbol(symbol, provider), ex_date, None if action_id is None else str(action_id)


def expect_list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise PayloadError(f"{where}: expected a list, got {_kind(value)}")
    return value


def one_or_many(value: Any, where: str) -> list:
    """XML-born JSON (Tradier): a list, a bare object for one item, or null/"null" for none."""
    if value is None or value == "null":
        return []
    if isinstance(value, Mapping):
        return [value]
    return expect_list(value, where)


def records_to_bars(
    records: Sequence[Any],
    *,
    symbol: str,
    where: str,
    fields: Mapping[str, str],
    time_field: str,
    time_unit: str,
    required: Collection[str] = ("open", "high", "low", "close", "volume"),
) -> pd.DataFrame:
    """A bar frame from a list of bar objects.

    `fields` maps bar columns to the payload's keys (e.g. {"open": "o"}); `required` lists the bar
    columns that must be present and non-null in every record. `time_unit` is "s" or "ms" for epoch
    numbers, "rfc3339" for strings with an offset, or "date" for 'YYYY-MM-DD' session dates (the bar
    is labelled 00:00 New York of that date, like every d1 bar in the store).
    """
    expect_list(records, where)
    if not records:
        return empty_bars()
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise PayloadError(f"{where}[{i}]: expected a bar object, got {_kind(record)}")
    raw = pd.DataFrame.from_records(records)
    data: dict[str, Any] = {"symbol": symbol}
    data["ts"] = _timestamps(raw, time_field, time_unit, where)
    for column, key in fields.items():
        if key not in raw.columns:
            if column in required:
                raise PayloadError(f"{where}[0]: field {key!r} ({column}) is missing")
            continue
        values = raw[key]
        missing = values.isna().to_numpy()
        if column in required and missing.any():
            i = int(np.argmax(missing))
            raise PayloadError(f"{where}[{i}]: field {key!r} ({column}) is missing or null")
        data[column] = _numbers(values, missing, f"{where}", key)
    return bars_frame(data)


def _timestamps(raw: pd.DataFrame, key: str, unit: str, where: str) -> pd.Series:
    if key not in raw.columns:
        raise PayloadError(f"{where}[0]: field {key!r} (bar start) is missing")
    values = raw[key]
    missing = values.isna().to_numpy()
    if missing.any():
        raise PayloadError(f"{where}[{int(np.argmax(missing))}]: field {key!r} (bar start) is missing or null")
    if unit in ("s", "ms"):
        numbers = _numbers(values, missing, where, key)
        return pd.Series(pd.to_datetime(numbers.astype("int64"), unit=unit, utc=True))
    text = values.astype(str)
    if unit == "rfc3339":
        naive = ~text.str.contains(_RFC3339_OFFSET, regex=True).to_numpy()
        if naive.any():
            i = int(np.argmax(naive))
            raise PayloadError(f"{where}[{i}]: field {key!r} = {text.iloc[i]!r} has no UTC offset")
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    elif unit == "date":
        days = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
        parsed = days.dt.tz_localize(NEW_YORK).dt.tz_convert("UTC")
    else:  # pragma: no cover - a programming error, not a payload error
        raise ValueError(f"unknown time unit {unit!r}")
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise PayloadError(f"{where}[{i}]: field {key!r} = {text.iloc[i]!r} is not a valid time")
    return parsed


def _numbers(values: pd.Series, missing: np.ndarray, where: str, key: str) -> pd.Series:
    """Numeric values; a string or a bool where a number belongs is an error, not NaN."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        wrong = values.map(lambda v: isinstance(v, (str, bool, np.bool_))).to_numpy(dtype=bool) & ~missing
        if wrong.any():
            i = int(np.argmax(wrong))
            raise PayloadError(f"{where}[{i}]: field {key!r} = {values.iloc[i]!r} is not a number")
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna().to_numpy() & ~missing
    if bad.any():
        i = int(np.argmax(bad))
        raise PayloadError(f"{where}[{i}]: field {key!r} = {values.iloc[i]!r} is not a number")
    return numbers


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"


def concat_bars(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return empty_bars()
    return bars_frame(pd.concat(frames, ignore_index=True))


def keep_requested(
    bars: pd.DataFrame, request: FetchRequest, complete_through: pd.Timestamp, calendar: SessionCalendar
) -> pd.DataFrame:
    """The bars of the request's sessions inside its [start, end) that are final by
    `complete_through`, and every bar that is not on a requested session at all.

    Providers answer with more than asked: a symbol range snapped to whole buckets, the bar at an
    inclusive `end`, the live row of a bar still forming, pre- and post-market bars of the sessions
    asked for. Those are dropped. `complete_through` is the instant the answer is final up to (the
    provider's clock read before the request, less its data delay): an m15 bar is kept once its 15
    minutes are over by then; a d1 bar once its session's regular close has passed (a bar on a day
    that is not a session is kept, for validation to reject). A bar dated outside the requested
    sessions (an answer for other dates, epoch seconds sent where milliseconds are documented) is
    not "more than asked" but a wrong answer, and bars of a symbol that was not requested too: both
    are kept, so validation rejects them with the reason (into rejected_bars) and the partitions
    fail instead of passing for sessions without bars.
    """
    if bars.empty:
        return bars
    ts = bars["ts"]
    days = ts.dt.tz_convert(NEW_YORK).dt.date
    elsewhere = ~days.isin(list(request.sessions))
    keep = (ts >= request.start) & (ts < request.end)
    if request.timeframe is Timeframe.D1:
        closes = {d: calendar.close(d) if calendar.is_session(d) else None for d in days[keep].unique()}
        unfinished = days.map(lambda d: closes.get(d) is not None and closes[d] > complete_through)
        keep &= ~unfinished.astype(bool)
    else:
        keep &= ts + request.timeframe.period <= complete_through
    return bars.loc[keep | elsewhere].reset_index(drop=True)

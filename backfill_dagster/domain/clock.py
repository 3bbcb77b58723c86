"""Time as the project reads it: an injectable clock and timezone-aware UTC timestamps.

Every timestamp is timezone-aware and kept in UTC (a naive one is refused, never taken as UTC);
sessions are reasoned about in New York time by the calendar.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

Clock = Callable[[], pd.Timestamp]  # now, in UTC; tests pass a fixed one


def utcnow() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


def as_utc(value) -> pd.Timestamp:
    """`value` as a UTC timestamp; a naive time is refused."""
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        raise ValueError(f"naive timestamp {ts!s}: pass a timezone-aware time")
    return ts.tz_convert("UTC")

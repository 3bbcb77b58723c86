"""The bar frame: its columns, and the validation every bar passes before it may be stored.

A bar frame is a pandas DataFrame with one row per bar:

    symbol, ts (bar start, datetime64[ns, UTC]), open, high, low, close, volume,
    vwap (optional), trade_count (optional)

Providers' parsers produce it, the resampler consumes and produces it, the store writes it.
Validation is pure and vectorised: it never drops a bar silently, it splits a frame into the bars
that may be stored (with their session) and the rejected ones (with the reason), plus the bars
that are valid but outside the configured hours (pre/post-market when extended hours are off).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from backfill_dagster.domain.calendar import SessionCalendar, epoch_ns
from backfill_dagster.domain.timeframes import Timeframe

PRICE_COLUMNS = ("open", "high", "low", "close")
BAR_COLUMNS = ("symbol", "ts", *PRICE_COLUMNS, "volume", "vwap", "trade_count")


def empty_bars() -> pd.DataFrame:
    return bars_frame({c: [] for c in BAR_COLUMNS})


def bars_frame(data: pd.DataFrame | dict) -> pd.DataFrame:
    """Coerce columns to the bar frame's dtypes (missing optional columns become NA)."""
    if isinstance(data, pd.DataFrame) and _is_bar_frame(data):
        return data[list(BAR_COLUMNS)].reset_index(drop=True)
    frame = pd.DataFrame(data).copy()
    missing = [c for c in ("symbol", "ts", *PRICE_COLUMNS, "volume") if c not in frame.columns]
    if missing:
        raise ValueError(f"bar frame is missing columns: {', '.join(missing)}")
    out = pd.DataFrame(index=frame.index)
    out["symbol"] = frame["symbol"].astype(object)
    out["ts"] = _utc_column(frame["ts"])
    for column in (*PRICE_COLUMNS, "volume", "vwap"):
        values = frame[column] if column in frame.columns else pd.Series(np.nan, index=frame.index)
        out[column] = pd.to_numeric(values, errors="coerce").astype("float64")
    counts = frame["trade_count"] if "trade_count" in frame.columns else pd.Series(np.nan, index=frame.index)
    out["trade_count"] = pd.to_numeric(counts, errors="coerce").round().astype("Int64")
    return out.reset_index(drop=True)


_DTYPES = {c: "float64" for c in (*PRICE_COLUMNS, "volume", "vwap")} | {"trade_count": "Int64", "symbol": "object"}


def _is_bar_frame(frame: pd.DataFrame) -> bool:
    """Already coerced (the common case inside the pipeline): skip the conversions."""
    if any(c not in frame.columns for c in BAR_COLUMNS):
        return False
    if str(frame["ts"].dtype) != "datetime64[ns, UTC]":
        return False
    return all(str(frame[c].dtype) == dtype for c, dtype in _DTYPES.items())


def _utc_column(values: pd.Series) -> pd.Series:
    ts = pd.to_datetime(values, utc=False, errors="coerce")
    if getattr(ts.dt, "tz", None) is None:
        if ts.notna().any():
            # alpaca-py's documented foot-gun: naive times silently taken as UTC. Refuse them.
            raise ValueError("bar timestamps must be timezone-aware (got naive datetimes)")
        ts = ts.dt.tz_localize("UTC")
    return ts.dt.tz_convert("UTC").dt.as_unit("ns")


@dataclass(frozen=True)
class Validation:
    """The outcome of validating a bar frame."""

    valid: pd.DataFrame  # bar columns + session
    rejected: pd.DataFrame  # bar columns + session + reason
    outside_hours: int  # valid bars dropped because they fall outside the configured hours

    def with_rejected(self, more: pd.DataFrame) -> Validation:
        """This validation with rows rejected before validation added (bar columns + session +
        reason): the bars of their partitions are no longer valid either."""
        rejected = pd.concat([self.rejected, more[list(self.rejected.columns)]], ignore_index=True) \
            if len(self.rejected) else more[[*BAR_COLUMNS, "session", "reason"]].reset_index(drop=True)
        return Validation(valid=self.valid, rejected=rejected, outside_hours=self.outside_hours)

    @property
    def rejected_partitions(self) -> set[tuple[str, object]]:
        """(symbol, session) pairs with at least one rejected bar."""
        rows = self.rejected.dropna(subset=["session"])
        return set(zip(rows["symbol"], rows["session"]))


# Validation rules, one bit each, in the order their reasons are reported.
_RULES = (
    "symbol was not requested",
    "missing or unparseable timestamp",
    *(f"{c} is missing or NaN" for c in (*PRICE_COLUMNS, "volume")),
    *(f"{c} is infinite" for c in (*PRICE_COLUMNS, "volume")),
    *(f"{c} is not positive" for c in PRICE_COLUMNS),
    "volume is negative",
    "high is below low",
    "high is below open or close",
    "low is above open or close",
    "vwap is not positive",
    "trade_count is negative",
    "not on an NYSE session day",
    "outside the session's trading hours",
    "not on the {timeframe} bar grid",
    "not in the requested sessions",
    "starts in the future",
    "more than one bar for this symbol and start",
)
_BIT = {text: np.uint64(1) << np.uint64(i) for i, text in enumerate(_RULES)}


def validate_bars(
    frame: pd.DataFrame,
    timeframe: Timeframe,
    calendar: SessionCalendar,
    *,
    symbols: Collection[str] | None = None,
    sessions: Collection[date] | None = None,
    extended: bool = False,
    now: pd.Timestamp | None = None,
) -> Validation:
    """Split bars into valid and rejected ones, each rejection with every reason that applies.

    Rules: expected symbol; a timestamp; no NaN; positive prices; non-negative volume;
    high/low bound open and close; inside a session's hours (extended hours at most); on the
    timeframe's session-anchored grid; on a requested session (`sessions`: an answer for other
    dates, or in another time unit, is bad input, never "no bars"); not starting in the future; one
    bar per symbol and start.
    Each rule is one bit of a mask computed with numpy over the whole frame; reason strings are
    built only for the rejected rows.
    """
    bars = bars_frame(frame)
    n = len(bars)
    mask = np.zeros(n, dtype=np.uint64)

    def flag(condition, text) -> None:
        mask[np.asarray(condition, dtype=bool)] |= _BIT[text]

    col = {c: bars[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in (*PRICE_COLUMNS, "volume", "vwap")}
    trades = bars["trade_count"].to_numpy(dtype=np.float64, na_value=np.nan)
    symbol_codes, symbol_values = pd.factorize(bars["symbol"])
    if symbols is not None:
        allowed = np.isin(np.asarray(symbol_values, dtype=object), list(symbols))
        flag(~allowed[symbol_codes] if n else np.zeros(0, bool), "symbol was not requested")
    t = epoch_ns(bars["ts"])
    missing_ts = t == np.iinfo(np.int64).min
    flag(missing_ts, "missing or unparseable timestamp")
    with np.errstate(invalid="ignore"):
        for c in (*PRICE_COLUMNS, "volume"):
            flag(np.isnan(col[c]), f"{c} is missing or NaN")
            flag(np.isinf(col[c]), f"{c} is infinite")
        for c in PRICE_COLUMNS:
            flag(col[c] <= 0, f"{c} is not positive")
        flag(col["volume"] < 0, "volume is negative")
        flag(col["high"] < col["low"], "high is below low")
        flag(col["high"] < np.maximum(col["open"], col["close"]), "high is below open or close")
        flag(col["low"] > np.minimum(col["open"], col["close"]), "low is above open or close")
        flag(col["vwap"] <= 0, "vwap is not positive")
        flag(trades < 0, "trade_count is negative")

    # The widest hours a bar may have are those providers serve, 04:00-20:00 on every session (a
    # half day's post-market too); bars inside them but outside the kept hours are dropped and
    # counted, never errors: a multi-day request returns them for every session it spans.
    pos, inside_widest, bucket = calendar.locate_ns(t, timeframe, served=True)
    known = pos >= 0
    flag(~missing_ts & ~known, "not on an NYSE session day")
    flag(known & ~inside_widest, "outside the session's trading hours")
    flag(inside_widest & (bucket != t), "not on the {timeframe} bar grid")
    bars["session"] = calendar.session_dates(pos)
    if sessions is not None:
        requested = bars["session"].isin(list(sessions)).to_numpy(dtype=bool)
        flag(~missing_ts & ~requested, "not in the requested sessions")
    if now is not None:
        flag(~missing_ts & (t > pd.Timestamp(now).value), "starts in the future")
    if n:
        order = np.lexsort((t, symbol_codes))
        same = (np.diff(symbol_codes[order]) == 0) & (np.diff(t[order]) == 0) & ~missing_ts[order][1:]
        dup = np.zeros(n, dtype=bool)
        dup[order[1:][same]] = True
        dup[order[:-1][same]] = True
        flag(dup, "more than one bar for this symbol and start")

    bad = mask != 0
    rejected = bars.loc[bad].copy()
    rejected["reason"] = [_reasons(m, timeframe) for m in mask[bad]]
    in_hours = calendar.locate_ns(t, timeframe, extended=extended)[1]
    keep = ~bad & in_hours
    return Validation(
        valid=bars.loc[keep].reset_index(drop=True),
        rejected=rejected.reset_index(drop=True),
        outside_hours=int((~bad & ~in_hours).sum()),
    )


def _reasons(bits: np.uint64, timeframe: Timeframe) -> str:
    return "; ".join(
        text.format(timeframe=timeframe.value) for text in _RULES if bits & _BIT[text]
    )

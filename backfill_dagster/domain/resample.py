"""Derive h1 and h4 bars from m15 bars on the session-anchored grid (pure, vectorised).

The bucket of every m15 bar comes from the calendar (`SessionCalendar.locate`): its session's
segment start plus whole periods, so buckets stay at 09:30/10:30/... and 09:30/13:30 on both sides of
a DST change and end at an early close. A fixed multi-hour pandas offset on a tz-aware index would
drift an hour after the autumn change; this never asks pandas to resample at all.

Aggregation: open = first, high = max, low = min, close = last, volume = sum, vwap =
volume-weighted mean of the m15 vwaps (missing if any m15 bar lacks one or the volume is zero),
trade_count = sum (missing if any is missing). A bucket with no m15 bars yields no bar (no trades
is not a hole); a partly filled bucket yields a bar from the bars it has.

One sort and a handful of numpy reductions over all symbols and sessions at once: no Python loop
per session or per bucket.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from backfill_dagster.domain.bars import bars_frame, empty_bars
from backfill_dagster.domain.calendar import SessionCalendar, epoch_ns
from backfill_dagster.domain.timeframes import Timeframe


class ResampleError(ValueError):
    """Input bars that cannot be resampled (not m15, or outside any session)."""


def resample_bars(
    m15: pd.DataFrame,
    timeframe: Timeframe,
    calendar: SessionCalendar,
    *,
    extended: bool = False,
) -> pd.DataFrame:
    """h1 or h4 bars (a bar frame, sorted by symbol and ts) from m15 bars of any symbols."""
    timeframe = Timeframe.parse(timeframe)
    if timeframe.source is not Timeframe.M15:
        raise ResampleError(f"{timeframe.value} is not derived from m15; only h1 and h4 are")
    if m15.empty:
        return empty_bars()
    bars = bars_frame(m15)
    where = calendar.locate(bars["ts"], timeframe, extended=extended)
    outside = ~where["inside"].to_numpy()
    if outside.any():
        first = bars.loc[outside, "ts"].iloc[0]
        raise ResampleError(
            f"{int(outside.sum())} m15 bar(s) lie outside the session hours, e.g. {first}; "
            "validate bars before resampling"
        )

    codes, symbols = pd.factorize(bars["symbol"], sort=True)
    bucket = epoch_ns(where["bucket"])
    ts = epoch_ns(bars["ts"])
    order = np.lexsort((ts, codes))
    codes, bucket = codes[order], bucket[order]
    if np.any((np.diff(codes) == 0) & (np.diff(ts[order]) == 0)):
        raise ResampleError("duplicate m15 bars (same symbol and start): validate bars first")

    change = np.ones(len(order), dtype=bool)
    change[1:] = (codes[1:] != codes[:-1]) | (bucket[1:] != bucket[:-1])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(order)) - 1

    def col(name: str) -> np.ndarray:
        return bars[name].to_numpy(dtype=float, na_value=np.nan)[order]

    high, low, volume = col("high"), col("low"), col("volume")
    vwap, trades = col("vwap"), col("trade_count")
    volume_sum = np.add.reduceat(volume, starts)
    weighted = np.add.reduceat(vwap * volume, starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap_out = np.where(volume_sum > 0, weighted / volume_sum, np.nan)

    return bars_frame(
        {
            "symbol": symbols.to_numpy()[codes[starts]],
            "ts": pd.DatetimeIndex(bucket[starts].astype("datetime64[ns]")).tz_localize("UTC"),
            "open": col("open")[starts],
            "high": np.maximum.reduceat(high, starts),
            "low": np.minimum.reduceat(low, starts),
            "close": col("close")[ends],
            "volume": volume_sum,
            "vwap": vwap_out,
            "trade_count": np.add.reduceat(trades, starts),
        }
    )

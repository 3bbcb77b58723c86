"""Resampling benchmark: the project's vectorised resampler vs a per-session groupby loop.

    python bench/resample.py [--symbols 100] [--sessions 400]

Both turn the same m15 bars (default 100 symbols x 400 sessions = 1,040,000 bars, the demo
provider's data) into h1 and h4 bars, in the same run, and must produce identical bars. The
baseline is the straightforward version: for each symbol and session, bucket the bars from the
session's open and `groupby(...).agg(...)`. Prints seconds, bars/s and the speed-up (target: >= 20x
and under 1 s for the project's resampler on >= 1M bars).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.resample import resample_bars
from backfill_dagster.domain.synthetic import synthetic_session_m15
from backfill_dagster.domain.timeframes import Timeframe


def build_frame(symbols, sessions, calendar) -> pd.DataFrame:
    frames = []
    for symbol in symbols:
        for day in sessions:
            bars = synthetic_session_m15(symbol, day, calendar)
            lo, hi = calendar.window(day)
            frames.append(bars[(bars.ts >= lo) & (bars.ts < hi)])
    return pd.concat(frames, ignore_index=True)


def per_session_loop(m15: pd.DataFrame, timeframe: Timeframe, calendar) -> pd.DataFrame:
    """The baseline: one groupby per symbol and session, buckets counted from the open."""
    period = timeframe.period
    out = []
    m15 = m15.sort_values(["symbol", "ts"], kind="stable")
    days = m15["ts"].dt.tz_convert("America/New_York").dt.date
    for (symbol, day), bars in m15.groupby([m15["symbol"], days], sort=True):
        opened = calendar.open(day)
        bucket = opened + ((bars["ts"] - opened) // period) * period
        weighted = bars["vwap"] * bars["volume"]
        agg = bars.assign(bucket=bucket, weighted=weighted).groupby("bucket").agg(
            open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"),
            volume=("volume", "sum"), weighted=("weighted", "sum"), trade_count=("trade_count", "sum"),
        )
        agg["vwap"] = agg["weighted"] / agg["volume"]
        agg["symbol"] = symbol
        out.append(agg.drop(columns="weighted").reset_index().rename(columns={"bucket": "ts"}))
    return pd.concat(out, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--timeframes", default="h1,h4", help="comma list (the baseline takes minutes each)")
    args = parser.parse_args()

    calendar = xnys()
    sessions = calendar.sessions("2023-01-01", "2026-12-31")[: args.sessions]
    m15 = build_frame([f"S{i:03d}" for i in range(args.symbols)], sessions, calendar)
    m15 = m15.sample(frac=1.0, random_state=7).reset_index(drop=True)  # no help from input order
    n = len(m15)
    print(f"m15 bars: {n:,} ({args.symbols} symbols x {len(sessions)} sessions)")

    print(f"{'timeframe':<10} {'method':<22} {'seconds':>8} {'m15 bars/s':>14}")
    for timeframe in [Timeframe.parse(t) for t in args.timeframes.split(",")]:
        resample_bars(m15.iloc[:1000], timeframe, calendar)  # warm-up (imports, caches)
        start = time.perf_counter()
        fast = resample_bars(m15, timeframe, calendar)
        fast_s = time.perf_counter() - start
        start = time.perf_counter()
        slow = per_session_loop(m15, timeframe, calendar)
        slow_s = time.perf_counter() - start

        slow = slow.sort_values(["symbol", "ts"]).reset_index(drop=True)
        assert len(fast) == len(slow)
        assert (fast["ts"].to_numpy() == slow["ts"].to_numpy()).all()
        for column in ("open", "high", "low", "close", "volume"):
            assert np.array_equal(fast[column].to_numpy(float), slow[column].to_numpy(float)), column
        assert np.allclose(fast["vwap"].to_numpy(float), slow["vwap"].to_numpy(float), rtol=1e-12)

        print(f"{timeframe.value:<10} {'project (vectorised)':<22} {fast_s:>8.3f} {n / fast_s:>14,.0f}")
        print(f"{timeframe.value:<10} {'per-session groupby':<22} {slow_s:>8.3f} {n / slow_s:>14,.0f}")
        print(f"{timeframe.value:<10} speed-up {slow_s / fast_s:.0f}x (target >= 20x), "
              f"project {'under' if fast_s < 1 else 'OVER'} 1 s ({len(fast):,} {timeframe.value} bars)")


if __name__ == "__main__":
    main()

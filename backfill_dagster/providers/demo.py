"""The offline demo provider: synthetic but plausible bars on the real session grid.

It needs no key and no network, so the embedded default works on a fresh machine. Every session of
every symbol is generated from its own seed (symbol, session), so re-running any partition gives
identical bars, and any session can be generated without its neighbours. Bars are labelled
``demo:synthetic`` in the store: nobody should mistake them for market data.

The model: a slow deterministic price level per symbol, a random walk of m15 log returns inside the
session with a U-shaped volatility and volume profile (quieter pre- and post-market), and d1 bars
aggregated from the same m15 bars over the whole extended day, so d1 and m15 agree.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import date

import numpy as np
import pandas as pd

from backfill_dagster.bars import bars_frame, empty_bars
from backfill_dagster.calendar import SessionCalendar, epoch_ns
from backfill_dagster.providers.base import (
    Adjustment,
    Capabilities,
    FetchRequest,
    FetchResult,
    Provider,
)
from backfill_dagster.timeframes import Timeframe

def _seed(*parts: object) -> int:
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def _utcnow() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


def synthetic_values(symbol: str, session: date, t: np.ndarray, open_ns: int, close_ns: int) -> np.ndarray:
    """The synthetic m15 values (columns open, high, low, close, volume, vwap, trade_count) of one
    symbol and session at bar starts `t` (UTC ns), numpy only: the demo provider and the fake
    provider servers both serve these numbers."""
    n = len(t)
    rng = np.random.default_rng(_seed(symbol, session.isoformat()))
    sym = _seed(symbol)
    phase1, phase2 = (sym % 360) / 57.3, (sym // 360 % 360) / 57.3
    base = 20.0 + sym % 480
    day = session.toordinal()
    level = base * np.exp(0.25 * np.sin(day / 41.4 + phase1) + 0.08 * np.sin(day / 5.9 + phase2))

    regular = (t >= open_ns) & (t < close_ns)
    # U-shaped activity inside regular hours, quiet outside.
    x = np.where(regular, (t - open_ns) / max(close_ns - open_ns, 1), 0.5)
    activity = np.where(regular, 0.6 + 2.4 * (x - 0.5) ** 2 * 4, 0.15)

    first_open = level * (1 + 0.004 * rng.standard_normal())
    returns = rng.standard_normal(n) * 0.0022 * np.sqrt(activity)
    closes = first_open * np.exp(np.cumsum(returns))
    opens = np.concatenate([[first_open], closes[:-1]])
    wick = np.abs(rng.standard_normal((2, n))) * 0.0012 * np.sqrt(activity)
    opens, closes = np.round(opens, 2), np.round(closes, 2)
    highs = np.maximum(np.round(np.maximum(opens, closes) * (1 + wick[0]), 2), np.maximum(opens, closes))
    lows = np.minimum(np.round(np.minimum(opens, closes) * (1 - wick[1]), 2), np.minimum(opens, closes))
    lows = np.maximum(lows, 0.01)
    base_volume = 20_000 + (sym % 97) * 3_000
    volume = np.round(base_volume * activity * rng.lognormal(0.0, 0.35, n))
    vwap = np.round((highs + lows + closes) / 3, 4)
    trades = np.maximum(1, volume // 85)
    return np.column_stack([opens, highs, lows, closes, volume, vwap, trades]).astype(np.float64)


def synthetic_session_m15(symbol: str, session: date, calendar: SessionCalendar) -> pd.DataFrame:
    """All m15 bars of one session's extended day (04:00 to close + 4 h) for one symbol."""
    grid = calendar.expected_bars([session], Timeframe.M15, extended=True)["ts"]
    values = synthetic_values(symbol, session, epoch_ns(grid), calendar.open(session).value, calendar.close(session).value)
    columns = ("open", "high", "low", "close", "volume", "vwap", "trade_count")
    return bars_frame({"symbol": symbol, "ts": grid, **{c: values[:, i] for i, c in enumerate(columns)}})


def aggregate_day(m15: pd.DataFrame, symbol: str, label: pd.Timestamp) -> pd.DataFrame:
    """One d1 bar from a session's m15 bars."""
    if m15.empty:
        return empty_bars()
    volume = m15["volume"].sum()
    return bars_frame(
        {
            "symbol": [symbol],
            "ts": [label],
            "open": [m15["open"].iloc[0]],
            "high": [m15["high"].max()],
            "low": [m15["low"].min()],
            "close": [m15["close"].iloc[-1]],
            "volume": [volume],
            "vwap": [round(float((m15["vwap"] * m15["volume"]).sum() / volume), 4) if volume else np.nan],
            "trade_count": [int(m15["trade_count"].sum())],
        }
    )


class DemoProvider(Provider):
    """Synthetic bars for any valid symbol, any session; no network, no key."""

    name = "demo"
    capabilities = Capabilities(
        timeframes=frozenset({Timeframe.M15, Timeframe.D1}),
        adjustments=frozenset(Adjustment),
        max_symbols_per_request=1_000,
        synthetic=True,
    )

    def __init__(self, calendar: SessionCalendar, clock: Callable[[], pd.Timestamp] = _utcnow):
        self._calendar = calendar
        self._clock = clock

    @property
    def provenance(self) -> str:
        return "demo:synthetic"

    def fetch(self, request: FetchRequest) -> FetchResult:
        now = self._clock()
        frames = []
        for symbol in request.symbols:
            for session in request.sessions:
                m15 = synthetic_session_m15(symbol, session, self._calendar)
                # Only bars that have finished by now exist yet (a session in progress).
                m15 = m15[m15["ts"] + Timeframe.M15.period <= now]
                if request.timeframe is Timeframe.D1:
                    frames.append(aggregate_day(m15, symbol, self._calendar.midnight(session)))
                else:
                    lo, hi = self._calendar.window(session, request.extended)
                    frames.append(m15[(m15["ts"] >= lo) & (m15["ts"] < hi)])
        bars = pd.concat(frames, ignore_index=True) if frames else empty_bars()
        return FetchResult(bars=bars, api_calls=0)

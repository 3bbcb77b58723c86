"""The synthetic bar model: plausible bars on the real session grid, the same on every machine.

Every session of every symbol is generated from its own seed (symbol, session), so any session can
be generated alone and again gives identical bars. A slow deterministic price level per symbol, a
random walk of m15 log returns over the served day (04:00-20:00, early closes included) with a
U-shaped volatility and volume profile in regular hours (quieter pre- and post-market); d1 bars
aggregate the same m15 bars over the regular hours, so d1 and m15 agree and a d1 bar is final at
the close. The demo provider (providers/demo.py) and the fake provider servers (fakes/) serve it.
"""

from __future__ import annotations

import zlib
from datetime import date

import numpy as np
import pandas as pd

from backfill_dagster.domain.bars import bars_frame
from backfill_dagster.domain.calendar import SessionCalendar, epoch_ns
from backfill_dagster.domain.timeframes import Timeframe


def seed(*parts: object) -> int:
    """A stable seed from its parts (the same on every machine and Python run)."""
    return zlib.crc32("|".join(str(p) for p in parts).encode())


# Columns of the value arrays `synthetic_values` returns, in order (shared with the fake servers).
VALUE_COLUMNS = ("open", "high", "low", "close", "volume", "vwap", "trade_count")
OPEN, HIGH, LOW, CLOSE, VOLUME, VWAP, TRADES = range(len(VALUE_COLUMNS))


def synthetic_values(symbol: str, session: date, t: np.ndarray, open_ns: int, close_ns: int) -> np.ndarray:
    """The synthetic m15 values (columns `VALUE_COLUMNS`) of one
    symbol and session at bar starts `t` (UTC ns), numpy only: the demo provider and the fake
    provider servers both serve these numbers."""
    n = len(t)
    rng = np.random.default_rng(seed(symbol, session.isoformat()))
    sym = seed(symbol)
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
    """All m15 bars of one session's served day for one symbol: 04:00-20:00, early closes included,
    as the real providers serve them."""
    grid = calendar.expected_bars([session], Timeframe.M15, served=True)["ts"]
    values = synthetic_values(symbol, session, epoch_ns(grid), calendar.open(session).value, calendar.close(session).value)
    return bars_frame({"symbol": symbol, "ts": grid, **{c: values[:, i] for i, c in enumerate(VALUE_COLUMNS)}})


def day_values(values: np.ndarray) -> tuple[float, ...] | None:
    """One d1 row from a session's m15 value rows (columns `VALUE_COLUMNS`); None without rows.
    The demo provider and the fake servers both build their d1 bars with it."""
    if len(values) == 0:
        return None
    volume = values[:, VOLUME].sum()
    vwap = round(float((values[:, VWAP] * values[:, VOLUME]).sum() / volume), 4) if volume else np.nan
    return (
        float(values[0, OPEN]),
        float(values[:, HIGH].max()),
        float(values[:, LOW].min()),
        float(values[-1, CLOSE]),
        float(volume),
        vwap,
        float(values[:, TRADES].sum()),
    )

"""The bars the fake providers serve: the demo provider's synthetic bars, cached as numpy arrays.

Every provider fake answers from the same data, so a bar fetched from Alpaca equals the one
fetched from Polygon, Tradier or Yahoo (each in its own wire format):

- m15: exactly `synthetic.synthetic_session_m15(symbol, session, xnys())`, the whole served day
  (04:00-20:00, early closes included, as the real APIs serve it), from the same numpy model (`synthetic.synthetic_values`) without building a
  DataFrame per session, which costs ~5 ms a session when a benchmark asks for 20 symbols x 504
  sessions; a test checks that both agree bar for bar.
- d1: `synthetic.day_values` (the model's d1 formula) of the session's *regular-hours* m15 bars.
- Only bars that started before "now" exist: an open session is served up to the bar in progress.
- Splits (fakes/actions.py): the model is the series adjusted for every split; a session's served
  prices are multiplied by the registry's `price_factor` (raw, or split-adjusted as of the day asked)
  and its volume divided by it, rounded as the model rounds (prices 2 decimals, vwap 4, volume
  whole), so OHLC stays consistent; a price gap multiplies prices only. d1 bars are built from the
  served m15 bars, so both agree.
- Optionally a deterministic share of extended-hours slots has no trades (`no_trade_rate`): no bar
  at Alpaca/Polygon/Tradier, a row of nulls at Yahoo.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Set
from dataclasses import dataclass
from datetime import date
from fractions import Fraction

import numpy as np
import pandas as pd

from backfill_dagster.domain.bars import bars_frame, empty_bars
from backfill_dagster.domain.calendar import NEW_YORK, SessionCalendar, xnys
from backfill_dagster.domain.synthetic import (
    CLOSE,
    HIGH,
    LOW,
    OPEN,
    TRADES,
    VALUE_COLUMNS,
    VOLUME,
    VWAP,
    day_values as aggregate,
    seed,
    synthetic_values,
)
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.fakes.actions import ONE, CorporateActions

M15_NS = 15 * 60 * 1_000_000_000
# 20 symbols x 504 sessions fit with room to spare (~5 KB a session).
_CACHE_SESSIONS = 32_768


@dataclass(frozen=True)
class Slots:
    """m15 bar slots of one symbol, ascending: start (UTC ns), values (n x 7) and whether traded."""

    ts: np.ndarray
    values: np.ndarray
    traded: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, mask_or_index) -> Slots:
        return Slots(self.ts[mask_or_index], self.values[mask_or_index], self.traded[mask_or_index])

    def traded_only(self) -> Slots:
        return self if self.traded.all() else self.take(self.traded)


@dataclass(frozen=True)
class Days:
    """d1 bars of one symbol, ascending: their sessions, midnight labels (UTC ns), opens (UTC ns)
    and values (n x 7)."""

    sessions: list[date]
    midnight: np.ndarray
    open_ns: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.sessions)


class BarData:
    """Deterministic bars for any symbol and session of the XNYS calendar, cached."""

    def __init__(
        self,
        calendar: SessionCalendar | None = None,
        withheld: Callable[[], Set] = frozenset,
        actions: Callable[[], CorporateActions] | None = None,
    ):
        """`withheld`: () -> the (symbol, session) pairs served without bars (FakeConfig.withheld);
        `actions`: () -> the corporate-actions registry whose splits the bars follow."""
        self.calendar = calendar or xnys()
        self._withheld = withheld
        self._actions = actions
        # Per-instance caches (a calendar is not hashable into a module-level lru_cache key).
        self._grid = functools.lru_cache(maxsize=_CACHE_SESSIONS)(self._grid_uncached)
        self._session = functools.lru_cache(maxsize=_CACHE_SESSIONS)(self._generate)
        self._day = functools.lru_cache(maxsize=_CACHE_SESSIONS)(self._day_uncached)
        self._scaled_day = functools.lru_cache(maxsize=_CACHE_SESSIONS)(self._scaled_day_uncached)
        self._no_trade_draws = functools.lru_cache(maxsize=_CACHE_SESSIONS)(self._draws_uncached)

    # ------------------------------------------------------------------ sessions
    def sessions_between(self, start_ns: int, end_ns: int) -> list[date]:
        """Sessions whose New York date overlaps [start_ns, end_ns)."""
        if end_ns <= start_ns:
            return []
        first = ny_date(start_ns)
        last = ny_date(end_ns - 1)
        first = max(first, self.calendar.first_day)
        last = min(last, self.calendar.last_day)
        if last < first:
            return []
        return self.calendar.sessions(first, last)

    def sessions(self, first: date, last: date) -> list[date]:
        first, last = max(first, self.calendar.first_day), min(last, self.calendar.last_day)
        return self.calendar.sessions(first, last) if first <= last else []

    # ------------------------------------------------------------------ m15
    def m15(
        self,
        symbol: str,
        start_ns: int,
        end_ns: int,
        now_ns: int,
        *,
        regular_only: bool = False,
        no_trade_rate: float = 0.0,
        adjusted: bool = True,
    ) -> Slots:
        """All m15 slots with start_ns <= start < end_ns that started before now (split-adjusted as
        of now, or raw)."""
        end_ns = min(end_ns, now_ns)
        parts = []
        withheld = self._withheld()
        for session in self.sessions_between(start_ns, end_ns):
            if (symbol, session) in withheld:
                continue
            parts.append(self._session_slots(symbol, session, now_ns, regular_only, no_trade_rate, adjusted))
        if not parts:
            return Slots(np.empty(0, np.int64), np.empty((0, 7)), np.empty(0, bool))
        ts = np.concatenate([p[0] for p in parts])
        keep = (ts >= start_ns) & (ts < end_ns)
        return Slots(ts[keep], np.concatenate([p[1] for p in parts])[keep], np.concatenate([p[2] for p in parts])[keep])

    def session_slots(
        self, symbol: str, session: date, now_ns: int, *, no_trade_rate: float = 0.0, adjusted: bool = True
    ) -> Slots:
        """The whole served day (04:00-20:00) of one closed session, as `m15` serves it, without
        `m15`'s date arithmetic: the flat-files fake asks this for 500 symbols a file."""
        if (symbol, session) in self._withheld():
            return Slots(np.empty(0, np.int64), np.empty((0, 7)), np.empty(0, bool))
        return Slots(*self._session_slots(symbol, session, now_ns, False, no_trade_rate, adjusted))

    def _session_slots(self, symbol, session, now_ns, regular_only, no_trade_rate, adjusted):
        ts, values, regular = self._session(symbol, session)
        basis = self.basis(symbol, session, now_ns, adjusted)
        if basis != SAME:
            values = scale(values, *basis)
        if regular_only:
            ts, values = ts[regular], values[regular]
        traded = np.ones(len(ts), dtype=bool)
        if no_trade_rate > 0:
            draws = self._no_trade_draws(symbol, session)
            quiet = ~regular & (draws < no_trade_rate)  # thin trading only outside regular hours
            traded = ~(quiet[regular] if regular_only else quiet)
        return ts, values, traded

    # ------------------------------------------------------------------ d1
    def daily(self, symbol: str, first: date, last: date, now_ns: int, *, adjusted: bool = True) -> Days:
        """d1 bars of the sessions first..last (inclusive) that have a regular bar by now."""
        sessions, midnights, opens, rows = [], [], [], []
        withheld = self._withheld()
        for session in self.sessions(first, last):
            open_ns = self.calendar.open(session).value
            if open_ns >= now_ns:
                break  # this session and every later one has not opened
            if (symbol, session) in withheld:
                continue
            close_ns = self.calendar.close(session).value
            basis = self.basis(symbol, session, now_ns, adjusted)
            if close_ns > now_ns:
                row = self._partial_day(symbol, session, now_ns, basis)
            elif basis != SAME:
                row = self._scaled_day(symbol, session, basis)
            else:
                row = self._day(symbol, session)
            if row is None:
                continue
            sessions.append(session)
            midnights.append(self.calendar.midnight(session).value)
            opens.append(open_ns)
            rows.append(row)
        return Days(
            sessions,
            np.array(midnights, dtype=np.int64),
            np.array(opens, dtype=np.int64),
            np.array(rows, dtype=np.float64).reshape(-1, 7),
        )

    def session_day(self, symbol: str, session: date, now_ns: int, *, adjusted: bool = True) -> tuple[float, ...] | None:
        """The d1 row of one session closed by `now_ns`, as `daily` serves it (None: withheld),
        without `daily`'s calendar look-ups: the flat-files fake asks this for 500 symbols a file."""
        if (symbol, session) in self._withheld():
            return None
        basis = self.basis(symbol, session, now_ns, adjusted)
        return self._scaled_day(symbol, session, basis) if basis != SAME else self._day(symbol, session)

    # ------------------------------------------------------------------ frames (for assertions)
    def frame(
        self,
        timeframe: Timeframe | str,
        symbol: str,
        session: date,
        now_ns: int,
        *,
        extended: bool = True,
        no_trade_rate: float = 0.0,
        adjusted: bool = True,
    ) -> pd.DataFrame:
        """The bar frame served for one (symbol, session) partition."""
        timeframe = Timeframe.parse(timeframe)
        if not self.calendar.is_session(session):
            return empty_bars()
        if timeframe is Timeframe.D1:
            days = self.daily(symbol, session, session, now_ns, adjusted=adjusted)
            return to_frame(symbol, days.midnight, days.values)
        if timeframe is not Timeframe.M15:
            raise ValueError(f"the fakes serve m15 and d1 bars, not {timeframe.value}")
        lo, hi = self.calendar.served_window(session)
        slots = self.m15(symbol, lo.value, hi.value, now_ns, regular_only=not extended, no_trade_rate=no_trade_rate,
                         adjusted=adjusted)
        slots = slots.traded_only()
        return to_frame(symbol, slots.ts, slots.values)

    # ------------------------------------------------------------------ generation (cached)
    def _grid_uncached(self, session: date) -> tuple[np.ndarray, np.ndarray]:
        """Bar starts of the session's served day (UTC ns) and which are in regular hours."""
        segments = self.calendar.segments(session, served=True)
        grid = np.concatenate([np.arange(s.start.value, s.end.value, M15_NS, dtype=np.int64) for s in segments])
        open_, close = segments[1].start.value, segments[1].end.value
        regular = (grid >= open_) & (grid < close)
        grid.flags.writeable = False
        regular.flags.writeable = False
        return grid, regular

    def _generate(self, symbol: str, session: date) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The demo model's bars without pandas: (ts ns, values n x 7, regular mask)."""
        t, regular = self._grid(session)
        values = synthetic_values(symbol, session, t, self.calendar.open(session).value, self.calendar.close(session).value)
        values.flags.writeable = False
        return t, values, regular

    def _draws_uncached(self, symbol: str, session: date) -> np.ndarray:
        # A separate stream, so switching no-trade slots on never changes the bars themselves.
        n = len(self._grid(session)[0])
        return np.random.default_rng(seed(symbol, session.isoformat(), "no-trade")).random(n)

    def _day_uncached(self, symbol: str, session: date) -> tuple[float, ...] | None:
        _, values, regular = self._session(symbol, session)
        return aggregate(values[regular])

    def _scaled_day_uncached(self, symbol: str, session: date, basis: Basis) -> tuple[float, ...] | None:
        _, values, regular = self._session(symbol, session)
        return aggregate(scale(values[regular], *basis))

    def _partial_day(self, symbol: str, session: date, now_ns: int, basis: Basis = (ONE, ONE)) -> tuple[float, ...] | None:
        ts, values, regular = self._session(symbol, session)
        values = values[regular & (ts < now_ns)]
        return aggregate(scale(values, *basis) if basis != SAME else values)

    # ------------------------------------------------------------------ splits and gaps
    def basis(self, symbol: str, session: date, now_ns: int, adjusted: bool) -> Basis:
        """(price factor, volume divisor) of the session as served now: (1, 1) for most symbols."""
        actions = self._actions() if self._actions is not None else None
        if actions is None or not actions.moves_prices(symbol):
            return SAME
        split = actions.price_factor(symbol, session, ny_date(now_ns), adjusted=adjusted)
        return split * actions.gap_factor(symbol, session), split


Basis = tuple[Fraction, Fraction]
SAME: Basis = (ONE, ONE)


def scale(values: np.ndarray, price: Fraction, volume: Fraction) -> np.ndarray:
    """Value rows (columns VALUE_COLUMNS) on another basis: prices times `price`, volume divided by
    `volume` (a split's ratio moves both, a price gap only prices), rounded as the model rounds.
    Rounding is monotone, so high >= open, close >= low still holds."""
    out = values.copy()
    p, q = price.numerator, price.denominator
    for column in (OPEN, HIGH, LOW, CLOSE):
        out[:, column] = np.maximum(np.round(values[:, column] * p / q, 2), 0.01)
    out[:, VWAP] = np.round(values[:, VWAP] * p / q, 4)
    out[:, VOLUME] = np.round(values[:, VOLUME] * volume.denominator / volume.numerator)
    return out


def aggregate_runs(keys: np.ndarray, values: np.ndarray, *, descending: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive rows with the same bucket key into one row each (keys sorted either way)."""
    if len(keys) == 0 or (len(keys) == 1 or (keys[1:] != keys[:-1]).all()):
        return keys, values
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    out = np.empty((len(starts), 7))
    for i, (a, b) in enumerate(zip(starts, ends)):
        chunk = values[b - 1 : a - 1 if a else None : -1] if descending else values[a:b]  # time order
        out[i] = aggregate(chunk)
    return keys[starts], out


def to_frame(symbol: str, ts_ns: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    """A bar frame (backfill_dagster.domain.bars) from bar starts and value rows."""
    if len(ts_ns) == 0:
        return empty_bars()
    data = {"symbol": symbol, "ts": pd.to_datetime(np.asarray(ts_ns, dtype=np.int64), unit="ns", utc=True)}
    data.update({name: values[:, i] for i, name in enumerate(VALUE_COLUMNS)})
    return bars_frame(data)


def ny_date(epoch_ns: int) -> date:
    """The New York calendar date of a UTC instant."""
    return pd.Timestamp(int(epoch_ns), tz="UTC").tz_convert(NEW_YORK).date()


def ny_midnight_ns(day: date) -> int:
    """00:00 New York of a date, as UTC ns."""
    return pd.Timestamp(day).tz_localize(NEW_YORK).value

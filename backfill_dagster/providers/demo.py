"""The offline demo provider: synthetic but plausible bars on the real session grid.

It needs no key and no network, so the embedded default works on a fresh machine. Its bars come
from the synthetic model (domain/synthetic.py), the one the fake provider servers serve too, and
are labelled ``demo:synthetic`` in the store: nobody should mistake them for market data.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from backfill_dagster.domain.bars import bars_frame, empty_bars
from backfill_dagster.domain.calendar import SessionCalendar, epoch_ns
from backfill_dagster.domain.clock import utcnow
from backfill_dagster.domain.synthetic import VALUE_COLUMNS, day_values, synthetic_values
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers.base import (
    Adjustment,
    Capabilities,
    FetchRequest,
    FetchResult,
    Provider,
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

    def __init__(self, calendar: SessionCalendar, clock: Callable[[], pd.Timestamp] = utcnow):
        self._calendar = calendar
        self._clock = clock

    @property
    def provenance(self) -> str:
        return "demo:synthetic"

    def fetch(self, request: FetchRequest) -> FetchResult:
        # numpy per session and one frame per request: a range run asks for thousands of sessions.
        now = self._clock()  # the answer is final up to this reading
        now_ns = now.value
        sessions = list(request.sessions)
        if not sessions or not request.symbols:
            return FetchResult(bars=empty_bars(), api_calls=0, complete_through=now)
        cal = self._calendar
        # The model runs over the served day (04:00-20:00), so every session's values are the fakes'
        # whatever hours are kept; the request's window then picks its bars.
        starts = epoch_ns(cal.expected_bars(sessions, Timeframe.M15, served=True)["ts"])
        bounds = np.concatenate([[0], np.cumsum(cal.expected_counts(sessions, Timeframe.M15, served=True))])
        period = Timeframe.M15.period.value
        windows = [tuple(t.value for t in cal.window(d, request.extended)) for d in sessions]
        hours = [(cal.open(d).value, cal.close(d).value) for d in sessions]
        # Arrays of each symbol and session's bars, joined once: a list entry per bar (a numpy row
        # and a scalar each) was ~200 bytes a bar, ~60 MB for a box's m15 of 300,000 bars.
        symbols, counts, times, rows = [], [], [], []
        for symbol in request.symbols:
            for i, session in enumerate(sessions):
                t = starts[bounds[i]:bounds[i + 1]]
                values = synthetic_values(symbol, session, t, *hours[i])
                if request.timeframe is Timeframe.D1:
                    # A d1 bar ends at the regular close and aggregates the regular hours, so it is
                    # final then (as the fake servers' d1 bars are).
                    if hours[i][1] <= now_ns:
                        day = day_values(values[(t >= hours[i][0]) & (t < hours[i][1])])
                        if day is not None:
                            times.append(np.array([cal.midnight(session).value], dtype=np.int64))
                            rows.append(np.array([day], dtype=np.float64))
                            symbols.append(symbol)
                            counts.append(1)
                    continue
                done = t + period <= now_ns  # only bars that have finished by now exist yet
                keep = done & (t >= windows[i][0]) & (t < windows[i][1])
                times.append(t[keep])
                rows.append(values[keep])
                symbols.append(symbol)
                counts.append(int(keep.sum()))
        if not sum(counts):
            return FetchResult(bars=empty_bars(), api_calls=0, complete_through=now)
        values = np.concatenate(rows)
        bars = bars_frame(
            {
                "symbol": np.repeat(np.array(symbols, dtype=object), counts),
                "ts": pd.DatetimeIndex(np.concatenate(times).astype("datetime64[ns]")).tz_localize("UTC"),
                **{c: values[:, k] for k, c in enumerate(VALUE_COLUMNS)},
            }
        )
        return FetchResult(bars=bars, api_calls=0, complete_through=now)

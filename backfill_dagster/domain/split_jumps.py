"""Splits the store shows but nobody reported: a d1 price jump at a session boundary that a split ratio
explains, with no corporate action recorded for that symbol and ex-date.

Pure: d1 bars in, suspects out. The jump is the previous session's close over the session's open,
which is a split's ratio (new shares per old share) when the provider served the history before it
on the old basis: 4-for-1, 400 -> 100, jumps by 4; a 1-for-10 reverse split, 1.50 -> 15, by 1/10.

The ratios watched are the splits US issuers actually announce: 2, 3, 4, 5, 10 and 20 for one (AAPL
4:1, NVDA 10:1, AMZN and GOOGL 20:1) and the reverse splits 1:2 ... 1:20. Within 2% of a ratio the
bands never overlap, and an ordinary overnight move — a 30% earnings gap, or even a halving on a
failed trial, unless it lands within 2% of exactly one half — misses them all. 3:2 and 5:4 are left
out on purpose: a 50% or 25% gap is as likely to be news as a split, and the corporate-actions
feeds report those splits anyway.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date
from fractions import Fraction

import pandas as pd

from backfill_dagster.domain.calendar import SessionCalendar
from backfill_dagster.domain.corporate_actions import ratio_text

FORWARD = (2, 3, 4, 5, 10, 20)
SPLIT_RATIOS: tuple[Fraction, ...] = tuple(Fraction(n) for n in FORWARD) + tuple(Fraction(1, n) for n in FORWARD)
TOLERANCE = 0.02  # |observed / ratio - 1| at most this


@dataclass(frozen=True)
class SuspectedSplit:
    symbol: str
    session: date  # the suspected ex-date
    previous_session: date
    previous_close: float
    open: float
    observed: float  # previous close / open
    ratio: Fraction  # the split ratio it is within TOLERANCE of
    volume_ratio: float | None  # session volume / previous volume (a split moves it by about the ratio)

    def describe(self) -> str:
        volume = "" if self.volume_ratio is None else f", volume x{self.volume_ratio:.2f}"
        return (
            f"{self.symbol} {self.session.isoformat()}: close {self.previous_close:g} on "
            f"{self.previous_session.isoformat()} -> open {self.open:g} (x{1 / self.observed:.4g}), "
            f"a {ratio_text(self.ratio)} split?{volume}"
        )


def nearest_split(observed: float, ratios: Iterable[Fraction] = SPLIT_RATIOS, tolerance: float = TOLERANCE) -> Fraction | None:
    """The split ratio `observed` is within `tolerance` of, if any."""
    if not observed > 0:
        return None
    for ratio in ratios:
        if abs(observed / float(ratio) - 1.0) <= tolerance:
            return ratio
    return None


def suspected_splits(
    d1: pd.DataFrame,
    calendar: SessionCalendar,
    recorded: Collection[tuple[str, date]],
    sessions: Collection[date] | None = None,
    ratios: Iterable[Fraction] = SPLIT_RATIOS,
) -> list[SuspectedSplit]:
    """Jumps into each session (of `sessions`, or all) from the session before it, both stored, that
    a split ratio (of `ratios`) explains, where no split of that symbol with that ex-date is `recorded`.

    `d1`: stored d1 bars with columns symbol, session, open, close, volume (the sessions before the
    first judged one included, so its boundary can be judged too)."""
    if d1.empty:
        return []
    out = []
    ratios = tuple(ratios)
    frame = d1.sort_values(["symbol", "session"])
    for symbol, bars in frame.groupby("symbol", sort=True):
        days = list(bars["session"])
        opens, closes, volumes = bars["open"].to_numpy(float), bars["close"].to_numpy(float), bars["volume"].to_numpy(float)
        for i in range(1, len(days)):
            day, before = days[i], days[i - 1]
            if sessions is not None and day not in sessions:
                continue
            if calendar.previous_session(day) != before:
                continue  # a session between them is not stored: no boundary to judge
            if (symbol, day) in recorded:
                continue
            observed = closes[i - 1] / opens[i]
            ratio = nearest_split(observed, ratios)
            if ratio is None:
                continue
            volume_ratio = float(volumes[i] / volumes[i - 1]) if volumes[i - 1] > 0 else None
            out.append(SuspectedSplit(symbol, day, before, float(closes[i - 1]), float(opens[i]), float(observed),
                                      ratio, volume_ratio))
    return out

"""Which share basis the stored history before a split is on: read from the bars themselves, not
only from when they were fetched.

Timestamps say a partition is on the new basis when it was fetched after the providers re-based
the history (`basis_since`). For a split listed in the first answers about a symbol that instant is
an assumption — its ex-date — and it is wrong when the bars were stored before anyone asked about
the symbol's corporate actions and the provider had not re-based yet. The stored bars tell: on the
old basis, the session before the ex-date closes at the ratio times the ex-date's open (4-for-1:
400 -> 100); on the new basis they run on. That jump is the one `bars_d1:no_unrecorded_split` looks
for, and the same pure function (domain/split_jumps.py) judges it here, for the split's own ratio.

The rules (pure; the split_repair sensor applies them each tick):
- a timeframe whose stored bars jump by the ratio at the ex-date holds history on the old basis:
  every partition of it before the ex-date is stale (m15's jump makes h1/h4, derived from it, stale
  too), whatever the timestamps say;
- when the timestamps only assumed the new basis (fetched after the ex-date but before the split was
  first seen) and the bars cannot confirm it — a jump, or no stored session on one side of the
  ex-date — the assumption is dropped: `basis_since` becomes the moment the split was first seen,
  when a provider had told us it had applied it, and everything fetched before is re-fetched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from fractions import Fraction

import pandas as pd

from backfill_dagster.domain.calendar import SessionCalendar
from backfill_dagster.domain.corporate_actions import ratio_text
from backfill_dagster.domain.split_jumps import SuspectedSplit, suspected_splits
from backfill_dagster.domain.split_repair import RecordedSplit
from backfill_dagster.domain.timeframes import Timeframe

# Derived from m15: on whatever basis the m15 bars they were built from are.
DERIVED_FROM_M15 = (Timeframe.H1, Timeframe.H4)


class Basis(StrEnum):
    OLD = "old"  # the stored bars jump by the split's ratio at its ex-date
    NEW = "new"  # both sides of the ex-date are stored and run on without that jump
    UNKNOWN = "unknown"  # the session before the ex-date, or the ex-date, is not stored


@dataclass(frozen=True)
class Evidence:
    """What one timeframe's stored bars show at a split's ex-date."""

    basis: Basis
    jump: SuspectedSplit | None = None  # the jump, when they show one

    def describe(self, timeframe: Timeframe) -> str:
        if self.jump is not None:
            j = self.jump
            return (f"the stored {timeframe.value} bars jump at the ex-date (close {j.previous_close:g} on "
                    f"{j.previous_session.isoformat()} -> open {j.open:g}, {ratio_text(j.ratio)})")
        if self.basis is Basis.OLD:
            return f"the stored {timeframe.value} bars jump at the ex-date by the split's ratio"
        if self.basis is Basis.NEW:
            return f"the stored {timeframe.value} bars run on across the ex-date"
        return f"no stored {timeframe.value} bars on both sides of the ex-date"


def session_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """Bars of any timeframe (with a session column) as one row per session: the first open, the
    last close and the volume, the shape `suspected_splits` judges."""
    if bars.empty:
        return pd.DataFrame({"symbol": [], "session": [], "open": [], "close": [], "volume": []})
    ordered = bars.sort_values(["symbol", "ts"])
    grouped = ordered.groupby(["symbol", "session"], sort=True)
    return grouped.agg(open=("open", "first"), close=("close", "last"), volume=("volume", "sum")).reset_index()


def evidence(split: RecordedSplit, bars: pd.DataFrame, calendar: SessionCalendar) -> Evidence:
    """What the stored bars of one timeframe at the split's ex-date and the session before say.
    `bars`: those bars, with a session column (other sessions are ignored)."""
    before = calendar.previous_session(split.ex_date)
    days = session_frame(bars[bars["symbol"] == split.symbol]) if not bars.empty else session_frame(bars)
    days = days[days["session"].isin([before, split.ex_date])]
    if len(days) < 2:
        return Evidence(Basis.UNKNOWN)
    (jump, *_) = suspected_splits(days, calendar, recorded=(), sessions={split.ex_date}, ratios=(split.ratio,)) or [None]
    return Evidence(Basis.OLD, jump) if jump is not None else Evidence(Basis.NEW)


@dataclass(frozen=True)
class Assessment:
    """Which stored partitions before the ex-date are on the old basis, and why."""

    basis_since: datetime  # the split's basis_since once the evidence is weighed (moved on or kept)
    stale: dict[Timeframe, list[date]]
    why: str  # what the bars showed, for the sensor's note


def assess(
    split: RecordedSplit,
    history: Mapping[Timeframe, Sequence[tuple[date, datetime]]],
    seen: Mapping[Timeframe, Evidence],
) -> Assessment:
    """The stale partitions of `split`. `history`: per timeframe, the stored partitions before the
    ex-date holding bars, as (session, when the bars were fetched — h1/h4: their m15). `seen`: the
    evidence per timeframe (a timeframe left out counts as unknown)."""
    judged = {t: seen.get(t, Evidence(Basis.UNKNOWN)) for t in history}
    jumped = {t for t, e in judged.items() if e.basis is Basis.OLD}
    old = jumped | ({t for t in DERIVED_FROM_M15 if t in history} if Timeframe.M15 in jumped else set())
    # Fetched after the ex-date but before the split was first seen: on the new basis only if the
    # providers had re-based by then, which the timestamps assume and the bars must confirm.
    assumed = {t for t, rows in history.items() if any(split.basis_since <= at < split.first_seen for _, at in rows)}
    unconfirmed = {t for t in assumed if judged[t].basis is not Basis.NEW}
    basis_since = split.first_seen if (jumped or unconfirmed) and split.basis_since < split.first_seen else split.basis_since
    order = list(Timeframe).index
    stale = {}
    for t, rows in history.items():
        days = sorted(d for d, at in rows if t in old or at < basis_since)
        if days:
            stale[t] = days
    said = []
    if jumped:
        said.append("; ".join(judged[t].describe(t) for t in sorted(jumped, key=order))
                    + ": the history before it is on the old share basis")
    unknown = unconfirmed - old
    if unknown:
        said.append("; ".join(judged[t].describe(t) for t in sorted(unknown, key=order))
                    + ": nothing confirms the history fetched before the split was first seen was re-based")
    if not said:
        said = [judged[t].describe(t) for t in sorted(judged, key=order) if judged[t].basis is Basis.NEW]
    return Assessment(basis_since, stale, "; ".join(said))


@dataclass(frozen=True)
class Missing:
    """The stored bars a repair's answer lacks, and how many of them the split does not explain."""

    missing: int
    unexplained: int

    def describe(self, ratio: Fraction) -> str:
        return (f"the split {ratio_text(ratio)} explains {self.missing - self.unexplained} of the {self.missing} "
                "missing (only a bar under one share on the new basis may drop out)")


def missing_bars(stored: pd.DataFrame, offered: pd.DataFrame, ratio: Fraction) -> Missing:
    """Of the stored bars of one partition (on the old basis) that an answer lacks (by bar start),
    how many the split's new share basis does not explain. A split changes no trade: the only bar a
    provider may drop when it re-bases is one whose volume on the new basis — stored volume times
    the ratio, a reverse split dividing it — is under one share. Any other gap is a partial answer."""
    lacking = stored[~stored["ts"].isin(set(offered["ts"]))]
    unexplained = int((lacking["volume"].to_numpy(float) * float(ratio) >= 1.0).sum())
    return Missing(len(lacking), unexplained)

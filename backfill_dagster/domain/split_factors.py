"""Raw bars onto a split-adjusted store's basis, with the splits the store knows (pure).

A source that serves raw prices (the flat files) is put on the basis a split-adjusted provider
would serve at the same instant: for a bar of session d, adjusted as of date A,

    R(d, A)  = product of r_s over the splits s with d < ex_date_s <= A   (r = new / old shares)
    price    = raw price / R        volume = raw volume x R               (trade count unchanged)

so the ledger's fetch time means what it means for any provider, and a split learnt later makes
those partitions stale like any others (the split repair re-derives them). The splits are the
corporate-actions store's; a symbol no provider was ever asked about has unknown splits and is
refused, never served raw into an adjusted store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from fractions import Fraction

import numpy as np
import pandas as pd

from backfill_dagster.domain.bars import PRICE_COLUMNS

ONE = Fraction(1)


@dataclass(frozen=True)
class KnownSplits:
    """What the corporate-actions store knows about some symbols' splits.

    `checked_from`: per symbol, the earliest ex-date any provider's check of it covered (a symbol
    absent was never checked); `splits`: per symbol, (ex_date, ratio new/old) of every recorded split.
    """

    checked_from: Mapping[str, date] = field(default_factory=dict)
    splits: Mapping[str, Sequence[tuple[date, Fraction]]] = field(default_factory=dict)

    def unknown(self, symbol: str, session: date) -> str | None:
        """Why the splits after `session` of `symbol` are not known (None: they are)."""
        first = self.checked_from.get(symbol)
        if first is None:
            return (f"the splits of {symbol} were never checked: materialize corporate_actions for it "
                    "first (the flat files are unadjusted)")
        if first > session:
            return (f"the splits of {symbol} were checked from {first.isoformat()} only, after "
                    f"{session.isoformat()}: refresh corporate_actions with an earlier history start")
        return None

    def factor(self, symbol: str, session: date, as_of: date) -> Fraction:
        """R(session, as_of): the product of the ratios of the splits after the session, effective by as_of."""
        out = ONE
        for ex_date, ratio in self.splits.get(symbol, ()):
            if session < ex_date <= as_of:
                out *= ratio
        return out


def adjust_bars(bars: pd.DataFrame, factors: Mapping[str, Fraction]) -> pd.DataFrame:
    """Bars of one session with prices (and vwap) divided and volume multiplied by each symbol's
    factor (a symbol absent: 1, unchanged)."""
    moving = {s: f for s, f in factors.items() if f != ONE}
    if bars.empty or not moving:
        return bars
    out = bars.copy()
    ratios = [moving.get(s, ONE) for s in out["symbol"]]
    new = np.array([r.numerator for r in ratios], dtype=float)
    old = np.array([r.denominator for r in ratios], dtype=float)
    # times old / new rather than / float(R): a 1-for-3 ratio stays exact where it can
    for column in (*PRICE_COLUMNS, "vwap"):
        out[column] = out[column].to_numpy(dtype=float, na_value=np.nan) * old / new
    out["volume"] = out["volume"].to_numpy(dtype=float) * new / old
    return out

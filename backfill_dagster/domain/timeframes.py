"""The bar timeframes the store keeps, and what each one is made from.

m15 and d1 are fetched from providers; h1 and h4 are derived from m15 so coarse bars always agree
with the fine ones they summarise.
"""

from __future__ import annotations

from enum import StrEnum

import pandas as pd


class UnknownTimeframeError(ValueError):
    """A timeframe name that is not one of m15, h1, h4, d1."""


class Timeframe(StrEnum):
    M15 = "m15"
    H1 = "h1"
    H4 = "h4"
    D1 = "d1"

    @property
    def period(self) -> pd.Timedelta:
        """Length of one bar. A d1 bar spans the whole session, whatever its length."""
        return _PERIODS[self]

    @property
    def is_intraday(self) -> bool:
        return self is not Timeframe.D1

    @property
    def source(self) -> Timeframe | None:
        """The timeframe this one is resampled from, or None when it is fetched."""
        return Timeframe.M15 if self in (Timeframe.H1, Timeframe.H4) else None

    @property
    def is_fetched(self) -> bool:
        return self.source is None

    @property
    def asset_name(self) -> str:
        return f"bars_{self.value}"

    @classmethod
    def parse(cls, value: str | Timeframe) -> Timeframe:
        """Read a timeframe name, with an error that lists the valid names."""
        if isinstance(value, Timeframe):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            names = ", ".join(t.value for t in cls)
            raise UnknownTimeframeError(
                f"unknown timeframe {value!r}: use one of {names}"
            ) from None


_PERIODS = {
    Timeframe.M15: pd.Timedelta(minutes=15),
    Timeframe.H1: pd.Timedelta(hours=1),
    Timeframe.H4: pd.Timedelta(hours=4),
    Timeframe.D1: pd.Timedelta(days=1),
}

"""What every market-data provider offers: its capabilities, the request it takes, its errors.

A provider turns one `FetchRequest` (some symbols x a contiguous run of sessions, one timeframe)
into a bar frame, paging through the API as often as it must and counting its calls. It never
touches the store; validation happens after it, so a provider only has to parse faithfully.
Providers that publish corporate actions (Alpaca, Polygon, Yahoo) also answer `corporate_actions`
with the same HTTP client, shared budget and retries as their bars.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

import pandas as pd

from backfill_dagster.domain.corporate_actions import ActionRecord
from backfill_dagster.domain.split_factors import KnownSplits
from backfill_dagster.domain.provider_errors import ProviderError, ProviderUnavailable
from backfill_dagster.domain.timeframes import Timeframe


class Adjustment(StrEnum):
    """How prices are adjusted for corporate actions; one mode for the whole store."""

    SPLIT = "split"
    RAW = "raw"

    @classmethod
    def parse(cls, value: str | Adjustment) -> Adjustment:
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ValueError(
                f"unknown adjustment {value!r}: use 'split' (split-adjusted, the default) or 'raw'"
            ) from None


@dataclass(frozen=True)
class Capabilities:
    """What a provider can serve; the router and planner read nothing else about it."""

    timeframes: frozenset[Timeframe]
    adjustments: frozenset[Adjustment]
    max_symbols_per_request: int = 1
    # Longest run of sessions one request may span (None: any, the client pages through it); a
    # mapping gives it per timeframe (absent: any).
    max_sessions_per_request: int | Mapping[Timeframe, int | None] | None = None
    # How many calendar days back each timeframe reaches (None or absent: full history).
    history_days: Mapping[Timeframe, int | None] = field(default_factory=dict)
    serves_open_session: bool = True  # today's bars while the session is still trading
    serves_closed_sessions: bool = True
    extended_hours: bool = True
    synthetic: bool = False

    def sessions_window(self, timeframe: Timeframe) -> int | None:
        """Longest run of sessions one request of this timeframe may span (None: any)."""
        window = self.max_sessions_per_request
        return window.get(timeframe) if isinstance(window, Mapping) else window

    def reaches(self, timeframe: Timeframe, session: date, today: date) -> bool:
        days = self.history_days.get(timeframe)
        return days is None or (today - session).days < days


@dataclass(frozen=True)
class FetchRequest:
    """One logical request: symbols x a contiguous run of sessions, for one timeframe.

    `start`/`end` bound the bars wanted, [start, end) in UTC: from the first session's window start
    to the last session's window end (the configured hours; 00:00 New York for d1).
    """

    timeframe: Timeframe
    symbols: tuple[str, ...]
    sessions: tuple[date, ...]
    start: pd.Timestamp
    end: pd.Timestamp
    extended: bool = False
    adjustment: Adjustment = Adjustment.SPLIT

    @property
    def partitions(self) -> list[tuple[str, date]]:
        return [(s, d) for s in self.symbols for d in self.sessions]

    def describe(self) -> str:
        first, last = self.sessions[0], self.sessions[-1]
        span = first.isoformat() if first == last else f"{first.isoformat()}..{last.isoformat()}"
        names = ",".join(self.symbols[:5]) + (f",+{len(self.symbols) - 5}" if len(self.symbols) > 5 else "")
        return f"{self.timeframe.value} {names} {span}"


@dataclass
class FetchResult:
    bars: pd.DataFrame  # a bar frame (backfill_dagster.domain.bars)
    api_calls: int
    # The instant the answer is final up to: it holds every bar that had ended by then, and no bar
    # ending later. A provider reads its clock once, before the request, and cuts unfinished bars
    # with that reading (less its own data delay, e.g. Alpaca's free SIP: 15 minutes); the caller
    # decides from the same instant whether a session had closed. None: the caller's own reading
    # taken before the request.
    complete_through: pd.Timestamp | None = None
    # Rows the provider itself found defective before they became bars (a flat file's wrong-date or
    # duplicate rows): bar columns + session + reason. They go to rejected_bars and fail their
    # partitions like bars validation rejects.
    rejected: pd.DataFrame | None = None
    # Symbols of the request the provider would not serve (symbol -> why), e.g. raw prices whose
    # splits are unknown: their partitions fall back to the next provider, never recorded empty.
    unserved: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ActionsResult:
    """The splits and cash dividends a provider reports for some symbols, what it cost, and the
    symbols it could not answer for (symbol -> why): their requests failed after the retries."""

    records: list[ActionRecord] = field(default_factory=list)
    api_calls: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def answered(self, symbols: Sequence[str]) -> list[str]:
        return [s for s in symbols if s not in self.failed]


def actions_in_batches(
    symbols: Sequence[str], size: int, fetch: Callable[[Sequence[str], ActionsResult], list[ActionRecord]]
) -> ActionsResult:
    """Ask `fetch(batch, result)` for the actions of `size` symbols at a time (it adds its calls to
    `result`). A batch whose requests fail has its symbols in `failed`; once the provider is
    unavailable, the rest are not asked and are failed with the same reason."""
    out = ActionsResult()
    for i in range(0, len(symbols), size):
        batch = symbols[i : i + size]
        try:
            out.records += fetch(batch, out)
        except ProviderUnavailable as exc:
            out.failed.update({s: str(exc) for s in symbols[i:]})
            break
        except ProviderError as exc:
            out.failed.update({s: str(exc) for s in batch})
    return out


# symbols -> what the corporate-actions store knows of their splits (bound by the orchestration layer)
SplitLookup = Callable[[Sequence[str]], KnownSplits]


class ProviderConfigError(ValueError):
    """A provider that cannot be used as configured (unknown name, missing key, bad URL)."""


class Provider(abc.ABC):
    """A market-data source."""

    name: str
    capabilities: Capabilities
    # Whether `corporate_actions` answers (its API publishes splits and dividends).
    publishes_corporate_actions: bool = False

    @property
    def provenance(self) -> str:
        """The label stored with every bar this provider served."""
        return self.name

    @abc.abstractmethod
    def fetch(self, request: FetchRequest) -> FetchResult:
        """All bars for the request (paging as needed), or ProviderError."""

    def corporate_actions(self, symbols: Sequence[str], first: date, last: date) -> ActionsResult:
        """Splits and cash dividends of `symbols` with ex-dates first..last (as the API filters;
        a provider may return a little more), or ProviderError."""
        raise ProviderError(self.name, "publishes no corporate actions")

    def use_known_splits(self, lookup: SplitLookup) -> None:
        """Hand the provider the splits the store knows. Only a provider of raw prices that serves
        a split-adjusted store (the flat files) needs them; the others ignore this."""

    def close(self) -> None:
        """Release connections."""

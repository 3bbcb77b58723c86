"""Corporate actions as data: splits and cash dividends as providers report them, and the rules
that merge their reports and decide which stored bars a split makes stale.

Pure: plain values in and out. The providers parse their payloads into `ActionRecord`s, the store
keeps one row per provider's report and one per action (deduplicated by symbol, kind and ex-date),
and the split repair asks `basis_since` which bars were fetched on the old share basis.

A split's ratio is kept as the exact rational `split_to / split_from` (new shares per old share;
4-for-1: 4/1, a 1-for-10 reverse split: 1/10), reduced to lowest terms: 1-for-3 is never 0.3333.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from fractions import Fraction

import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK


class ActionKind(StrEnum):
    SPLIT = "split"  # forward or reverse: prices before the ex-date divide by the ratio
    CASH_DIVIDEND = "cash_dividend"  # recorded only: the store is adjusted for splits, never dividends


class RepairState(StrEnum):
    """Where a split's repair of the stored history stands (dividends have none)."""

    PENDING = "pending"  # found; its stale partitions are not re-fetched yet (or its ex-date is ahead)
    REPAIRING = "repairing"  # a Dagster backfill re-fetches them (its id is on the row)
    REPAIRED = "repaired"  # the backfill finished and no partition is left on the old basis
    NOT_NEEDED = "not_needed"  # nothing was stored on the old basis (no history before the ex-date)
    FAILED = "failed"  # partitions are still on the old basis after every attempt: they are named


OPEN_REPAIRS = (RepairState.PENDING, RepairState.REPAIRING)


class ActionError(ValueError):
    """A corporate action that cannot be true (a ratio that is not positive, an amount below zero)."""


@dataclass(frozen=True)
class ActionRecord:
    """One provider's report of one action, in the store's symbol spelling."""

    symbol: str
    kind: ActionKind
    ex_date: date
    provider: str
    provider_id: str | None = None  # the provider's own id of the event, when it gives one
    split_from: int | None = None  # old shares (reduced with split_to)
    split_to: int | None = None  # new shares
    cash_amount: float | None = None  # USD per share

    @property
    def ratio(self) -> Fraction:
        if self.kind is not ActionKind.SPLIT:
            raise ActionError(f"{self.describe()} is not a split: it has no ratio")
        return Fraction(self.split_to, self.split_from)

    @property
    def figures(self) -> tuple:
        """What providers can disagree on: the ratio of a split, the amount of a dividend."""
        return (self.split_from, self.split_to) if self.kind is ActionKind.SPLIT else (round(self.cash_amount, 6),)

    def describe(self) -> str:
        what = f"split {ratio_text(self.ratio)}" if self.kind is ActionKind.SPLIT else f"dividend {self.cash_amount:g}"
        return f"{self.symbol} {what} ex {self.ex_date.isoformat()} ({self.provider})"


def exact(value: object, what: str) -> Fraction:
    """A provider's number as an exact rational: 1.5 is 3/2, "4" is 4; never a binary float's noise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Fraction)):
        raise ActionError(f"{what} = {value!r} is not a number")
    try:
        number = Fraction(value) if isinstance(value, (int, Fraction)) else Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        raise ActionError(f"{what} = {value!r} is not a number") from None
    if number <= 0:
        raise ActionError(f"{what} = {value!r} must be positive")
    return number


def split_record(
    symbol: str, ex_date: date, provider: str, old_shares: object, new_shares: object, provider_id: str | None = None
) -> ActionRecord:
    """A split of `new_shares` for `old_shares` (4-for-1: new 4, old 1), its ratio reduced exactly."""
    ratio = exact(new_shares, f"{symbol} split on {ex_date} new shares") / exact(
        old_shares, f"{symbol} split on {ex_date} old shares"
    )
    return ActionRecord(symbol, ActionKind.SPLIT, ex_date, provider, provider_id,
                        split_from=ratio.denominator, split_to=ratio.numerator)


def dividend_record(
    symbol: str, ex_date: date, provider: str, amount: object, provider_id: str | None = None
) -> ActionRecord:
    cash = float(exact(amount, f"{symbol} dividend on {ex_date} amount"))
    return ActionRecord(symbol, ActionKind.CASH_DIVIDEND, ex_date, provider, provider_id, cash_amount=cash)


def ratio_text(ratio: Fraction) -> str:
    """New for old, as a split is announced: 4:1, 1:10, 3:2."""
    return f"{ratio.numerator}:{ratio.denominator}"


# ---------------------------------------------------------------------------- merging reports
Key = tuple[str, ActionKind, date]  # (symbol, kind, ex_date): one action, whoever reports it


def key_of(record: ActionRecord) -> Key:
    return record.symbol, record.kind, record.ex_date


def preferred(records: Sequence[ActionRecord], preference: Sequence[str]) -> ActionRecord:
    """The report whose figures stand for the action: the first provider in BACKFILL_PROVIDERS
    order (the one that serves the bars first), then by name."""
    rank = {name: i for i, name in enumerate(preference)}
    return min(records, key=lambda r: (rank.get(r.provider, len(rank)), r.provider))


@dataclass(frozen=True)
class Disagreement:
    """Providers that report one action with different figures, or one split on nearby dates."""

    symbol: str
    kind: ActionKind
    ex_date: date
    detail: str  # "alpaca 4:1, polygon 2:1"


def disagreements(records: Iterable[ActionRecord], *, near_days: int = 7) -> list[Disagreement]:
    """Actions whose providers disagree: on a split's ratio or a dividend's amount for the same
    ex-date, and on the date of a split (one provider's split within `near_days` calendar days of
    another's, a known off-by-days error of the feeds)."""
    by_key: dict[Key, list[ActionRecord]] = defaultdict(list)
    for record in records:
        by_key[key_of(record)].append(record)
    out = []
    for (symbol, kind, ex_date), reports in sorted(by_key.items()):
        if len({r.figures for r in reports}) > 1:
            out.append(Disagreement(symbol, kind, ex_date, ", ".join(_figure_text(r) for r in sorted(
                reports, key=lambda r: r.provider))))
    splits: dict[str, list[ActionRecord]] = defaultdict(list)
    for (symbol, kind, _), reports in by_key.items():
        if kind is ActionKind.SPLIT:
            splits[symbol].extend(reports)
    for symbol, reports in sorted(splits.items()):
        reports.sort(key=lambda r: (r.ex_date, r.provider))
        for a, b in zip(reports, reports[1:]):
            if a.ex_date != b.ex_date and a.provider != b.provider and (b.ex_date - a.ex_date).days <= near_days:
                only_a = not any(r.ex_date == a.ex_date and r.provider == b.provider for r in reports)
                only_b = not any(r.ex_date == b.ex_date and r.provider == a.provider for r in reports)
                if only_a and only_b:
                    out.append(Disagreement(symbol, ActionKind.SPLIT, a.ex_date,
                                            f"{a.provider} ex {a.ex_date}, {b.provider} ex {b.ex_date}: one split?"))
    return out


def _figure_text(record: ActionRecord) -> str:
    if record.kind is ActionKind.SPLIT:
        return f"{record.provider} {ratio_text(record.ratio)}"
    return f"{record.provider} {record.cash_amount:g}"


# ---------------------------------------------------------------------------- which bars are stale
def ex_date_start(ex_date: date) -> datetime:
    """00:00 New York of the ex-date: providers re-base history overnight, and the ex-date's
    pre-market already trades on the new basis."""
    return pd.Timestamp(ex_date).tz_localize(NEW_YORK).tz_convert("UTC").to_pydatetime()


def basis_since(ex_date: date, first_seen: datetime, *, historical: bool) -> datetime:
    """From when a split-adjusted provider serves the history before `ex_date` on the new share
    basis: bars of those sessions fetched earlier are stale.

    Providers apply a split from its ex-date on, and no later than we first saw it (we learn it from
    them). So: the later of the two. A split listed in the first answers about a symbol (no provider
    was asked about it before) is history, applied on its ex-date (`historical`): otherwise adding a
    symbol, or upgrading a store, would re-fetch every bar before every old split. The stored bars
    may refute that (domain/split_basis.py): then the split's first sight counts instead.
    """
    start = ex_date_start(ex_date)
    return start if historical else max(start, first_seen)


def repair_reason(symbol: str, ex_date: date, ratio: Fraction) -> str:
    """The ledger's rewrite_reason for partitions a split repair re-fetches."""
    return f"split {ratio_text(ratio)} of {symbol} ex {ex_date.isoformat()}: re-fetched on the new share basis"

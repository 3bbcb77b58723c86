"""Refresh the corporate actions of some symbols: ask every configured provider that publishes them,
and keep each provider's answer in the store (backfill_dagster/store/actions.py).

This is the work the `corporate_actions` asset does, as a plain function over the providers and the
store. The window is the whole stored history and a quarter ahead: splits and dividends are listed
late and corrected (a split's ratio or date is fixed days after it first appears), so one refresh re-reads them all — a few
calls for the whole watchlist at Alpaca and Polygon, one per symbol at Yahoo.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK
from backfill_dagster.domain.corporate_actions import Key
from backfill_dagster.providers.base import Provider
from backfill_dagster.store.actions import ActionStore

# Ex-dates this far ahead are asked for too: announced splits, and Alpaca's dividends, which it
# books (and filters) on their payable date, weeks after the ex-date.
DAYS_AHEAD = 90

Log = Callable[[str], None]


@dataclass
class RefreshReport:
    symbols: list[str]
    first: date
    last: date
    providers: list[str] = field(default_factory=list)  # those asked
    api_calls: Counter = field(default_factory=Counter)  # provider -> calls
    reports: Counter = field(default_factory=Counter)  # provider -> actions reported
    new: list[Key] = field(default_factory=list)  # actions seen for the first time
    failed: dict[tuple[str, str], str] = field(default_factory=dict)  # (provider, symbol) -> why

    @property
    def ok(self) -> bool:
        return not self.failed

    def failure_summary(self, limit: int = 10) -> str:
        lines = [f"{p} {s}: {why}" for (p, s), why in sorted(self.failed.items())[:limit]]
        if len(self.failed) > limit:
            lines.append(f"... and {len(self.failed) - limit} more")
        return "\n".join(lines)


def refresh_window(history_start: date, now: pd.Timestamp) -> tuple[date, date]:
    today = pd.Timestamp(now).tz_convert(NEW_YORK).date()
    return history_start, today + timedelta(days=DAYS_AHEAD)


def refresh_actions(
    symbols: Sequence[str],
    providers: Sequence[Provider],
    store: ActionStore,
    *,
    first: date,
    last: date,
    now: datetime,
    log: Log = lambda _msg: None,
) -> RefreshReport:
    """Ask each provider that publishes corporate actions about `symbols` (ex-dates first..last) and
    record its answers; symbols it failed for are reported, not recorded (nothing is lost: the next
    refresh asks again)."""
    symbols = list(dict.fromkeys(symbols))
    report = RefreshReport(symbols, first, last)
    preference = [p.name for p in providers]
    asked = set(symbols)
    for provider in providers:
        if not provider.publishes_corporate_actions:
            continue
        report.providers.append(provider.name)
        result = provider.corporate_actions(symbols, first, last)
        report.api_calls[provider.name] += result.api_calls
        for symbol, why in result.failed.items():
            report.failed[(provider.name, symbol)] = why
        answered = result.answered(symbols)
        kept = [r for r in result.records if r.symbol in asked and r.symbol not in result.failed]
        recorded = store.record(provider.name, answered, kept, checked_from=first, checked_through=last, now=now,
                                preference=preference)
        report.reports[provider.name] += len(kept)
        report.new += [k for k in recorded.new if k not in report.new]
        log(f"{provider.name}: {len(kept)} action(s) of {len(answered)} symbol(s) in {result.api_calls} call(s)"
            + (f"; {len(result.failed)} symbol(s) failed" if result.failed else ""))
    return report

"""Pick, per partition, the providers able to serve it, in the configured order of preference.

Eligibility is read from capabilities only: the timeframe, how far back the provider reaches, whether
the session is still trading (today) or closed (history), extended hours, and the store's single
adjustment mode — a provider that cannot honour it is never eligible, so a fallback can never mix
adjusted and raw bars in one history.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date

import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK, SessionCalendar
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers.base import Adjustment, Provider, ProviderConfigError


class Router:
    def __init__(
        self,
        providers: Sequence[Provider],
        calendar: SessionCalendar,
        *,
        extended: bool = False,
        adjustment: Adjustment = Adjustment.SPLIT,
    ):
        if not providers:
            raise ProviderConfigError("no providers configured: set BACKFILL_PROVIDERS (e.g. 'demo')")
        usable = [p for p in providers if adjustment in p.capabilities.adjustments]
        if not usable:
            names = ", ".join(p.name for p in providers)
            raise ProviderConfigError(
                f"none of the configured providers ({names}) can serve {adjustment.value}-adjusted "
                "bars: change BACKFILL_ADJUSTMENT or BACKFILL_PROVIDERS"
            )
        self.providers = list(providers)
        self.calendar = calendar
        self.extended = extended
        self.adjustment = adjustment

    def candidates(
        self, timeframe: Timeframe, session: date, now: pd.Timestamp
    ) -> list[Provider]:
        """Providers that can serve this timeframe and session now, most preferred first."""
        today = now.tz_convert(NEW_YORK).date()
        closed = self.calendar.has_closed(session, now, self.extended)
        chosen = []
        for provider in self.providers:
            caps = provider.capabilities
            if timeframe not in caps.timeframes or self.adjustment not in caps.adjustments:
                continue
            if self.extended and not caps.extended_hours:
                continue
            if not (caps.serves_closed_sessions if closed else caps.serves_open_session):
                continue
            if not caps.reaches(timeframe, session, today):
                continue
            chosen.append(provider)
        return chosen

    def assign(
        self, partitions: Iterable[tuple[str, date]], timeframe: Timeframe, now: pd.Timestamp
    ) -> dict[tuple[str, date], list[Provider]]:
        by_session: dict[date, list[Provider]] = {}
        out = {}
        for symbol, session in partitions:
            if session not in by_session:
                by_session[session] = self.candidates(timeframe, session, now)
            out[(symbol, session)] = list(by_session[session])
        return out

    def close(self) -> None:
        for provider in self.providers:
            provider.close()

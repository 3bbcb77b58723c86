"""Build providers by name from configuration. Adding a provider is one entry here."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from backfill_dagster.calendar import SessionCalendar
from backfill_dagster.providers.base import Provider, ProviderConfigError
from backfill_dagster.providers.demo import DemoProvider

Clock = Callable[[], pd.Timestamp]
Factory = Callable[[Mapping[str, str | None], SessionCalendar, Clock], Provider]


def _demo(_config: Mapping[str, str | None], calendar: SessionCalendar, clock: Clock) -> Provider:
    return DemoProvider(calendar, clock)


FACTORIES: dict[str, Factory] = {
    "demo": _demo,
}


def check_provider_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in FACTORIES]
    if unknown:
        raise ProviderConfigError(
            f"unknown provider(s) {', '.join(repr(n) for n in unknown)} in BACKFILL_PROVIDERS: "
            f"known providers are {', '.join(FACTORIES)}"
        )
    if len(set(names)) != len(names):
        raise ProviderConfigError(f"BACKFILL_PROVIDERS lists a provider twice: {','.join(names)}")


def build_providers(
    names: Sequence[str],
    config: Mapping[str, str | None],
    calendar: SessionCalendar,
    clock: Clock,
) -> list[Provider]:
    """Providers in order of preference; a missing key or bad URL fails here, at run start."""
    check_provider_names(names)
    return [FACTORIES[name](config, calendar, clock) for name in names]

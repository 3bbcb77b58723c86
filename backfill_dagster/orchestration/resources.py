"""Resources: the store and the providers, configured from the environment through Dagster.

Secrets (database passwords, provider keys) reach them as `EnvVar`s, so the UI shows the variable's
name, never its value.
"""

from __future__ import annotations

import dagster as dg

from backfill_dagster.calendar import SessionCalendar, xnys
from backfill_dagster.ingest import utcnow
from backfill_dagster.providers.base import Adjustment
from backfill_dagster.providers.registry import build_providers
from backfill_dagster.providers.router import Router
from backfill_dagster.settings import Settings
from backfill_dagster.store import BarStore, Watchlist


class StoreResource(dg.ConfigurableResource):
    """Where bars live, and what the store keeps: which hours, which price adjustment."""

    database_url: str
    extended_hours: bool = False
    adjustment: str = Adjustment.SPLIT.value

    def bar_store(self, calendar: SessionCalendar | None = None) -> BarStore:
        return BarStore.open(self.database_url, calendar or xnys())

    def watchlist(self) -> Watchlist:
        return Watchlist(self.bar_store().engine)


class ProvidersResource(dg.ConfigurableResource):
    """Market-data providers in order of preference (BACKFILL_PROVIDERS)."""

    names: list[str] = ["demo"]

    def router(self, store: StoreResource, calendar: SessionCalendar | None = None) -> Router:
        calendar = calendar or xnys()
        providers = build_providers(self.names, self._config(), calendar, utcnow)
        return Router(
            providers,
            calendar,
            extended=store.extended_hours,
            adjustment=Adjustment.parse(store.adjustment),
        )

    def _config(self) -> dict[str, str | None]:
        return {}


def store_resource(settings: Settings, env_has_database_url: bool) -> StoreResource:
    # A configured URL may hold a password: pass it by name so the UI never shows it.
    url = dg.EnvVar("BACKFILL_DATABASE_URL") if env_has_database_url else settings.resolved_database_url
    return StoreResource(
        database_url=url,
        extended_hours=settings.extended_hours,
        adjustment=settings.adjustment.value,
    )


def providers_resource(settings: Settings) -> ProvidersResource:
    return ProvidersResource(names=list(settings.providers))

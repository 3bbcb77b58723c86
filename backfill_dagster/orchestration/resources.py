"""Resources: the store and the providers, configured from the environment through Dagster.

Secrets (database passwords, provider keys) reach them as `EnvVar`s, so the UI shows the variable's
name, never its value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction

import dagster as dg
import pandas as pd

from backfill_dagster.domain.calendar import SessionCalendar, xnys
from backfill_dagster.domain.clock import utcnow
from backfill_dagster.domain.corporate_actions import ActionKind
from backfill_dagster.domain.split_factors import KnownSplits
from backfill_dagster.providers.base import Adjustment, Provider, SplitLookup
from backfill_dagster.providers.http import RetryPolicy
from backfill_dagster.providers.ratelimit import DEFAULT_WINDOW_S, RateLimit
from backfill_dagster.providers.registry import build_providers
from backfill_dagster.providers.router import Router
from backfill_dagster.settings import (
    DEFAULT_HTTP_ATTEMPTS,
    DEFAULT_HTTP_BACKOFF_S,
    DEFAULT_RATE_MAX_WAIT_S,
    PROVIDER_ENV_VARS,
    Settings,
    provider_variables_set,
)
from backfill_dagster.store import BarStore, Watchlist
from backfill_dagster.store.actions import ActionStore
from backfill_dagster.store.budget import SharedBudget


class StoreResource(dg.ConfigurableResource):
    """Where bars live, and what the store keeps: which hours, which price adjustment, and whether
    final answers with fewer bars may replace final stored ones (never, unless asked)."""

    database_url: str
    extended_hours: bool = False
    adjustment: str = Adjustment.SPLIT.value
    replace_fewer_bars: bool = False

    def bar_store(self, calendar: SessionCalendar | None = None) -> BarStore:
        return BarStore.open(self.database_url, calendar or xnys())

    def watchlist(self) -> Watchlist:
        return Watchlist(self.bar_store().engine)

    def actions(self) -> ActionStore:
        """The corporate-actions tables."""
        return ActionStore(self.bar_store().engine)


class ProvidersResource(dg.ConfigurableResource):
    """Market-data providers in order of preference (BACKFILL_PROVIDERS), their keys and endpoints
    (from the environment), and the request budget each one shares across all runs."""

    names: list[str] = ["demo"]
    alpaca_api_key: str | None = None
    alpaca_api_secret: str | None = None
    alpaca_data_url: str | None = None
    alpaca_feed: str | None = None
    polygon_api_key: str | None = None
    polygon_api_url: str | None = None
    polygon_history_days: str | None = None
    tradier_api_token: str | None = None
    tradier_api_url: str | None = None
    yahoo_chart_url: str | None = None
    flatfiles_endpoint_url: str | None = None
    flatfiles_bucket: str | None = None
    flatfiles_access_key_id: str | None = None
    flatfiles_secret_access_key: str | None = None
    flatfiles_cache_dir: str | None = None
    rate_limits: dict[str, int] = {}
    rate_window_s: float = DEFAULT_WINDOW_S
    rate_max_wait_s: float = DEFAULT_RATE_MAX_WAIT_S
    http_attempts: int = DEFAULT_HTTP_ATTEMPTS
    http_backoff_s: float = DEFAULT_HTTP_BACKOFF_S

    def router(self, store: StoreResource, calendar: SessionCalendar | None = None) -> Router:
        calendar = calendar or xnys()
        budgets = self.budgets(store)
        providers = build_providers(
            self.names, self.config(), calendar, utcnow, budgets=budgets, policy=self.retry_policy()
        )
        lookup = known_splits_lookup(store)
        for provider in providers:
            provider.use_known_splits(lookup)
        return Router(
            providers,
            calendar,
            extended=store.extended_hours,
            adjustment=Adjustment.parse(store.adjustment),
        )

    def action_sources(self, store: StoreResource, calendar: SessionCalendar | None = None) -> list[Provider]:
        """The configured providers, in order of preference, with their shared budgets: those that
        publish corporate actions answer `corporate_actions`. Close them when done."""
        return build_providers(
            self.names, self.config(), calendar or xnys(), utcnow, budgets=self.budgets(store),
            policy=self.retry_policy(),
        )

    def budgets(self, store: StoreResource) -> dict[str, SharedBudget]:
        """One shared budget per provider, kept in the store's database."""
        engine = store.bar_store().engine
        return {
            name: SharedBudget(
                engine, name, RateLimit(self.rate_limits.get(name, 0), self.rate_window_s),
                max_wait_s=self.rate_max_wait_s,
            )
            for name in self.names
        }

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.http_attempts, backoff_s=self.http_backoff_s)

    def config(self) -> dict[str, str | None]:
        """The provider settings by their environment variable names, as the factories read them."""
        return {name: getattr(self, name.lower()) for name in PROVIDER_ENV_VARS}


def known_splits_lookup(store: StoreResource) -> SplitLookup:
    """What the corporate-actions tables know of some symbols' splits, read when a provider asks
    (a raw source serving the split-adjusted store: the flat files)."""
    actions = store.actions()

    def lookup(symbols: Sequence[str]) -> KnownSplits:
        checks = actions.checks(symbols)
        checked_from = {}
        for symbol, first in zip(checks["symbol"], checks["checked_from"]):
            first = pd.Timestamp(first).date()
            checked_from[symbol] = min(first, checked_from.get(symbol, first))
        found = actions.actions(symbols)
        splits: dict[str, list] = {}
        if len(found):
            found = found[found["kind"] == ActionKind.SPLIT.value]
            for row in found.itertuples(index=False):
                splits.setdefault(row.symbol, []).append((row.ex_date, Fraction(int(row.split_to), int(row.split_from))))
        return KnownSplits(checked_from=checked_from, splits=splits)

    return lookup


def store_resource(settings: Settings, env_has_database_url: bool) -> StoreResource:
    # A configured URL may hold a password: pass it by name so the UI never shows it.
    url = dg.EnvVar("BACKFILL_DATABASE_URL") if env_has_database_url else settings.resolved_database_url
    return StoreResource(
        database_url=url,
        extended_hours=settings.extended_hours,
        adjustment=settings.adjustment.value,
        replace_fewer_bars=settings.replace_fewer_bars,
    )


def providers_resource(settings: Settings, env: Mapping[str, str] | None = None) -> ProvidersResource:
    return ProvidersResource(
        names=list(settings.providers),
        rate_limits=dict(settings.rate_limits),
        rate_window_s=settings.rate_window_s,
        rate_max_wait_s=settings.rate_max_wait_s,
        http_attempts=settings.http_attempts,
        http_backoff_s=settings.http_backoff_s,
        **{name.lower(): dg.EnvVar(name) for name in provider_variables_set(env)},
    )

"""Build providers by name from configuration. Adding a provider is one entry here."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence


from backfill_dagster.domain.calendar import SessionCalendar
from backfill_dagster.domain.clock import Clock
from backfill_dagster.providers.alpaca import AlpacaProvider
from backfill_dagster.providers.base import Provider, ProviderConfigError
from backfill_dagster.providers.demo import DemoProvider
from backfill_dagster.providers.flatfiles import FlatFilesProvider
from backfill_dagster.providers.http import Budget, RetryPolicy
from backfill_dagster.providers.polygon import PolygonProvider
from backfill_dagster.providers.tradier import TradierProvider
from backfill_dagster.providers.yahoo import YahooProvider

# (config by environment variable name, calendar, clock, the provider's shared request budget, the
# HTTP client's retry policy)
Factory = Callable[[Mapping[str, str | None], SessionCalendar, Clock, Budget | None, RetryPolicy | None], Provider]


def _demo(
    _config: Mapping[str, str | None], calendar: SessionCalendar, clock: Clock, _budget: Budget | None = None,
    _policy: RetryPolicy | None = None,
) -> Provider:
    return DemoProvider(calendar, clock)  # local and free: no budget to spend


FACTORIES: dict[str, Factory] = {
    "demo": _demo,
    "alpaca": AlpacaProvider.from_config,
    "polygon": PolygonProvider.from_config,
    "tradier": TradierProvider.from_config,
    "yahoo": YahooProvider.from_config,
    "flatfiles": FlatFilesProvider.from_config,
}


# Each provider's class, for what it is without building it (no keys needed).
CLASSES: dict[str, type[Provider]] = {
    "demo": DemoProvider,
    "alpaca": AlpacaProvider,
    "polygon": PolygonProvider,
    "tradier": TradierProvider,
    "yahoo": YahooProvider,
    "flatfiles": FlatFilesProvider,
}


def action_publishers(names: Sequence[str] | None = None) -> list[str]:
    """The providers among `names` (default: every known one) that publish corporate actions."""
    return [n for n in (FACTORIES if names is None else names) if CLASSES[n].publishes_corporate_actions]


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
    budgets: Mapping[str, Budget] | None = None,
    policy: RetryPolicy | None = None,
) -> list[Provider]:
    """Providers in order of preference; a missing key or bad URL fails here, at run start."""
    check_provider_names(names)
    budgets = budgets or {}
    return [FACTORIES[name](config, calendar, clock, budgets.get(name), policy) for name in names]

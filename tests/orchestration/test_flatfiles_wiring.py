"""The flat-files provider as the providers resource builds it: its keys as EnvVars, and the splits
it adjusts with read from the corporate-actions tables."""

from datetime import date, datetime, timezone
from fractions import Fraction

import dagster as dg

from backfill_dagster.domain.corporate_actions import split_record
from backfill_dagster.orchestration.resources import ProvidersResource, StoreResource, providers_resource
from backfill_dagster.providers.flatfiles import FlatFilesProvider
from backfill_dagster.settings import Settings

SECRET = "flat-s3cr3t-0123456789"


def test_the_key_pair_reaches_dagster_as_env_vars(tmp_path):
    resource = providers_resource(Settings(data_dir=tmp_path), {
        "FLATFILES_ACCESS_KEY_ID": "AKID", "FLATFILES_SECRET_ACCESS_KEY": SECRET, "FLATFILES_BUCKET": "flatfiles"})
    assert isinstance(resource.flatfiles_secret_access_key, dg.EnvVar)
    assert resource.flatfiles_secret_access_key.env_var_name == "FLATFILES_SECRET_ACCESS_KEY"
    assert SECRET not in repr(resource)


def test_the_router_hands_the_provider_the_stores_known_splits(store_url):
    store = StoreResource(database_url=store_url)
    actions = store.actions()
    now = datetime(2024, 7, 1, tzinfo=timezone.utc)
    actions.record("alpaca", ["NVDA", "AAPL"], [split_record("NVDA", date(2024, 6, 10), "alpaca", 1, 10)],
                   checked_from=date(2024, 1, 1), checked_through=date(2024, 9, 30), now=now, preference=["alpaca"])
    resource = ProvidersResource(names=["flatfiles"], flatfiles_access_key_id="AKID",
                                 flatfiles_secret_access_key=SECRET, flatfiles_endpoint_url="http://127.0.0.1:9")
    router = resource.router(store)
    try:
        (provider,) = router.providers
        assert isinstance(provider, FlatFilesProvider)
        known = provider._splits(["NVDA", "AAPL", "MSFT"])
    finally:
        router.close()
    assert known.factor("NVDA", date(2024, 6, 7), date(2024, 7, 1)) == Fraction(10)
    assert known.unknown("AAPL", date(2024, 3, 1)) is None  # checked, no split
    assert "never checked" in known.unknown("MSFT", date(2024, 3, 1))
    assert "checked from 2024-01-01 only" in known.unknown("NVDA", date(2023, 12, 1))

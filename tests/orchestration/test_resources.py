"""Provider keys reach the resources as EnvVars: resolved in the run, never shown or stored."""

import dagster as dg

from backfill_dagster.definitions import build_definitions
from backfill_dagster.orchestration.resources import ProvidersResource, providers_resource
from backfill_dagster.settings import PROVIDER_ENV_VARS, Settings

SECRET = "sk-live-0123456789abcdef"


def test_only_the_variables_that_are_set_become_env_vars(tmp_path):
    settings = Settings(data_dir=tmp_path)
    resource = providers_resource(settings, {"ALPACA_API_KEY": SECRET, "POLYGON_API_URL": "http://127.0.0.1:9"})
    assert isinstance(resource.alpaca_api_key, dg.EnvVar) and resource.alpaca_api_key.env_var_name == "ALPACA_API_KEY"
    assert isinstance(resource.polygon_api_url, dg.EnvVar)
    assert resource.tradier_api_token is None  # unset: no EnvVar that would fail to resolve
    assert SECRET not in repr(resource)


def test_env_vars_resolve_at_run_time_to_the_providers_config(monkeypatch, tmp_path):
    monkeypatch.setenv("ALPACA_API_KEY", SECRET)
    monkeypatch.setenv("ALPACA_API_SECRET", "shh")
    resource = providers_resource(Settings(data_dir=tmp_path), {"ALPACA_API_KEY": "x", "ALPACA_API_SECRET": "y"})
    with dg.build_resources({"providers": resource}) as resources:
        config = resources.providers.config()
    assert config["ALPACA_API_KEY"] == SECRET and config["ALPACA_API_SECRET"] == "shh"
    assert set(config) == set(PROVIDER_ENV_VARS)


def test_the_definitions_never_carry_a_key_value(monkeypatch, tmp_path):
    monkeypatch.setenv("ALPACA_API_KEY", SECRET)
    defs = build_definitions(Settings(data_dir=tmp_path))
    providers = defs.resources["providers"]
    assert isinstance(providers, ProvidersResource)
    # what the UI shows for the resource: its config as declared, where the key is an EnvVar by name
    shown = repr(providers._get_non_default_public_field_values()) + repr(providers)
    assert SECRET not in shown and "ALPACA_API_KEY" in shown


def test_rate_limits_and_budgets_come_from_settings(tmp_path, store_url):
    settings = Settings.from_env({"ALPACA_RATE_LIMIT": "150", "BACKFILL_RATE_WINDOW_SECONDS": "30",
                                  "BACKFILL_DATA_DIR": str(tmp_path)})
    resource = providers_resource(settings, {})
    assert resource.rate_limits["alpaca"] == 150 and resource.rate_window_s == 30
    from backfill_dagster.orchestration.resources import StoreResource

    budgets = ProvidersResource(names=["demo"], rate_limits={"demo": 0}).budgets(StoreResource(database_url=store_url))
    assert budgets["demo"].rate.limit == 0

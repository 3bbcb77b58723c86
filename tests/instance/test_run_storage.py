"""The production instance's run storage refuses to load without its connection variables in one
sentence saying what to set, and otherwise loads as dagster-postgres's own (dagster.yaml)."""

import pytest
from dagster._core.errors import DagsterInvalidConfigError

from backfill_dagster.instance.run_storage import (
    InstanceEnvironmentError,
    PooledPostgresRunStorage,
    unset_variables,
    unset_variables_message,
)

POSTGRES_DB = {
    "scheme": "postgresql+psycopg2",
    "hostname": {"env": "DAGSTER_PG_HOST"},
    "port": {"env": "DAGSTER_PG_PORT"},
    "db_name": {"env": "DAGSTER_PG_DB"},
    "username": {"env": "DAGSTER_PG_USER"},
    "password": {"env": "DAGSTER_PG_PASSWORD"},
}
VARIABLES = ["DAGSTER_PG_DB", "DAGSTER_PG_HOST", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_PORT", "DAGSTER_PG_USER"]


def test_unset_variables_are_the_env_values_the_environment_lacks():
    assert unset_variables(POSTGRES_DB, {}) == VARIABLES
    # an empty password is a set variable (trust authentication); literal values need nothing
    env = {"DAGSTER_PG_HOST": "h", "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": "d"}
    assert unset_variables(POSTGRES_DB, env) == ["DAGSTER_PG_PORT", "DAGSTER_PG_USER"]
    assert unset_variables({"hostname": "127.0.0.1", "port": 5432}, {}) == []


def test_the_message_is_one_sentence_naming_what_to_set():
    message = unset_variables_message(["DAGSTER_PG_DB"])
    assert message.count(". ") == 0 and message.endswith(".")
    assert "DAGSTER_PG_DB is not set" in message and 'README, "Deploy"' in message
    assert "DAGSTER_HOME=" in message
    assert "are not set" in unset_variables_message(["DAGSTER_PG_DB", "DAGSTER_PG_HOST"])


def test_the_storage_refuses_to_load_naming_every_unset_variable(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_PG_HOST", "127.0.0.1")
    with pytest.raises(InstanceEnvironmentError) as raised:
        PooledPostgresRunStorage.from_config_value(None, {"postgres_db": POSTGRES_DB})
    assert raised.value.message == unset_variables_message(
        ["DAGSTER_PG_DB", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_PORT", "DAGSTER_PG_USER"])


def test_a_bad_value_is_still_refused_by_dagster_postgres_s_own_schema(monkeypatch):
    for name in VARIABLES:
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("DAGSTER_PG_PORT", "not-a-port")
    with pytest.raises(DagsterInvalidConfigError, match="DAGSTER_PG_PORT|port"):
        PooledPostgresRunStorage.from_config_value(None, {"postgres_db": POSTGRES_DB})
    with pytest.raises(DagsterInvalidConfigError, match="nonsense"):
        PooledPostgresRunStorage.from_config_value(None, {"postgres_db": {**POSTGRES_DB, "nonsense": 1}})

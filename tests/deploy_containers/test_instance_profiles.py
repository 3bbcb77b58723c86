"""Every instance profile loads the classes it means to, without a container engine or a cluster:
the production dagster.yaml, the container profile (deploy/docker/dagster.yaml), the instance
Dagster's Helm chart writes from deploy/helm/values.yaml, and any other instance file under
deploy/. Each is checked against Dagster's instance schema and each configured class against its
own config schema (`config_type()`), with the environment it reads set to dummy values; the
container profile is also loaded whole on PostgreSQL."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._serdes import ConfigurableClassData

from tests.conftest import PG_ADMIN_URL, no_commit_wait
from tests.deploy_containers.helm_instance import render_instance

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
HELM_VALUES = ROOT / "deploy" / "helm" / "values.yaml"
INSTANCE_SECTIONS = {"run_storage", "event_log_storage", "schedule_storage", "storage", "compute_logs", "run_launcher",
                     "run_coordinator", "scheduler", "local_artifact_storage"}
# The sections the container profile replaces; every other one is the root file's.
CONTAINER_SECTIONS = {"run_launcher", "compute_logs"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def instance_files() -> dict[str, Path]:
    """The root dagster.yaml and every instance file under deploy/ (compose, Helm values and
    workspaces are not instance files)."""
    files = {"root": ROOT / "dagster.yaml"}
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        data = load_yaml(path)
        if isinstance(data, dict) and INSTANCE_SECTIONS & set(data):
            files[str(path.relative_to(ROOT))] = path
    return files


def profiles() -> dict[str, dict[str, Any]]:
    found = {name: load_yaml(path) for name, path in instance_files().items()}
    found["helm"] = render_instance(load_yaml(HELM_VALUES))
    return found


def env_references(config: Any) -> set[str]:
    """Every `{env: NAME}` the instance reads."""
    if isinstance(config, dict):
        if set(config) == {"env"}:
            return {config["env"]}
        return set().union(*(env_references(v) for v in config.values())) if config else set()
    if isinstance(config, list):
        return set().union(*(env_references(v) for v in config)) if config else set()
    return set()


def dummy_env(config: Any) -> dict[str, str]:
    env = {name: "dummy" for name in env_references(config)}
    env.update({k: v for k, v in {"DAGSTER_PG_PORT": "5432", "DAGSTER_COMPUTE_LOG_ENDPOINT_URL": "http://127.0.0.1:9"}.items()
                if k in env})
    return env


def configured_classes(config: dict[str, Any], tmp_path: Path, monkeypatch) -> dict[str, str]:
    """Validate `config` as Dagster does when it loads an instance, then each configured class's
    config against that class's schema; {section: class name}."""
    for name, value in dummy_env(config).items():
        monkeypatch.setenv(name, value)
    home = tmp_path / uuid.uuid4().hex
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    dagster_instance_config(str(home))  # the instance schema; raises DagsterInvalidConfigError
    classes = {}
    for section, value in config.items():
        if isinstance(value, dict) and {"module", "class"} <= set(value):
            data = ConfigurableClassData(value["module"], value["class"], yaml.safe_dump(value.get("config") or {}))
            klass = getattr(__import__(data.module_name, fromlist=[data.class_name]), data.class_name)
            result = process_config(resolve_to_config_type(klass.config_type()), data.config_dict)
            assert result.success, f"{section}: {[e.message for e in result.errors]}"
            classes[section] = f"{klass.__module__}.{klass.__name__}"
    return classes


EXPECTED = {
    "root": {
        "run_storage": "backfill_dagster.instance.run_storage.PooledPostgresRunStorage",
        "event_log_storage": "backfill_dagster.instance.event_log.BulkPostgresEventLogStorage",
        "compute_logs": "backfill_dagster.instance.compute_logs.TeeComputeLogManager",
        "run_launcher": "backfill_dagster.instance.run_launcher.WorkerCheckingRunLauncher",
    },
    "deploy/docker/dagster.yaml": {
        "run_storage": "backfill_dagster.instance.run_storage.PooledPostgresRunStorage",
        "event_log_storage": "backfill_dagster.instance.event_log.BulkPostgresEventLogStorage",
        "compute_logs": "backfill_dagster.instance.s3_compute_logs.TeeS3ComputeLogManager",
        "run_launcher": "dagster_docker.docker_run_launcher.DockerRunLauncher",
    },
    "helm": {
        "run_storage": "dagster_postgres.run_storage.run_storage.PostgresRunStorage",
        "event_log_storage": "dagster_postgres.event_log.event_log.PostgresEventLogStorage",
        "compute_logs": "backfill_dagster.instance.s3_compute_logs.TeeS3ComputeLogManager",
        "run_launcher": "dagster_k8s.launcher.K8sRunLauncher",
    },
}


@pytest.mark.parametrize("name", sorted(profiles()))
def test_every_profile_validates_against_dagster_and_its_classes(name, tmp_path, monkeypatch):
    classes = configured_classes(profiles()[name], tmp_path, monkeypatch)
    if name not in EXPECTED:  # another instance file under deploy/: valid is what is asked of it here
        return
    for section, klass in EXPECTED[name].items():
        assert classes[section] == klass, section
    assert classes["schedule_storage"] == "dagster_postgres.schedule_storage.schedule_storage.PostgresScheduleStorage"
    assert classes["run_coordinator"] == "dagster._core.run_coordinator.queued_run_coordinator.QueuedRunCoordinator"


def test_the_three_profiles_are_all_found():
    assert {"root", "deploy/docker/dagster.yaml", "helm"} <= set(profiles())


def test_a_misspelled_setting_fails_validation(tmp_path, monkeypatch):
    config = profiles()["deploy/docker/dagster.yaml"]
    config["run_launcher"]["config"]["netwrok"] = config["run_launcher"]["config"].pop("network")
    with pytest.raises(AssertionError, match="netwrok"):
        configured_classes(config, tmp_path, monkeypatch)
    config = profiles()["helm"]
    config["compute_logs"]["config"].pop("bucket")
    with pytest.raises(AssertionError, match="bucket"):
        configured_classes(config, tmp_path, monkeypatch)


def test_the_container_profile_is_the_root_one_but_for_its_launcher_and_logs():
    root, docker = load_yaml(ROOT / "dagster.yaml"), load_yaml(DOCKER / "dagster.yaml")
    assert set(root) == set(docker)
    for section in set(root) - CONTAINER_SECTIONS:
        assert docker[section] == root[section], section


def test_the_helm_profile_keeps_the_root_ones_run_policy():
    root, helm = load_yaml(ROOT / "dagster.yaml"), profiles()["helm"]
    for section in ("run_monitoring", "run_retries"):
        assert {k: v for k, v in root[section].items() if k in helm[section]} == helm[section], section
        assert set(helm[section]) >= set(root[section]) - {"retry_on_asset_or_op_failure"}, section
    assert helm["concurrency"] == root["concurrency"]
    assert helm["python_logs"] == root["python_logs"]
    assert helm["run_launcher"]["config"]["env_secrets"] == ["backfill-dagster-env"]
    # the chart's storages, on psycopg2 as the root file's
    assert helm["run_storage"]["config"]["postgres_db"]["scheme"] == root["run_storage"]["config"]["postgres_db"]["scheme"]


def test_the_k8s_launcher_gets_as_far_as_looking_for_its_cluster(monkeypatch):
    from kubernetes.config import ConfigException

    launcher = profiles()["helm"]["run_launcher"]
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    data = ConfigurableClassData(launcher["module"], launcher["class"], yaml.safe_dump(launcher["config"]))
    with pytest.raises(ConfigException, match="Service host/port is not set"):
        data.rehydrate()


@pytest.mark.postgres
def test_the_container_profile_loads_whole_on_postgres(tmp_path, monkeypatch):
    """The instance a container starts with: PostgreSQL for real, the Docker launcher built (it
    talks to Docker only when it launches), the S3 manager built (it talks to S3 only on use)."""
    from dagster_docker import DockerRunLauncher

    from backfill_dagster.instance.s3_compute_logs import TeeS3ComputeLogManager

    name = f"bfd_docker_profile_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        no_commit_wait(admin, name)
    try:
        shutil.copy(DOCKER / "dagster.yaml", tmp_path / "dagster.yaml")
        pg = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_URL)
        compose_env = compose_environment(load_yaml(DOCKER / "compose.yaml")["services"]["daemon"])
        for key in compose_env:  # what compose sets in the container, here set for this process
            monkeypatch.setenv(key, "")
        for key, value in {
            "DAGSTER_PG_HOST": pg.get("host", "127.0.0.1"), "DAGSTER_PG_PORT": str(pg.get("port", 5432)),
            "DAGSTER_PG_DB": name, "DAGSTER_PG_USER": pg.get("user", "postgres"), "DAGSTER_PG_PASSWORD": pg.get("password", ""),
            "DAGSTER_COMPUTE_LOG_BUCKET": "logs", "DAGSTER_COMPUTE_LOG_PREFIX": "p",
            "DAGSTER_COMPUTE_LOG_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            launcher = instance.run_launcher
            assert isinstance(launcher, DockerRunLauncher)
            assert launcher.networks == ["backfill_dagster"] and launcher.supports_check_run_worker_health
            assert isinstance(instance.compute_log_manager, TeeS3ComputeLogManager)
            assert instance.compute_log_manager._s3_bucket == "logs"
            assert type(instance.run_storage).__name__ == "PooledPostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "BulkPostgresEventLogStorage"
            assert instance.run_monitoring_enabled and instance.run_retries_enabled
            # every name the launcher passes on to a run container is set where it runs (the
            # daemon): DockerRunLauncher refuses to launch with one missing
            from dagster._core.utils import parse_env_var

            forwarded = dict(parse_env_var(v) for v in launcher.env_vars)  # raises naming one unset
            assert forwarded["DAGSTER_PG_DB"] == name and forwarded["DAGSTER_COMPUTE_LOG_BUCKET"] == "logs"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping"
    return {k: str(v) for k, v in env.items()}

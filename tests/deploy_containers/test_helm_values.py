"""deploy/helm/values.yaml, read without a cluster: every pod runs this project's image with its
Secret, the code location server's arguments are ones the installed `dagster api grpc` takes, and
the PostgreSQL password Secret is the one the chart reads. The instance these values produce is
checked in test_instance_profiles.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VALUES = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
SECRET = {"name": "backfill-dagster-env"}


def test_every_pod_runs_the_projects_image_with_its_secret():
    [deployment] = VALUES["dagster-user-deployments"]["deployments"]
    images = [deployment["image"], VALUES["dagsterWebserver"]["image"], VALUES["dagsterDaemon"]["image"]]
    assert all(image == images[0] for image in images) and images[0]["repository"].endswith("/backfill-dagster")
    for env_secrets in (deployment["envSecrets"], VALUES["dagsterWebserver"]["envSecrets"],
                        VALUES["dagsterDaemon"]["envSecrets"], VALUES["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"]):
        assert env_secrets == [SECRET]
    # runs get the code location's image, env and Secret
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}


def test_the_code_location_server_arguments_are_accepted():
    [deployment] = VALUES["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "backfill_dagster"]
    help_text = subprocess.run([BIN / "dagster", "api", "grpc", "--help"], capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "-m, --module-name" in help_text.stdout


def test_postgresql_is_external_with_its_password_from_a_secret():
    assert VALUES["postgresql"]["enabled"] is False and VALUES["generatePostgresqlPasswordSecret"] is False
    assert VALUES["global"]["postgresqlSecretName"] == "backfill-dagster-postgresql"
    assert "postgresql-password" in (ROOT / "deploy" / "helm" / "values.yaml").read_text()
    assert VALUES["runLauncher"]["type"] == "K8sRunLauncher"
    assert VALUES["computeLogManager"]["type"] == "CustomComputeLogManager"

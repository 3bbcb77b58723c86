"""deploy/docker/compose.yaml, read without a container engine: its services run the executables
and flags the installed Dagster accepts, reach each other by the names the instance and the
workspace use, and give every process (and, through the run launcher, every run container) the
environment the instance and the project read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from backfill_dagster.settings import Settings, env_variables
from tests.deploy_containers.test_instance_profiles import env_references

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
BIN = Path(sys.executable).parent
DAGSTER_SERVICES = ("migrate", "code_location", "webserver", "daemon")
# Not passed to run containers: the image sets DAGSTER_HOME; the project sets
# DAGSTER_EVENT_BATCH_SIZE in each process unless set (an empty value would not be a number);
# BACKFILL_DATA_DIR is unused when BACKFILL_DATABASE_URL is set.
# DAGSTER_BACKFILL_RETRY_DEFINITION_CHANGED_ERROR: the daemon's own, set by the project's instance
# plug-ins unless the operator set it (an empty value from Compose would count as set, and false)
NOT_FORWARDED = {"DAGSTER_HOME", "DAGSTER_EVENT_BATCH_SIZE", "BACKFILL_DATA_DIR",
                 "DAGSTER_BACKFILL_RETRY_DEFINITION_CHANGED_ERROR"}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def instance():
    return yaml.safe_load((DOCKER / "dagster.yaml").read_text())


@pytest.fixture(scope="module")
def workspace():
    return yaml.safe_load((DOCKER / "workspace.yaml").read_text())


def test_the_services_of_dagsters_docker_deployment(compose):
    assert set(compose["services"]) == {"postgresql", *DAGSTER_SERVICES}
    images = {compose["services"][s]["image"] for s in DAGSTER_SERVICES}
    assert images == {"backfill-dagster:${BACKFILL_IMAGE_TAG:-0.1.0}"}  # one image for all
    for name in DAGSTER_SERVICES:
        assert compose["services"][name]["build"] == {"context": "../..", "dockerfile": "deploy/docker/Dockerfile"}
    assert (DOCKER / compose["services"]["migrate"]["build"]["context"] / "deploy/docker/Dockerfile").resolve() == \
        (DOCKER / "Dockerfile").resolve()


def test_the_commands_name_the_right_executables_and_flags(compose, workspace):
    services = compose["services"]
    [location] = workspace["load_from"]
    grpc = location["grpc_server"]
    code = services["code_location"]["command"]
    assert code[:3] == ["dagster", "code-server", "start"]
    assert option(code, "-h") == "0.0.0.0" and option(code, "-p") == str(grpc["port"])
    assert option(code, "-m") == "backfill_dagster" and option(code, "--location-name") == grpc["location_name"]
    assert grpc["host"] == "code_location"  # the service's name on compose's network
    image_workspace = "/opt/dagster/dagster_home/workspace.yaml"
    assert f"COPY deploy/docker/dagster.yaml deploy/docker/workspace.yaml {Path(image_workspace).parent}/" in \
        (DOCKER / "Dockerfile").read_text()
    web = services["webserver"]["command"]
    assert web[0] == "dagster-webserver" and option(web, "-w") == image_workspace and option(web, "-p") == "3000"
    assert services["webserver"]["ports"] == ["${DAGSTER_WEBSERVER_PORT:-3000}:3000"]
    daemon = services["daemon"]["command"]
    assert daemon[:2] == ["dagster-daemon", "run"] and option(daemon, "-w") == image_workspace
    assert services["migrate"]["command"] == ["sh", "-c", "backfill-dagster db-init && dagster instance migrate"]
    # the daemon starts run containers and the webserver stops them: both reach the Docker socket
    for name in ("webserver", "daemon"):
        assert "/var/run/docker.sock:/var/run/docker.sock" in services[name]["volumes"]
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


@pytest.mark.parametrize("command", [
    ["dagster", "code-server", "start"], ["dagster-webserver"], ["dagster-daemon", "run"],
    ["dagster", "instance", "migrate"], ["backfill-dagster", "db-init"],
])
def test_every_flag_the_services_pass_is_one_the_installed_command_takes(compose, command):
    used = {arg for service in compose["services"].values() for cmd in [service.get("command") or []]
            if cmd[:len(command)] == command for arg in cmd if arg.startswith("-")}
    help_text = subprocess.run([BIN / command[0], *command[1:], "--help"], capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0, help_text.stderr
    for flag in used:
        assert re.search(rf"(^|[\s,]){re.escape(flag)}([\s,]|$)", help_text.stdout, re.M), (command, flag)


def test_every_process_gets_the_environment_the_instance_reads(compose, instance):
    needed = env_references(instance)
    assert {"DAGSTER_PG_PASSWORD", "DAGSTER_COMPUTE_LOG_BUCKET", "DAGSTER_COMPUTE_LOG_ENDPOINT_URL"} <= needed
    for name in DAGSTER_SERVICES:
        env = compose["services"][name]["environment"]
        assert needed <= set(env), (name, needed - set(env))
    postgres = compose["services"]["postgresql"]["environment"]
    env = compose["services"]["daemon"]["environment"]
    assert (env["DAGSTER_PG_HOST"], env["DAGSTER_PG_USER"], env["DAGSTER_PG_DB"]) == \
        ("postgresql", postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])
    assert env["BACKFILL_DATABASE_URL"] == "postgresql://dagster:${DAGSTER_PG_PASSWORD}@postgresql:5432/backfill"
    assert "CREATE DATABASE backfill OWNER dagster;" in (DOCKER / "initdb" / "10-backfill-database.sql").read_text()


def test_run_containers_get_what_the_instance_and_the_project_read(compose, instance):
    launcher = instance["run_launcher"]["config"]
    forwarded = set(launcher["env_vars"])
    assert len(forwarded) == len(launcher["env_vars"])
    # a run container loads the instance and the definitions: it needs both's variables
    assert env_references(instance) <= forwarded
    assert set(env_variables()) - NOT_FORWARDED <= forwarded, set(env_variables()) - NOT_FORWARDED - forwarded
    # and the daemon, which starts it, must have every one set (DockerRunLauncher refuses otherwise)
    daemon_env = compose["services"]["daemon"]["environment"]
    assert forwarded <= set(daemon_env), forwarded - set(daemon_env)
    assert launcher["network"] == "backfill_dagster" == compose["networks"]["backfill_dagster"]["name"]
    assert compose["services"]["code_location"]["environment"]["DAGSTER_CURRENT_IMAGE"] == \
        compose["services"]["code_location"]["image"]


def test_each_variable_comes_from_the_one_of_its_own_name(compose):
    """`NAME: ${NAME...}`, so a typo cannot pass one setting's value to another."""
    env = compose["services"]["daemon"]["environment"]
    for key, value in env.items():
        for name in re.findall(r"\$\{(\w+)", str(value)):
            assert name == key or (key, name) == ("BACKFILL_DATABASE_URL", "DAGSTER_PG_PASSWORD"), (key, value)


def test_a_setting_left_out_of_the_env_file_keeps_its_default(compose):
    """Compose sets an unset optional variable to an empty string; the project reads that as its
    default, so a deployment that sets none behaves as the documented defaults."""
    env = compose["services"]["daemon"]["environment"]
    optional = {k for k, v in env.items() if str(v) == f"${{{k}:-}}"}
    assert {"BACKFILL_PROVIDERS", "BACKFILL_HISTORY_START", "ALPACA_API_KEY", "BACKFILL_BOX_PARTITIONS"} <= optional
    assert Settings.from_env({k: "" for k in optional}) == Settings.from_env({})
    from backfill_dagster.instance.backfill_runs import DEFAULT_BOX_PARTITIONS, box_partitions

    assert box_partitions({"BACKFILL_BOX_PARTITIONS": ""}) == DEFAULT_BOX_PARTITIONS


def option(command: list[str], flag: str) -> str:
    assert flag in command, (flag, command)
    return command[command.index(flag) + 1]

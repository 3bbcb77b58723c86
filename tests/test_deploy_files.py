"""The files README's "Deploy" section installs: the systemd units parse, pass `systemd-analyze
verify`, and start real executables with flags the pinned Dagster accepts, the code server first;
the production workspace points at the code server's address; the example environment sets what
the instance and the store need and nothing the project does not read; the stock fallback profile
is the production instance but for the overridden parts, and loads on PostgreSQL."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml

from backfill_dagster.settings import env_variables
from tests.conftest import PG_ADMIN_URL, no_commit_wait

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
INSTALLED_AT = "/opt/backfill-dagster"  # where the units expect the checkout (README, "Deploy")
CODE_SERVER, WEBSERVER, DAEMON = (f"backfill-dagster-{name}.service" for name in ("code-server", "webserver", "daemon"))
PG_VARIABLES = ["DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD"]


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def exec_start(path: Path) -> list[str]:
    return shlex.split(unit(path)["Service"]["ExecStart"])


def help_text(argv: list[str]) -> str:
    """`--help` of the command an ExecStart runs (its executable and subcommands, up to the first flag)."""
    words = list(argv[:1])
    for word in argv[1:]:
        if word.startswith("-"):
            break
        words.append(word)
    out = subprocess.run([*words, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_three_services_are_there():
    assert [p.name for p in UNITS] == sorted([CODE_SERVER, WEBSERVER, DAEMON])


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_each_unit_runs_as_its_user_from_the_checkout_with_the_env_file_and_restarts_on_failure(path):
    service = unit(path)["Service"]
    assert service["User"] == service["Group"] == "backfill-dagster"
    assert service["WorkingDirectory"] == INSTALLED_AT
    assert service["EnvironmentFile"] == "/etc/backfill-dagster/env"
    assert service["Restart"] == "on-failure"
    assert unit(path)["Install"]["WantedBy"] == "multi-user.target"
    assert "postgresql.service" in unit(path)["Unit"]["After"].split()


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_each_exec_start_names_an_installed_executable_and_flags_it_accepts(path):
    argv = exec_start(path)
    executable = Path(argv[0])
    assert executable.parent == Path(INSTALLED_AT, ".venv", "bin"), argv[0]
    local = BIN / executable.name
    assert local.is_file() and os.access(local, os.X_OK), f"{executable.name} is not installed by the project"
    argv[0] = str(local)
    accepted = help_text(argv)
    for flag in (word for word in argv[1:] if word.startswith("-")):
        assert re.search(rf"(^|[\s,]){re.escape(flag)}\b", accepted), f"{flag} is not an option of {argv[:3]}"
    for value in (argv[i + 1] for i, w in enumerate(argv[:-1]) if w in ("--workspace", "-w")):
        assert (ROOT / value).is_file(), value


def test_the_webserver_and_the_daemon_start_after_the_code_server_and_survive_its_restart():
    for name in (WEBSERVER, DAEMON):
        section = unit(DEPLOY / "systemd" / name)["Unit"]
        assert CODE_SERVER in section["After"].split() and CODE_SERVER in section["Wants"].split()
        # Requires= would stop or restart them with every restart of the code server
        assert "Requires" not in section


def test_the_production_workspace_points_at_the_code_server_s_address():
    argv = exec_start(DEPLOY / "systemd" / CODE_SERVER)
    option = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    (entry,) = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())["load_from"]
    assert entry == {"grpc_server": {"host": option["--host"], "port": int(option["--port"]),
                                     "location_name": option["--location-name"]}}
    for name in (WEBSERVER, DAEMON):
        assert "deploy/workspace.yaml" in exec_start(DEPLOY / "systemd" / name)


def test_systemd_accepts_the_units(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is needed to verify the units (it ships with systemd)")
    # as installed, but with this checkout where /opt/backfill-dagster would be (verify checks that
    # each ExecStart is executable)
    for path in UNITS:
        (tmp_path / path.name).write_text(path.read_text().replace(INSTALLED_AT, str(ROOT)).replace(
            f"{ROOT}/.venv/bin", str(BIN)))
    out = subprocess.run([analyze, "verify", *sorted(str(p) for p in tmp_path.iterdir())], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stderr.strip() == "" and out.stdout.strip() == "", out.stdout + out.stderr


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile= reads them (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), line
            values[key] = value
    return values


def test_the_example_environment_sets_the_instance_and_the_store_and_only_variables_read():
    values = env_file(DEPLOY / "env.example")
    assert set(PG_VARIABLES + ["DAGSTER_HOME", "BACKFILL_DATABASE_URL"]) <= set(values)
    assert values["BACKFILL_DATABASE_URL"].startswith("postgresql://")
    # a different database on the same server as the instance's (README, "Deploy")
    assert values["BACKFILL_DATABASE_URL"].rsplit("/", 1)[1] != values["DAGSTER_PG_DB"]
    assert set(values) - set(env_variables()) - set(PG_VARIABLES) == {"PYTHONUNBUFFERED"}
    commented = re.findall(r"^# ([A-Z][A-Z0-9_]+)=", (DEPLOY / "env.example").read_text(), flags=re.M)
    assert commented and set(commented) <= set(env_variables())


def test_the_readme_deploy_section_names_every_deploy_file_and_variable():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    # the host's files (deploy/ itself and its systemd units; the container profiles have their own section)
    for path in [*DEPLOY.glob("*"), *UNITS]:
        if path.is_file():
            assert path.relative_to(ROOT).as_posix() in section, path
    for name in PG_VARIABLES + ["DAGSTER_HOME", "BACKFILL_DATABASE_URL"]:
        assert name in section, name
    for command in ("backfill-dagster db-init", "dagster instance migrate", "dagster code-server start"):
        assert command in section, command


STOCK_PARTS = {"run_storage", "event_log_storage", "compute_logs", "run_launcher"}


def test_the_stock_profile_is_the_production_instance_but_for_the_overridden_parts():
    production = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    stock = yaml.safe_load((DEPLOY / "dagster-stock.yaml").read_text())
    assert {k: v for k, v in production.items() if k not in STOCK_PARTS} == \
        {k: v for k, v in stock.items() if k not in STOCK_PARTS}
    assert "compute_logs" not in stock  # Dagster's default: LocalComputeLogManager under $DAGSTER_HOME/storage
    # nothing of the project's instance plug-ins
    assert "module: backfill_dagster" not in (DEPLOY / "dagster-stock.yaml").read_text()
    assert stock["run_storage"]["config"] == production["run_storage"]["config"]


@pytest.mark.postgres
def test_the_stock_profile_loads_dagster_s_own_parts_on_postgres(tmp_path):
    name = f"bfd_stock_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        no_commit_wait(admin, name)
    try:
        shutil.copy(DEPLOY / "dagster-stock.yaml", tmp_path / "dagster.yaml")
        pg = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_URL)
        env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "DAGSTER_PG_HOST": pg.get("host", "127.0.0.1"),
               "DAGSTER_PG_PORT": str(pg.get("port", 5432)), "DAGSTER_PG_DB": name,
               "DAGSTER_PG_USER": pg.get("user", "postgres"), "DAGSTER_PG_PASSWORD": pg.get("password", "")}
        code = (
            "import sys, dagster as dg; i = dg.DagsterInstance.get(); "
            "print(*(type(x).__module__ + '.' + type(x).__name__ for x in (i.run_storage, i.event_log_storage, "
            "i.schedule_storage, i.compute_log_manager, i.run_launcher))); "
            "print(i.compute_log_manager._base_dir, i.run_monitoring_enabled, i.run_retries_enabled); "
            # nothing of the project's instance plug-ins was imported: a backfill forms Dagster's own runs
            "print(sorted(m for m in sys.modules if m.startswith('backfill_dagster')))"
        )
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        classes, settings, modules = out.stdout.splitlines()
        assert classes.split() == [
            "dagster_postgres.run_storage.run_storage.PostgresRunStorage",
            "dagster_postgres.event_log.event_log.PostgresEventLogStorage",
            "dagster_postgres.schedule_storage.schedule_storage.PostgresScheduleStorage",
            "dagster._core.storage.local_compute_log_manager.LocalComputeLogManager",
            "dagster._core.launcher.default_run_launcher.DefaultRunLauncher",
        ]
        assert settings.split() == [str(tmp_path / "storage"), "True", "True"]
        assert modules == "[]"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

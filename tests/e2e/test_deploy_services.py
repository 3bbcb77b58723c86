"""README's "Deploy" followed on this machine: the store and the instance in two databases of the
PostgreSQL server, their schemas set up with the README's commands, and the three services started
as separate processes exactly as the systemd units in deploy/systemd/ start them (their ExecStart,
the environment file systemd would read, the production dagster.yaml in DAGSTER_HOME), the code
server first. The webserver answers GraphQL, loads the code location through the code server and
never in a process of its own; a backfill launched through it is run by the daemon on the code
server's run workers against the loopback provider fakes; reloading the code server (the README's
command) replaces its code process without a restart, and the next backfill runs on the new one.

What differs from a host, and only this: the checkout and its virtualenv stand for
/opt/backfill-dagster, free ports for 4000 and 3000 (deploy/workspace.yaml copied with the code
server's port), the fakes' URLs and keys for the providers', and no `User=` switch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.store import shared_engine
from tests.conftest import PG_ADMIN_URL, no_commit_wait
from tests.deploy import (
    BACKFILL_STATUS,
    BIN,
    LAUNCH_BACKFILL,
    ROOT,
    Services,
    create_database,
    descendants,
    drop_database,
    free_port,
)
from tests.test_deploy_files import CODE_SERVER, DAEMON, INSTALLED_AT, WEBSERVER, env_file, exec_start

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ASSETS = ["bars_m15", "bars_h1", "bars_h4", "bars_d1"]
UNITS = ROOT / "deploy" / "systemd"
# The README's way to deploy new code: reload the code location, the code server keeps running.
RELOAD = ("/opt/backfill-dagster/.venv/bin/dagster-graphql --remote http://127.0.0.1:3000 --text "
          "'mutation { reloadRepositoryLocation(repositoryLocationName: \"backfill_dagster\") { __typename } }'")
WORKSPACE = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        displayMetadata { key value }
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""


@dataclass
class Host(Services):
    env: dict[str, str]
    logs: Path
    home: Path
    store_url: str
    code_port: int
    workspace: Path
    code_root: Path = ROOT
    webserver_url: str = ""
    processes: dict = field(default_factory=dict)

    def unit_argv(self, name: str, web_port: int = 3000) -> list[str]:
        """A unit's ExecStart with this machine's paths and ports."""
        argv = exec_start(UNITS / name)
        argv[0] = str(BIN / Path(argv[0]).name)
        swap = {"4000": str(self.code_port), "3000": str(web_port), "deploy/workspace.yaml": str(self.workspace)}
        return [swap.get(word, word) for word in argv]

    def wait_for(self, predicate, timeout: float, what: str, interval: float = 1.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n--- daemon ---\n{self.log('daemon')}"
                             f"\n--- code server ---\n{self.log('code-server')}")

    def code_processes(self) -> set[int]:
        """The code server's `dagster api grpc` processes: where its code is loaded and runs start."""
        return {pid for pid in descendants(self.processes["code-server"].pid) if "api\0grpc" in cmdline(pid)}

    def backfill(self, keys: list[str], assets: list[str], title: str) -> tuple[str, dict]:
        launched = self.graphql(LAUNCH_BACKFILL, {"params": {
            "assetSelection": [{"path": [a]} for a in assets], "partitionNames": keys,
            "fromFailure": False, "tags": [], "title": title,
        }})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched

        def finished():
            status = self.graphql(BACKFILL_STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"]
            return status if status["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED") else None

        return launched["backfillId"], self.wait_for(finished, timeout=480, what=f"backfill {title}")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _pg(dbname: str) -> str:
    return f"{PG_ADMIN_URL.rpartition('/')[0]}/{dbname}"


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Iterator[Host]:
    tmp = tmp_path_factory.mktemp("deploy")
    tag = uuid.uuid4().hex[:8]
    instance_db, store_db = f"bfd_deploy_dagster_{tag}", f"bfd_deploy_store_{tag}"
    for name in (instance_db, store_db):
        create_database(PG_ADMIN_URL, name)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        for name in (instance_db, store_db):
            no_commit_wait(admin, name)
    with FakeProviders(FakeConfig()) as fakes:
        # DAGSTER_HOME holds the production dagster.yaml (README: copied from the checkout)
        home = tmp / "var-lib-backfill-dagster"
        home.mkdir()
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
        # /etc/backfill-dagster/env: deploy/env.example with this machine's values
        pg = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_URL)
        values = {
            **env_file(ROOT / "deploy" / "env.example"),
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_HOST": pg.get("host", "127.0.0.1"), "DAGSTER_PG_PORT": str(pg.get("port", 5432)),
            "DAGSTER_PG_DB": instance_db, "DAGSTER_PG_USER": pg.get("user", "postgres"),
            "DAGSTER_PG_PASSWORD": pg.get("password", ""),
            "BACKFILL_DATABASE_URL": _pg(store_db),
            "BACKFILL_DATA_DIR": str(tmp / "data"),
            **fakes.env(),
        }
        env_path = tmp / "env"
        env_path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        # what systemd starts a service with: its own few variables and the environment file
        env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "HOME": str(tmp), **env_file(env_path)}
        code_port = free_port()
        workspace = tmp / "workspace.yaml"
        workspace.write_text((ROOT / "deploy" / "workspace.yaml").read_text().replace("port: 4000",
                                                                                      f"port: {code_port}"))
        host = Host(env=env, logs=tmp / "logs", home=home, store_url=values["BACKFILL_DATABASE_URL"],
                    code_port=code_port, workspace=workspace)
        try:
            # schema set-up, as README's "Deploy" runs it; then a symbol on the watchlist
            for argv in ([BIN / "backfill-dagster", "db-init"], [BIN / "dagster", "instance", "migrate"],
                         [BIN / "backfill-dagster", "watchlist", "add", "AAPL"]):
                out = host.run(*argv)
                assert out.returncode == 0, f"{argv}: {out.stdout[-2000:]}{out.stderr[-3000:]}"
            # the code server first (the others are ordered After= it), then the webserver and the daemon
            host.start("code-server", host.unit_argv(CODE_SERVER))
            health = [BIN / "dagster", "api", "grpc-health-check", "--port", str(code_port)]
            host.wait_for(lambda: host.processes["code-server"].poll() is None and host.run(*health).returncode == 0,
                          timeout=host.start_timeout_s, what="the code server to serve")
            web_port = free_port()
            host.webserver_url = f"http://127.0.0.1:{web_port}"
            host.start("webserver", host.unit_argv(WEBSERVER, web_port))
            host.wait_for(lambda: host.processes["webserver"].poll() is None and answers(host.webserver_url),
                          timeout=host.start_timeout_s, what="the webserver to answer")
            host.start("daemon", host.unit_argv(DAEMON))
            host.fakes = fakes
            yield host
        finally:
            host.stop()
            for name in (instance_db, store_db):
                drop_database(PG_ADMIN_URL, name)


def answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/server_info", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_units_exec_starts_are_what_runs():
    # the commands this test starts are the units' own, but for paths and ports (module docstring)
    assert exec_start(UNITS / CODE_SERVER)[:3] == [f"{INSTALLED_AT}/.venv/bin/dagster", "code-server", "start"]
    assert exec_start(UNITS / WEBSERVER)[0].endswith("/dagster-webserver")
    assert exec_start(UNITS / DAEMON)[:2] == [f"{INSTALLED_AT}/.venv/bin/dagster-daemon", "run"]
    assert RELOAD in (ROOT / "README.md").read_text()


def test_the_webserver_loads_the_code_location_through_the_code_server(host):
    data = host.graphql(WORKSPACE)["workspaceOrError"]
    (entry,) = data["locationEntries"]
    assert entry["name"] == "backfill_dagster" and entry["loadStatus"] == "LOADED", entry
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
    shown = {m["key"]: m["value"] for m in entry["displayMetadata"]}
    assert shown.get("port") == str(host.code_port), shown
    # the code is loaded only in the code server: neither the webserver nor the daemon starts one
    assert host.code_processes()
    for name in ("webserver", "daemon"):
        assert host.processes[name].poll() is None, host.log(name)
        assert not any("api\0grpc" in cmdline(pid) for pid in descendants(host.processes[name].pid)), name


def test_a_backfill_through_the_webserver_runs_on_the_code_server_s_workers(host):
    import dagster as dg

    keys = [f"2024-11-{d}|AAPL" for d in (18, 19, 20, 21, 22)]
    backfill_id, status = host.backfill(keys, ASSETS, "deploy")
    assert status["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), status
    for counts in status["assetBackfillData"]["assetBackfillStatuses"]:
        assert counts["numPartitionsMaterialized"] == len(keys) and counts["numPartitionsFailed"] == 0, counts
    os.environ.update({k: v for k, v in host.env.items() if k.startswith("DAGSTER_PG_")})
    with dg.DagsterInstance.from_config(str(host.home)) as instance:
        (run,) = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    # launched through the code server at the workspace's address (Dagster's launcher records where)
    assert f'"port": {host.code_port}' in run.tags[".dagster/grpc_info"], run.tags
    # its output kept for the UI under DAGSTER_HOME/storage
    assert any(run.run_id in p.name for p in (host.home / "storage").rglob("*")), run.run_id
    with shared_engine(host.store_url).connect() as conn:
        ledger = conn.execute(sa.text(
            "SELECT timeframe, status, count(*) FROM bar_coverage WHERE symbol = 'AAPL' "
            "AND session BETWEEN '2024-11-18' AND '2024-11-22' GROUP BY timeframe, status")).all()
    assert sorted(ledger) == [(t, "complete", 5) for t in ("d1", "h1", "h4", "m15")]
    assert host.fakes.calls("alpaca") > 0


def test_reloading_the_code_server_replaces_its_code_process_and_the_next_backfill_runs_there(host):
    before = host.code_processes()
    proxy = host.processes["code-server"].pid
    command = RELOAD.replace("/opt/backfill-dagster/.venv/bin", str(BIN)).replace(
        "http://127.0.0.1:3000", host.webserver_url)
    out = subprocess.run(["bash", "-c", command], env=host.env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "WorkspaceLocationEntry" in out.stdout, out.stdout + out.stderr
    after = host.wait_for(lambda: (host.code_processes() - before) or None, timeout=120,
                          what="a new code process of the code server")
    assert host.processes["code-server"].poll() is None and host.processes["code-server"].pid == proxy
    # the old code process leaves once it has no runs (it had none)
    host.wait_for(lambda: not (host.code_processes() & before), timeout=120, what="the old code process to exit")

    _, status = host.backfill(["2024-11-25|AAPL"], ["bars_m15"], "after reload")
    assert status["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), status
    assert host.code_processes() == after
    for name in ("webserver", "daemon"):
        assert host.processes[name].poll() is None, host.log(name)

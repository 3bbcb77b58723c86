"""Dagster's three long-running services as separate processes, each reachable only at its own
address, killed and restarted one at a time while a backfill runs.

The deployment: PostgreSQL (127.0.0.1) holding the store and the instance (the project's
dagster.yaml), the code location server (`dagster code-server start`, 127.0.0.2) that a
workspace.yaml of one `grpc_server` entry points at, dagster-webserver (127.0.0.3), dagster-daemon,
and the provider fakes (127.0.0.4). Separate loopback addresses, not network namespaces: the
machine's PostgreSQL listens on 127.0.0.1 of the root namespace only.

A backfill of 3 symbols x 20 sessions x the four bar assets is launched through the webserver's
GraphQL, as the UI launches it, and formed into three runs (boxes of 20 partitions, one symbol
each). The fakes hold every request for the last symbol, so its run is in flight, waiting on a
provider, through all three kills:

- the code server is SIGKILLed with its process group, as systemd stops a unit's control group:
  the run workers it started die with it. Run monitoring fails the held symbol's run (its worker
  is gone, instance/run_launcher.py), Dagster's run retries relaunch it through the restarted server;
- the daemon is SIGKILLed while the retry waits on the provider: it lives on (the code server
  started it), and the restarted daemon carries the backfill on;
- the webserver is SIGKILLed and restarted on the same address: the backfill is followed there.

Then the held symbol is released. Asserted: the backfill completes successfully, every partition
of every asset is materialized in Dagster and `complete` in the ledger, the two agree, each
partition was written once, the symbols never held were asked for each partition in exactly one
provider request, and the held symbol's retry fetched each partition in one page (sent again,
unchanged, only when the provider had not answered within the client's timeout).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import httpx
import psycopg
import pytest
import sqlalchemy as sa

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.clock import utcnow
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.store import shared_engine
from tests.deploy import BACKFILL_STATUS, LAUNCH_BACKFILL
from tests.e2e.conftest import BIN

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CODE_SERVER_HOST, WEBSERVER_HOST, FAKES_HOST = "127.0.0.2", "127.0.0.3", "127.0.0.4"
LOCATION = "backfill_dagster"
ASSETS = ["bars_m15", "bars_h1", "bars_h4", "bars_d1"]
TIMEFRAMES = ["m15", "h1", "h4", "d1"]
FETCHED = {"15/minute": "m15", "1/day": "d1"}  # h1 and h4 are made from m15 bars, not fetched
SYMBOLS = ["AAPL", "MSFT", "NVDA"]
HELD = "NVDA"
SESSIONS = 20
BOX = 20  # partitions a run: one run a symbol, three in all (and the held symbol's retry)
HORIZON_DAYS = 10  # the gap sensor looks no further back: the box is older, so only the backfill fetches it
FINISHED = ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED")
UNFINISHED_RUNS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
ET = ZoneInfo("America/New_York")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def workspace_yaml(host: str, port: int) -> str:
    """A production workspace: the one code location is a server reached by address."""
    return f"load_from:\n  - grpc_server:\n      host: {host}\n      port: {port}\n      location_name: {LOCATION}\n"


class Cluster:
    """The three services of `deployment`, each at its own address, killed and restarted by name."""

    def __init__(self, deployment, workspace: Path, code_port: int):
        self.d = deployment
        self.workspace = workspace
        self.code_port = code_port
        self.web_port = free_port(WEBSERVER_HOST)
        deployment.webserver_url = f"http://{WEBSERVER_HOST}:{self.web_port}"

    def start(self, name: str) -> None:
        args = {
            "code_server": [BIN / "dagster", "code-server", "start", "-h", CODE_SERVER_HOST, "-p", self.code_port,
                            "-m", "backfill_dagster", "--location-name", LOCATION],
            "webserver": [BIN / "dagster-webserver", "-h", WEBSERVER_HOST, "-p", self.web_port, "-w", self.workspace],
            # Dagster's daemon, its backfill loop and run queue polled faster (quick_daemon.py).
            "daemon": [sys.executable, Path(__file__).with_name("quick_daemon.py"), "run", "-w", self.workspace],
        }[name]
        self.d.start(name, args)
        if name == "code_server":
            self.d.wait_for(self.code_server_answers, 180, "the code server to answer", interval=0.5)
        elif name == "webserver":
            self.d.wait_for(self.webserver_answers, 180, "the webserver to answer", interval=0.5)

    def kill(self, name: str) -> None:
        """SIGKILL to the service's process group: nothing it started in its group survives."""
        proc = self.d.processes.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def code_server_answers(self) -> bool:
        assert self.d.processes["code_server"].poll() is None, self.d.log("code_server")
        from dagster._grpc.client import DagsterGrpcClient

        try:
            return DagsterGrpcClient(port=self.code_port, host=CODE_SERVER_HOST).ping("up") is not None
        except Exception:  # noqa: BLE001 - not listening yet
            return False

    def webserver_answers(self) -> bool:
        assert self.d.processes["webserver"].poll() is None, self.d.log("webserver")
        try:
            return httpx.get(f"{self.d.webserver_url}/server_info", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False


@pytest.fixture(scope="module")
def fakes():
    with FakeProviders(FakeConfig(), host=FAKES_HOST) as running:
        yield running


@pytest.fixture(scope="module")
def cluster(deployment, fakes):
    config = deployment.home / "dagster.yaml"
    text = config.read_text()
    for shipped, here in [
        # Run monitoring polls every 60 s as shipped; the same instance, polled sooner.
        ("poll_interval_seconds: 60", "poll_interval_seconds: 5"),
        # Two fetching steps a provider as shipped: the held symbol's two runs, then their retries,
        # would hold every slot and stall the other symbols until the release.
        ("default_limit: 2", "default_limit: 8"),
    ]:
        assert shipped in text
        text = text.replace(shipped, here)
    config.write_text(text)
    code_port = free_port(CODE_SERVER_HOST)
    workspace = deployment.home / "workspace.yaml"
    workspace.write_text(workspace_yaml(CODE_SERVER_HOST, code_port))
    deployment.env.update({
        **fakes.env(),
        "BACKFILL_PROVIDERS": "polygon",  # one symbol a request: a held symbol holds only itself
        "POLYGON_RATE_LIMIT": "0",
        "BACKFILL_HTTP_BACKOFF_SECONDS": "0.05",
        "BACKFILL_BOX_PARTITIONS": str(BOX),
        # A held request is abandoned after the client's 30 s read timeout and sent again; the held
        # symbol's retry must outlast a slow machine's restarts, not fail its step on the 6th try.
        "BACKFILL_HTTP_ATTEMPTS": "100",
        **{f"BACKFILL_GAP_DAYS_{t.upper()}": str(HORIZON_DAYS) for t in TIMEFRAMES},
    })
    out = deployment.run(BIN / "backfill-dagster", "watchlist", "add", *SYMBOLS)
    assert out.returncode == 0, out.stderr
    running = Cluster(deployment, workspace, code_port)
    for name in ("code_server", "webserver", "daemon"):
        running.start(name)
    return running


# ------------------------------------------------------------------------------------- observations
def dagster_db(deployment) -> str:
    e = deployment.env
    return f"host={e['DAGSTER_PG_HOST']} port={e['DAGSTER_PG_PORT']} dbname={e['DAGSTER_PG_DB']} user={e['DAGSTER_PG_USER']}"


def backfill_runs(deployment, backfill_id) -> list[tuple[str, str, str, str | None]]:
    """(run id, status, first partition of its range, the run it retries) of each backfill run."""
    with psycopg.connect(dagster_db(deployment)) as conn:
        return conn.execute(
            "SELECT r.run_id, r.status, s.value, p.value FROM runs r "
            "JOIN run_tags b ON b.run_id = r.run_id AND b.key = 'dagster/backfill' AND b.value = %s "
            "LEFT JOIN run_tags s ON s.run_id = r.run_id AND s.key = 'dagster/asset_partition_range_start' "
            "LEFT JOIN run_tags p ON p.run_id = r.run_id AND p.key = 'dagster/parent_run_id' "
            "ORDER BY r.create_timestamp", (backfill_id,)
        ).fetchall()


def ledger(store_url, sessions) -> dict[tuple[str, str, str], tuple]:
    """(symbol, timeframe, session) -> (status, run id, attempts ending so, last written as epoch s)."""
    with shared_engine(store_url).connect() as conn:
        return {(s, tf, d.isoformat()): rest for s, tf, d, *rest in conn.execute(sa.text(
            "SELECT symbol, timeframe, session, status, run_id, attempts, extract(epoch FROM updated_at) "
            "FROM bar_coverage WHERE session >= :lo AND session <= :hi"
        ), {"lo": sessions[0], "hi": sessions[-1]})}


def bar_requests(fakes) -> list[tuple[str, str, list[str], float, str]]:
    """(symbol, timeframe, sessions covered, arrival, path) of every bar request the fakes answered."""
    found = []
    for entry in fakes.log:
        parts = entry.path.split("/")  # /v2/aggs/ticker/{T}/range/{n}/{span}/{from ms}/{to ms}
        if entry.provider != "polygon" or "range" not in parts:
            continue
        i = parts.index("range")
        first, last = (datetime.fromtimestamp(int(ms) / 1000, ET).date() for ms in parts[i + 3:i + 5])
        days = [d.isoformat() for d in xnys().sessions(first, last)]
        found.append((parts[i - 1], FETCHED[f"{parts[i + 1]}/{parts[i + 2]}"], days, entry.at, entry.path))
    return found


def test_killing_and_restarting_each_service_mid_backfill_loses_nothing_and_fetches_nothing_twice(cluster, fakes):
    d = cluster.d
    today = utcnow().date()
    sessions = [s for s in xnys().sessions(today - timedelta(days=HORIZON_DAYS + 60), today - timedelta(days=HORIZON_DAYS + 5))]
    sessions = sessions[-SESSIONS:]
    assert len(sessions) == SESSIONS
    keys = [f"{s.isoformat()}|{sym}" for sym in SYMBOLS for s in sessions]
    fakes.config.held_symbols.add(HELD)
    launched = d.graphql(LAUNCH_BACKFILL, {"params": {
        "assetSelection": [{"path": [a]} for a in ASSETS], "partitionNames": keys,
        "fromFailure": False, "tags": [], "title": "services restarted mid-backfill",
    }})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def held_runs():
        return [r for r in backfill_runs(d, backfill_id) if r[2] and r[2].endswith(f"|{HELD}")]

    # 1. Every other symbol fetched and committed; each of the held symbol's runs waiting on it.
    def others_committed_and_held_runs_started():
        rows = ledger(d.store_url, sessions)
        committed = all(rows.get((s, tf, day.isoformat()), ("",))[0] == "complete"
                        for s in SYMBOLS if s != HELD for tf in FETCHED.values() for day in sessions)
        held = held_runs()
        waiting = [p for p in fakes.held if f"/ticker/{HELD}/" in p]
        return held if committed and len(held) == SESSIONS // BOX and all(r[1] == "STARTED" for r in held) and (
            len(waiting) >= len(held)) else None

    killed = d.wait_for(others_committed_and_held_runs_started, 600,
                        "the other symbols committed and the held symbol's runs waiting on the provider")
    killed_ids = {r[0] for r in killed}
    print(f"\nbackfill {backfill_id}: runs {backfill_runs(d, backfill_id)}")

    # 2. The code server, with the run workers it started (its process group, as systemd's
    #    control group), then started again at the same address.
    killed_at = time.time()
    cluster.kill("code_server")
    cluster.start("code_server")
    # Run monitoring fails the runs whose workers died; run retries relaunch them through the
    # restarted server, and they wait on the held symbol again.
    def retries_started():
        runs = backfill_runs(d, backfill_id)
        failed = {r[0] for r in runs if r[0] in killed_ids and r[1] == "FAILURE"}
        retries = [r for r in runs if r[3] in killed_ids]
        waiting = [p for p in fakes.held if f"/ticker/{HELD}/" in p]  # the killed workers' too
        return retries if failed == killed_ids and len(retries) == len(killed_ids) and all(
            r[1] == "STARTED" for r in retries) and len(waiting) >= 2 * len(killed_ids) else None

    retries = d.wait_for(retries_started, 600, "the killed runs to be failed and retried")
    print(f"retries of the killed runs: {retries}")

    # 3. The daemon, while the retries wait on the provider; then the webserver.
    cluster.kill("daemon")
    assert all(r[1] == "STARTED" for r in held_runs() if r[0] not in killed_ids)  # the retries live on
    cluster.start("daemon")
    cluster.kill("webserver")
    cluster.start("webserver")
    status = d.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    assert status["status"] == "REQUESTED", status  # still in flight, seen through the new webserver

    # 4. The provider answers again: the backfill completes.
    fakes.config.held_symbols.clear()

    def finished():
        status = d.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        return status if status["status"] in FINISHED else None

    status = d.wait_for(finished, 600, f"backfill {backfill_id} to finish")
    runs = backfill_runs(d, backfill_id)
    print(f"finished: {status['status']}; runs {runs}")
    assert status["status"] == "COMPLETED_SUCCESS", status
    assert {r[1] for r in runs if r[0] not in killed_ids} == {"SUCCESS"}, runs
    counts = {tuple(s["assetKey"]["path"]): s for s in status["assetBackfillData"]["assetBackfillStatuses"]}
    for asset in ASSETS:
        assert counts[(asset,)]["numPartitionsMaterialized"] == len(keys), counts[(asset,)]
        assert counts[(asset,)]["numPartitionsFailed"] == 0, counts[(asset,)]

    # Every partition of every asset materialized in Dagster and complete in the ledger: the same set.
    os.environ.update({k: v for k, v in d.env.items() if k.startswith("DAGSTER_PG_")})
    with dg.DagsterInstance.from_config(str(d.home)) as instance:
        materialized = {(tf, key) for asset, tf in zip(ASSETS, TIMEFRAMES)
                        for key in instance.get_materialized_partitions(dg.AssetKey(asset)) if key in set(keys)}
    rows = ledger(d.store_url, sessions)
    complete = {(tf, f"{day}|{s}") for (s, tf, day), (st, *_) in rows.items() if st == "complete"}
    wanted = {(tf, key) for tf in TIMEFRAMES for key in keys}
    assert materialized == wanted
    assert complete == wanted
    # The held symbol's partitions were written by the retries, not the killed runs.
    retry_ids = {r[0] for r in runs if r[3] in killed_ids}
    assert {row[1] for (s, _tf, _day), row in rows.items() if s == HELD} <= retry_ids
    # Each partition written once: no attempt rewrote what another had committed.
    assert {row[2] for row in rows.values()} == {1}

    # Nothing fetched twice. The symbols never held: each partition in exactly one request. The held
    # symbol: asked for by the killed worker (never answered), then by the retry in one page per
    # timeframe, which its client sends again, the same request, when the provider has not
    # answered within its 30 s timeout: one page, however often sent.
    requests = bar_requests(fakes)
    box = {day.isoformat() for day in sessions}
    unanswered = [r for r in requests if r[0] == HELD and r[3] < killed_at]
    assert unanswered, "the killed worker was waiting on the provider"
    asked: dict[tuple[str, str, str], list[str]] = {}
    for symbol, timeframe, days, at, path in requests:
        if symbol == HELD and at < killed_at:
            continue
        for day in set(days) & box:
            asked.setdefault((symbol, timeframe, day), []).append(path)
    assert set(asked) == {(s, tf, day) for s in SYMBOLS for tf in FETCHED.values() for day in box}
    twice = {k: len(paths) for k, paths in asked.items() if k[0] != HELD and len(paths) != 1}
    assert twice == {}, f"fetched more than once: {twice}"
    pages = {k: set(paths) for k, paths in asked.items() if k[0] == HELD and len(set(paths)) != 1}
    assert pages == {}, f"the retry fetched these in more than one page: {pages}"
    resent = sum(len(paths) - 1 for k, paths in asked.items() if k[0] == HELD)
    print(f"{len(requests)} bar requests; {len(unanswered)} from the killed worker; the retry's pages were "
          f"sent again after a timeout {resent} partition-time(s)")

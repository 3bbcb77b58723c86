"""A whole-market deployment for the scale benchmarks (bench/scale_ui.py, bench/scale_daemon.py).

The end-to-end tests' deployment (tests/deploy.py: the same databases, processes and GraphQL),
made persistent: PostgreSQL databases for the Dagster instance (the project's dagster.yaml, copied
into DAGSTER_HOME) and for the store, and dagster-webserver and dagster-daemon as real processes on
loopback. Databases are named after the benchmark, so `--keep` can reuse a populated one instead of
filling it again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' deployment harness
from tests.deploy import BIN, Services, create_database, database_exists, drop_database  # noqa: E402, F401

PG = "postgresql://postgres@127.0.0.1:5432"
PG_ADMIN = f"{PG}/postgres"


@dataclass
class Deployment(Services):
    """Databases `<name>_dagster` and `<name>_store`, a DAGSTER_HOME under `workdir`."""

    name: str
    workdir: Path
    history_start: str
    extra_env: dict[str, str] = field(default_factory=dict)
    code_root: Path = ROOT  # the checkout whose package, dagster.yaml and workspace.yaml are deployed
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    webserver_url: str = ""
    start_timeout_s = 300.0  # a whole market's definitions and instance load slower
    run_timeout_s = 600.0
    graphql_timeout_s = 300.0
    # The workspace the webserver and the daemon load: the checkout's (each of them then starts and
    # restarts code servers of its own), or one naming a standalone code server (start_code_server).
    workspace: str = "workspace.yaml"

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        return super().start(name, [self.workspace if str(a) == "workspace.yaml" else a for a in args])

    def start_code_server(self) -> subprocess.Popen:
        """One code server for the webserver, the daemon and the run workers (`dagster code-server
        start`, which loads the definitions in a child it can reload), and a workspace naming it."""
        from tests.deploy import free_port

        port = free_port()
        proc = super().start("code-server", [BIN / "dagster", "code-server", "start", "-m", "backfill_dagster",
                                             "-h", "127.0.0.1", "-p", str(port)])
        path = self.workdir / "workspace_grpc.yaml"
        path.write_text(f"load_from:\n  - grpc_server:\n      host: 127.0.0.1\n      port: {port}\n"
                        f"      location_name: backfill_dagster\n")
        began = time.monotonic()
        while time.monotonic() - began < self.start_timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"code server exited:\n{self.log('code-server')}")
            check = subprocess.run([str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(port)],
                                   env=self.env, capture_output=True, text=True)
            if check.returncode == 0:
                self.workspace = str(path)
                return proc
            time.sleep(1)
        raise RuntimeError(f"code server did not answer within {self.start_timeout_s:g}s:\n{self.log('code-server')}")

    @property
    def dagster_db(self) -> str:
        return f"{self.name}_dagster"

    @property
    def store_db(self) -> str:
        return f"{self.name}_store"

    @property
    def store_url(self) -> str:
        return f"{PG}/{self.store_db}"

    @property
    def home(self) -> Path:
        return self.workdir / "dagster_home"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": "5432",
            "DAGSTER_PG_DB": self.dagster_db,
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "",
            "BACKFILL_DATABASE_URL": self.store_url,
            "BACKFILL_DATA_DIR": str(self.workdir / "data"),
            "BACKFILL_HISTORY_START": self.history_start,
            "PYTHONPATH": str(self.code_root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def exists(self) -> bool:
        return (database_exists(PG_ADMIN, self.dagster_db) and database_exists(PG_ADMIN, self.store_db)
                and (self.home / "dagster.yaml").exists())

    def create(self) -> None:
        """Fresh, empty databases and home (anything of the same name is dropped first)."""
        create_database(PG_ADMIN, self.dagster_db)
        create_database(PG_ADMIN, self.store_db)
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.home.mkdir(parents=True)
        self.logs.mkdir(parents=True)
        (self.workdir / "data").mkdir()
        shutil.copy(self.code_root / "dagster.yaml", self.home / "dagster.yaml")

    def drop(self) -> None:
        drop_database(PG_ADMIN, self.dagster_db)
        drop_database(PG_ADMIN, self.store_db)

    def use_in_this_process(self) -> None:
        """Make DagsterInstance.get() and Settings.from_env() in this process see the deployment."""
        os.environ.update({k: v for k, v in self.env.items() if k.startswith(("DAGSTER_", "BACKFILL_"))})

    def instance(self):
        import dagster as dg

        self.use_in_this_process()
        return dg.DagsterInstance.from_config(str(self.home))


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def symbols(count: int) -> list[str]:
    """Ticker-like names in a fixed order (the demo provider makes bars for any symbol)."""
    return [f"S{i:03d}" for i in range(count)]


def history_for(sessions_wanted: int):
    """(history start, the last `sessions_wanted` closed sessions before today): the partitions
    definition then holds exactly these sessions (plus today's, which has not closed)."""
    from backfill_dagster.domain.calendar import xnys
    from backfill_dagster.ingest import utcnow

    calendar = xnys()
    today = utcnow().date()
    closed = [d for d in calendar.sessions("2018-01-01", today) if d < today]
    sessions = closed[-sessions_wanted:]
    return sessions[0].isoformat(), sessions


def db_sizes(dbname: str) -> tuple[int, list[tuple[str, int, int]]]:
    """(database bytes, [(table, total bytes incl. indexes and toast, rows estimate)] largest first)."""
    with psycopg.connect(f"{PG}/{dbname}", autocommit=True) as conn:
        total = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        tables = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid), c.reltuples::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname = 'public' "
            "ORDER BY 2 DESC"
        ).fetchall()
    return total, tables


def process_tree_rss(pid: int | Sequence[int]) -> tuple[int, dict[int, tuple[str, int]]]:
    """Total RSS bytes of `pid` (or of several roots) and its descendants, and each one's (command, rss)."""
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        ppid, rss_pages = int(rest[1]), int(rest[21])
        children.setdefault(ppid, []).append(int(entry))
        info[int(entry)] = (cmd, rss_pages * os.sysconf("SC_PAGE_SIZE"))
    tree, todo = {}, [pid] if isinstance(pid, int) else list(pid)
    while todo:
        p = todo.pop()
        if p in info:
            tree[p] = info[p]
        todo.extend(children.get(p, []))
    return sum(rss for _, rss in tree.values()), tree


def populated_bulk_deployment(symbols: int, sessions: int, workdir: Path):
    """The deployment `scale_ui.py --keep` left at this size, opened for in-process reads:
    (instance, its bulk event log, the project's definitions). Exits with the command to run first
    when there is none, or when its event log is not the project's."""
    name = f"bench_scale_ui_{symbols}x{sessions}"
    history_start, _ = history_for(sessions)
    dep = Deployment(name, workdir / name, history_start)
    if not dep.exists():
        raise SystemExit(f"no deployment {name}: run `python bench/scale_ui.py --keep` with the same sizes first")

    from backfill_dagster.definitions import build_definitions
    from backfill_dagster.instance.event_log import BulkPostgresEventLogStorage
    from backfill_dagster.settings import Settings

    instance = dep.instance()
    storage = instance.event_log_storage
    if not isinstance(storage, BulkPostgresEventLogStorage):
        raise SystemExit(f"the deployment's event log is {type(storage).__name__}, not the bulk storage")
    return instance, storage, build_definitions(Settings.from_env(), env_has_database_url=True)


def alternating_rounds(sides: dict, rounds: int, compared) -> tuple[dict[str, list[float]], object]:
    """Each side (label -> a call with no arguments) timed once a round, alternating which goes
    first so neither always runs on a warm database cache; `compared(answer)` must be equal for
    both every round, else the bench stops. Returns (seconds per label, the last round's compared)."""
    seconds: dict[str, list[float]] = {label: [] for label in sides}
    got = None
    for round_ in range(rounds):
        answers = {}
        order = list(sides.items()) if round_ % 2 == 0 else list(sides.items())[::-1]
        for label, call in order:
            began = time.perf_counter()
            answers[label] = call()
            seconds[label].append(time.perf_counter() - began)
        first, second = (compared(answer) for answer in answers.values())
        if first != second:
            raise SystemExit(f"round {round_}: the two sides disagree")
        got = first
    return seconds, got


def print_sides(seconds: dict[str, list[float]], notes: dict[str, str] | None = None) -> None:
    """Each side's median, min and max seconds (and a note), then the second side's ratio to the first."""
    import statistics

    for label, values in seconds.items():
        print(f"  {label:<22} median {statistics.median(values):6.3f} s   min {min(values):6.3f}   "
              f"max {max(values):6.3f}{(notes or {}).get(label, '')}")
    (first, base), (second, new) = ((label, statistics.median(v)) for label, v in seconds.items())
    print(f"  ratio ({second} / {first}): {new / base:.3f}  ({base / new:.1f}x faster)")

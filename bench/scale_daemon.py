"""Automation at whole-market scale: the daemon's sensors on an empty store
when 500 symbols join the watchlist.

    python bench/scale_daemon.py [--symbols 500] [--sessions 504] [--minutes 15] [--keep]

A deployment as a user runs it: PostgreSQL Dagster instance with the project's dagster.yaml,
PostgreSQL store (empty), demo provider, `dagster-webserver` and `dagster-daemon run` as processes.
Once the daemon has ticked for a minute, `backfill-dagster watchlist add` puts `--symbols` symbols
on the watchlist; the sensors (watchlist_sync, coverage_gaps, split_repair) and schedules then run
for `--minutes`. Meanwhile the daemon's process tree is sampled every second from /proc (the daemon,
its code server, the run workers it launches). Then it reports, from Dagster's own records:

- every sensor/schedule tick since the symbols were added: duration (tick timestamp to end
  timestamp), status, runs requested; ticks over 10 s flagged (the target);
- the runs created, by who requested them and their state, and their wall times;
- peak RSS: daemon process, code server, each run worker, the whole tree;
- the daemon log's growth (bytes, lines, the longest line);
- Dagster's database size and its largest tables, per 100,000 asset partitions materialized
  (against the size before the symbols were added);
- the ledger's progress: bar_coverage rows per timeframe and status, bars stored.

The partitions definition holds the last `--sessions` closed sessions plus today's
(BACKFILL_HISTORY_START is set so); the gap sensor fills each timeframe's own horizon.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_deploy import (  # noqa: E402
    BIN,
    PG,
    Deployment,
    db_sizes,
    history_for,
    load_average,
    process_tree_rss,
    symbols as symbol_names,
)

warnings.filterwarnings("ignore", message=".*is currently in beta.*")
warnings.filterwarnings("ignore", message=".*is currently in preview.*")

MB = 1e6


def role(cmd: str) -> str:
    """Which part of the daemon's tree a process is: its code server (`dagster api grpc`) starts each
    run worker as a multiprocessing child (`spawn_main`)."""
    if " api grpc" in cmd or "code-server" in cmd or "code_server" in cmd:
        return "code server"
    if "spawn_main" in cmd or "execute_run" in cmd or "execute_step" in cmd or "resume_run" in cmd:
        return "run worker"
    if "dagster-daemon" in cmd or "dagster_daemon" in cmd:
        return "daemon"
    if "dagster-webserver" in cmd or "dagster_webserver" in cmd:
        return "webserver"
    return "other"


class Sampler(threading.Thread):
    """RSS of a process tree every `interval` seconds: peaks per role and per pid."""

    def __init__(self, pid: int | list[int], interval: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.stop_event = threading.Event()
        self.peak_total = 0
        self.peak_by_role: dict[str, int] = defaultdict(int)
        self.peak_sum_by_role: dict[str, int] = defaultdict(int)
        self.peak_by_pid: dict[int, tuple[str, int]] = {}
        self.samples = 0
        self.max_workers = 0
        self.example_cmd: dict[str, str] = {}

    def run(self) -> None:
        while not self.stop_event.is_set():
            total, tree = process_tree_rss(self.pid)
            self.samples += 1
            self.peak_total = max(self.peak_total, total)
            sums: dict[str, int] = defaultdict(int)
            for pid, (cmd, rss) in tree.items():
                r = role(cmd)
                self.example_cmd.setdefault(r, cmd)
                sums[r] += rss
                self.peak_by_role[r] = max(self.peak_by_role[r], rss)
                if rss > self.peak_by_pid.get(pid, ("", 0))[1]:
                    self.peak_by_pid[pid] = (r, rss)
            for r, s in sums.items():
                self.peak_sum_by_role[r] = max(self.peak_sum_by_role[r], s)
            self.max_workers = max(self.max_workers, sum(1 for cmd, _ in tree.values() if role(cmd) == "run worker"))
            self.stop_event.wait(self.interval)


def ledger(store_url: str) -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    try:
        with psycopg.connect(store_url, autocommit=True) as conn:
            rows = conn.execute("SELECT timeframe, status, count(*) FROM bar_coverage GROUP BY 1, 2").fetchall()
            bars = conn.execute("SELECT timeframe, sum(bars) FROM bar_coverage GROUP BY 1").fetchall()
    except psycopg.errors.UndefinedTable:
        return {}, {}
    return {(tf, st): n for tf, st, n in rows}, {tf: int(n or 0) for tf, n in bars}


def progress_line(dep: Deployment, sampler: Sampler, started: float) -> str:
    counts, _ = ledger(dep.store_url)
    complete = Counter()
    for (tf, st), n in counts.items():
        if st == "complete":
            complete[tf] += n
    with psycopg.connect(f"{PG}/{dep.dagster_db}", autocommit=True) as conn:
        runs = dict(conn.execute("SELECT status, count(*) FROM runs GROUP BY 1").fetchall())
    total, tree = process_tree_rss(sampler.pid)
    log = dep.logs / "daemon.log"
    return (f"  t+{time.monotonic() - started:5.0f} s  complete {dict(sorted(complete.items()))}  runs {runs}  "
            f"daemon tree {total / MB:.0f} MB ({len(tree)} procs)  log {log.stat().st_size / MB:.2f} MB  "
            f"load {load_average()}")


def ticks_since(instance, after: float) -> dict[tuple[str, str], list]:
    out: dict[tuple[str, str], list] = {}
    for state in instance.all_instigator_state():
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, after=after, limit=100_000)
        out[(state.instigator_type.value.lower(), state.instigator_name)] = list(ticks)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def report_ticks(ticks: dict[tuple[str, str], list], limit_s: float) -> list[str]:
    lines = [f"{'instigator':<34} {'ticks':>5} {'statuses':<38} {'median s':>8} {'p95 s':>7} {'max s':>7} "
             f"{'runs':>5} {'over':>5}"]
    for (kind, name), ts in sorted(ticks.items()):
        durations = [t.end_timestamp - t.timestamp for t in ts if t.end_timestamp]
        statuses = Counter(t.status.value for t in ts)
        runs = sum(len(t.run_ids) for t in ts)
        over = sum(d > limit_s for d in durations)
        if not durations:
            lines.append(f"{kind + ' ' + name:<34} {len(ts):>5} {dict(statuses)!s:<38}")
            continue
        lines.append(f"{kind + ' ' + name:<34} {len(ts):>5} {dict(statuses)!s:<38} {statistics.median(durations):8.2f} "
                     f"{pct(durations, 0.95):7.2f} {max(durations):7.2f} {runs:>5} {over:>5}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=504)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="daemon ticks on the empty watchlist first")
    parser.add_argument("--limit-s", type=float, default=10.0, help="flag ticks longer than this ")
    parser.add_argument("--keep", action="store_true", help="leave the databases afterwards")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_scale_daemon"))
    args = parser.parse_args()
    if args.symbols < 1 or args.sessions < 1 or args.minutes <= 0:
        parser.error("--symbols, --sessions and --minutes must be positive")

    history_start, sessions = history_for(args.sessions)
    syms = symbol_names(args.symbols)
    name = f"bench_scale_daemon_{args.symbols}x{args.sessions}"
    dep = Deployment(name, args.workdir / name, history_start)
    print(f"whole-market daemon bench: {len(syms)} symbols, partitions over {len(sessions)} closed sessions "
          f"({sessions[0]}..{sessions[-1]}) + today; {args.minutes:g} min; load {load_average()}", flush=True)
    dep.create()
    try:
        out = dep.run(BIN / "backfill-dagster", "db-init")
        if out.returncode != 0:
            raise SystemExit(f"db-init failed:\n{out.stdout}\n{out.stderr}")
        dep.start_webserver()
        daemon = dep.start_daemon()
        sampler = Sampler(daemon.pid)
        sampler.start()
        time.sleep(args.warmup_s)
        size_before, tables_before = db_sizes(dep.dagster_db)
        tables_before = {t: b for t, b, _ in tables_before}
        log_before = (dep.logs / "daemon.log").stat().st_size
        added_at = time.time()
        began = time.monotonic()
        out = dep.run(BIN / "backfill-dagster", "watchlist", "add", *syms)
        if out.returncode != 0:
            raise SystemExit(f"watchlist add failed:\n{out.stdout}\n{out.stderr}")
        print(f"watchlist add of {len(syms)} symbols: {time.monotonic() - began:.1f} s", flush=True)
        next_line = 0.0
        while time.monotonic() - began < args.minutes * 60:
            if time.monotonic() - began >= next_line:
                print(progress_line(dep, sampler, began), flush=True)
                next_line += 60
            if dep.processes["daemon"].poll() is not None:
                raise SystemExit(f"dagster-daemon exited:\n{dep.log('daemon')}")
            time.sleep(1)
        print(progress_line(dep, sampler, began), flush=True)
        sampler.stop_event.set()
        sampler.join()
        log = dep.logs / "daemon.log"
        log_bytes = log.stat().st_size - log_before
        lines = log.read_bytes().splitlines()
        longest = max(lines, key=len) if lines else b""

        with dep.instance() as instance:
            ticks = ticks_since(instance, added_at - 1)
            records = instance.get_run_records()
            backfills = instance.get_backfills()
        dep.stop()

        print()
        print(f"== ticks after the symbols were added ({args.minutes:g} min; flag > {args.limit_s:g} s)")
        for line in report_ticks(ticks, args.limit_s):
            print(line)

        print()
        print("== runs")
        by = Counter((r.dagster_run.tags.get("backfill/requested_by") or
                      ("backfill " if r.dagster_run.tags.get("dagster/backfill") else "") +
                      r.dagster_run.tags.get("dagster/sensor_name", r.dagster_run.tags.get("dagster/schedule_name", "manual")),
                      r.dagster_run.status.value) for r in records)
        for (who, status), n in sorted(by.items()):
            print(f"  {who:<40} {status:<10} {n:>5}")
        walls = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
        if walls:
            print(f"  run wall: median {statistics.median(walls):.1f} s, max {max(walls):.1f} s over {len(walls)} finished")
        print(f"  backfills: {len(backfills)} " + str(dict(Counter(b.status.value for b in backfills))))

        print()
        print("== memory (RSS peaks, sampled every 1 s from /proc)")
        print(f"  whole daemon tree peak      {sampler.peak_total / MB:8.0f} MB")
        for r in ("daemon", "code server", "run worker", "other"):
            if r in sampler.peak_by_role:
                print(f"  {r:<12} peak one process {sampler.peak_by_role[r] / MB:6.0f} MB, "
                      f"peak all together {sampler.peak_sum_by_role[r] / MB:6.0f} MB  ({sampler.example_cmd[r][:90]})")
        print(f"  run workers at once (max)   {sampler.max_workers}; {sampler.samples} samples")

        print()
        print("== daemon log")
        print(f"  grew {log_bytes / MB:.2f} MB over {args.minutes:g} min ({log_bytes / MB / args.minutes * 60:.1f} MB/h); "
              f"{len(lines)} lines; longest {len(longest):,} bytes: {longest[:160].decode(errors='replace')}")

        counts, bars = ledger(dep.store_url)
        complete = {tf: counts.get((tf, "complete"), 0) for tf in ("m15", "h1", "h4", "d1")}
        partitions = sum(complete.values())
        print()
        print("== ledger")
        for (tf, st), n in sorted(counts.items()):
            print(f"  {tf:<4} {st:<9} {n:>8,}")
        print(f"  bars stored: {bars}")
        size_after, tables_after = db_sizes(dep.dagster_db)
        print()
        print(f"== Dagster database: {size_before / MB:.0f} MB before, {size_after / MB:.0f} MB after; "
              f"{partitions:,} asset partitions complete in the ledger")
        per = 100_000 / partitions if partitions else 0
        print(f"  {'table':<32} {'MB':>8} {'MB per 100k partitions':>24}")
        for table, b, _rows in tables_after[:12]:
            grown = b - tables_before.get(table, 0)
            print(f"  {table:<32} {b / MB:8.1f} {grown / MB * per:24.1f}")
        print(f"  {'database':<32} {size_after / MB:8.1f} {(size_after - size_before) / MB * per:24.1f}")
        print(f"load at end {load_average()}")
    finally:
        dep.stop()
        if not args.keep:
            dep.drop()


if __name__ == "__main__":
    main()

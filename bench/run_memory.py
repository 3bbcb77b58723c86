"""Where a box run's worker memory goes: RSS over one range run of all four assets.

    python bench/run_memory.py [--symbols 23] [--sessions 504] [--registered 0] [--trace 0] [--repeat 1]
                               [--steps] [--provider demo|alpaca]

One range run of the `all_bars` job (bars_m15 and bars_d1 fetched from the demo provider, h1 and
h4 derived, their checks) over a box of symbols x sessions (default 23 x 504 = 11,592 partitions
per asset, the size of a whole-market backfill's box; --registered 500: the box's symbols are the
first of 500 on the watchlist and symbol partitions, as in a whole-market deployment), executed in this process as a run worker
executes it (the job reconstructed from the code location, in-process executor, events streamed) on a PostgreSQL instance with the project's storages and a
PostgreSQL store. The process's RSS is sampled every 50 ms: after imports, before the run, its peak
during the run and after it; the growth per asset partition is the peak over the before figure.
With --steps, the RSS at each step's start and end and its peak in between (the step the run's
peak falls in). With --trace N, tracemalloc's N largest allocation sites when its traced memory
was highest (a snapshot whenever it passes its last one by 10% and 16 MB, sampled every 0.2 s), and at
the run's end (slow: ~3x the wall or more). --provider alpaca fetches from the fake servers,
started in a separate process (their memory is not the worker's), with Alpaca's request shapes
(100 symbols x 260 m15 sessions a request, 10,000-bar pages); the demo provider answers a box's
whole m15 in one request.
CPU: the process's own over the run, and the PostgreSQL backends serving the run's two databases
(the store's and the instance's; read from /proc before their connections close), which is less
sensitive to other load on the machine than the wall.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MB = 1024 * 1024


def rss() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Peak(threading.Thread):
    """The process's peak RSS, overall and per label (the step running: `label`, set by the caller);
    with `trace`, the largest allocation sites at tracemalloc's high-water mark."""

    def __init__(self, interval: float = 0.05, trace: int = 0):
        super().__init__(daemon=True)
        self.interval, self.peak, self.stop = interval, 0, threading.Event()
        self.label = "(run start)"
        self.by_label: dict[str, list[int]] = {}  # label -> [RSS when first seen, peak, RSS last seen]
        self.trace, self.traced_best, self.traced_sites, self.traced_label = trace, 0, [], ""
        self._next_trace = 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            now, label = rss(), self.label
            self.peak = max(self.peak, now)
            seen = self.by_label.setdefault(label, [now, now, now])
            seen[1], seen[2] = max(seen[1], now), now
            if self.trace and time.monotonic() >= self._next_trace:
                self._next_trace = time.monotonic() + 0.2
                self._trace_if_highest(label)
            self.stop.wait(self.interval)

    def _trace_if_highest(self, label: str) -> None:
        import tracemalloc

        current, _ = tracemalloc.get_traced_memory()
        if current < max(self.traced_best * 1.1, self.traced_best + 16 * MB):
            return
        stats = tracemalloc.take_snapshot().statistics("traceback")[: self.trace]
        self.traced_best, self.traced_sites, self.traced_label = current, stats, label


def print_sites(stats) -> None:
    for stat in stats:
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in list(stat.traceback)[-6:][::-1])
        print(f"    {stat.size / MB:7.1f} MB {stat.count:>8,} blocks  {where}")


def fake_server(provider: str) -> subprocess.Popen:
    """The fake providers in their own process (python -m backfill_dagster.fakes); the environment
    pointing the clients at them set here."""
    proc = subprocess.Popen([sys.executable, "-m", "backfill_dagster.fakes", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    from backfill_dagster.fakes import FakeConfig

    config = FakeConfig()
    os.environ.update({
        "BACKFILL_PROVIDERS": provider, "ALPACA_DATA_URL": url, "ALPACA_API_KEY": config.alpaca_key,
        "ALPACA_API_SECRET": config.alpaca_secret,
        f"{provider.upper()}_RATE_LIMIT": "0",
    })
    return proc


def backend_cpu(databases: set[str]) -> float:
    """CPU seconds so far of the PostgreSQL backends connected to these databases (Linux /proc)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                words = f.read().replace(b"\0", b" ").decode(errors="replace").split()
            if not words or words[0] != "postgres:" or not databases.intersection(words[1:5]):
                continue
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=23)
    parser.add_argument("--sessions", type=int, default=504)
    parser.add_argument("--trace", type=int, default=0, help="print tracemalloc's N largest sites at the peak")
    parser.add_argument("--repeat", type=int, default=1, help="runs in the same process, each on a fresh store")
    parser.add_argument("--steps", action="store_true", help="print each step's RSS at start and end and its peak")
    parser.add_argument("--provider", choices=["demo", "alpaca"], default="demo")
    parser.add_argument("--registered", type=int, default=0,
                        help="symbols on the watchlist and symbol partitions (default: the box's): a "
                             "whole-market deployment's box run has 500 registered, whatever its box")
    args = parser.parse_args()
    server = fake_server(args.provider) if args.provider != "demo" else None

    started = time.perf_counter()
    from dagster._core.definitions.reconstruct import ReconstructableJob, ReconstructableRepository
    from dagster._core.execution.api import execute_run_iterator

    import backfill_dagster.definitions  # noqa: F401  (the code location's imports, as a worker's)
    import pg_instance  # noqa: F401
    from backfill_dagster.domain.calendar import xnys

    imports_s, after_imports = time.perf_counter() - started, rss()
    calendar = xnys()
    sessions = calendar.sessions("2024-01-02", "2026-11-20")[: args.sessions]
    registered = [f"S{i:03d}" for i in range(max(args.symbols, args.registered))]
    symbols = registered[: args.symbols]
    n = len(symbols) * len(sessions)
    print(f"box run of all four assets: {len(symbols)} symbols x {len(sessions)} sessions = {n:,} partitions "
          f"per asset ({len(registered)} symbols registered), provider {args.provider}; imports {imports_s:.1f} s, RSS after imports "
          f"{after_imports / MB:.0f} MB", flush=True)
    if args.trace:
        import tracemalloc

        tracemalloc.start(10)
    try:
        run_all(args, recon=(ReconstructableJob, ReconstructableRepository), execute_run_iterator=execute_run_iterator,
                symbols=symbols, sessions=sessions, n=n, registered=registered)
    finally:
        if server is not None:
            server.terminate()
            server.wait()


def run_all(args, recon, execute_run_iterator, symbols, sessions, n, registered) -> None:
    import tracemalloc

    from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
    from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME, range_tags
    from backfill_dagster.store import Watchlist, shared_engine
    from pg_instance import PG, QUIET, fresh_pg_database, pg_instance

    ReconstructableJob, ReconstructableRepository = recon
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(args.repeat):
            home = Path(tmp) / str(attempt)
            url = f"{PG}/{fresh_pg_database('bench_run_memory')}"
            Watchlist(shared_engine(url)).add(registered)
            # As a run worker runs it: the job reconstructed from the code location (the settings
            # from the environment), its events streamed and dropped, not kept as
            # execute_in_process keeps them.
            os.environ.update({"BACKFILL_DATABASE_URL": url, "BACKFILL_DATA_DIR": str(home),
                               "BACKFILL_HISTORY_START": sessions[0].isoformat()})
            recon_job = ReconstructableJob(ReconstructableRepository.for_module("backfill_dagster", "defs"), ALL_BARS_JOB)
            with pg_instance(home / "dagster") as instance:
                instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, registered)
                run = instance.create_run_for_job(
                    job_def=recon_job.get_definition(), run_config=QUIET, job_code_origin=recon_job.get_python_origin(),
                    tags=range_tags((symbols[0], sessions[0]), (symbols[-1], sessions[-1])),
                )
                gc.collect()
                databases = {url.rsplit("/", 1)[1], *re.findall(r"[\w-]*bench_dagster_[0-9a-f]{8}", (home / "dagster" / "dagster.yaml").read_text())}
                before = rss()
                peak = Peak(trace=args.trace)
                peak.start()
                t0, cpu0, pg0 = time.perf_counter(), time.process_time(), backend_cpu(databases)
                for _event in execute_run_iterator(recon_job, run, instance):
                    if _event.is_step_start:
                        peak.label = _event.step_key
                    elif _event.is_step_success or _event.is_step_failure or _event.is_step_skipped:
                        peak.label = f"(after {_event.step_key})"
                del _event
                wall, cpu, pg_cpu = time.perf_counter() - t0, time.process_time() - cpu0, backend_cpu(databases) - pg0
                peak.stop.set()
                peak.join()
                assert instance.get_run_by_id(run.run_id).is_success, "the run failed"
                if args.trace:
                    snapshot = tracemalloc.take_snapshot()
                    _, traced_peak = tracemalloc.get_traced_memory()
                gc.collect()
                after = rss()
            grown = peak.peak - before
            print(f"  run {attempt + 1}: wall {wall:.1f} s; RSS before {before / MB:.0f} MB, peak {peak.peak / MB:.0f} MB "
                  f"(+{grown / MB:.0f} MB = {grown / (4 * n) / 1024:.1f} KB per asset partition), "
                  f"after {after / MB:.0f} MB; CPU {cpu:.1f} s here + {pg_cpu:.1f} s PostgreSQL", flush=True)
            if args.steps:
                print("  step: RSS at its start -> peak -> at its end (MB)")
                for label, (first, top, last) in peak.by_label.items():
                    print(f"    {label:<40} {first / MB:6.0f} -> {top / MB:6.0f} -> {last / MB:6.0f}")
            if args.trace:
                print(f"  tracemalloc peak {traced_peak / MB:.0f} MB; largest sites at its sampled high "
                      f"({peak.traced_best / MB:.0f} MB, in {peak.traced_label}):")
                print_sites(peak.traced_sites)
                print("  largest sites still held at the run's end:")
                print_sites(snapshot.statistics("traceback")[: args.trace])


if __name__ == "__main__":
    main()

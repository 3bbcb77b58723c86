"""Dagster's own cost in a large range run: the run's wall time vs the same work done directly.

    python bench/bookkeeping.py [--symbols 10] [--sessions 500] [--instance sqlite|postgres]
                                [--event-log bulk|stock] [--event-batch-size 1000] [--no-checks]
                                [--unpooled] [--pool-at-launch] [--subset-planned]
                                [--synchronous-commit on|off] [--unordered-commits] [--repeat 1]

A range run of symbols x sessions partitions (default 5,000) of bars_m15, with its completeness
check (one summary of the run's partitions), is timed end to end in a real Dagster run
(in-process executor, a persistent instance on SQLite or PostgreSQL). The same fetch + write +
check is then done by calling the project's functions directly, with no Dagster, in the same
process. The difference is what Dagster's bookkeeping costs: per partition a planned event and a
materialization event, per run the check's planned event and result, each written to the
instance's event log. Prints both times, the overhead per partition and its share of the run.
DAGSTER_EVENT_BATCH_SIZE (--event-batch-size) lets Dagster write planned and materialization
events in batches. On PostgreSQL the instance uses the deployed event log (dagster.yaml:
BulkPostgresEventLogStorage, one planned event per asset and run, stored per partition) or, with
--event-log stock, dagster-postgres's own; --unpooled and --pool-at-launch only change the stock
one (the bulk one always pools); --synchronous-commit off sets it on the instance's connections;
--unordered-commits drops the bulk one's commit-order lock (to measure what it costs).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import dagster as dg

from backfill_dagster.definitions import build_definitions
from backfill_dagster.domain import quality
from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.ingest import fetch_partitions
from backfill_dagster.instance.event_log_tuning import EVENT_BATCH_SIZE, hold_event_log_connection
from backfill_dagster.orchestration import assets, checks
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME, range_tags
from backfill_dagster.orchestration.resources import ProvidersResource, StoreResource
from backfill_dagster.settings import Settings
from backfill_dagster.store import BarStore, Watchlist, shared_engine
from pg_instance import EVENT_LOGS, PG, QUIET, fresh_pg_database, pg_instance

def instance_for(kind: str, home: Path, event_log: str, synchronous_commit: str) -> dg.DagsterInstance:
    if kind == "sqlite":
        home.mkdir(parents=True, exist_ok=True)
        return dg.DagsterInstance.local_temp(str(home))
    return pg_instance(home, event_log, synchronous_commit)


def fresh_store(args, home: Path, symbols: list[str], name: str) -> str:
    url = f"{PG}/{fresh_pg_database('bench_store')}" if args.instance == "postgres" else (
        f"sqlite:///{home / f'{name}.sqlite'}"
    )
    Watchlist(shared_engine(url)).add(symbols)  # shared_engine creates the schema
    return url


def run_direct(args, home: Path, symbols: list[str], sessions, partitions) -> float:
    """The same fetch, write and check, no Dagster: wall seconds."""
    calendar = xnys()
    store_url = fresh_store(args, home, symbols, "direct")
    bars = BarStore(shared_engine(store_url), calendar)
    start = time.perf_counter()
    router = ProvidersResource(names=["demo"]).router(StoreResource(database_url=store_url), calendar)
    report = fetch_partitions(partitions, Timeframe.M15, router, bars, run_id="direct")
    if not args.no_checks:
        quality.completeness(bars.coverage(Timeframe.M15, symbols), partitions)
    wall = time.perf_counter() - start
    assert report.ok and len(report.written) == len(partitions)
    return wall


def run_dagster(args, home: Path, symbols: list[str], sessions) -> float:
    """The range run in Dagster, on a fresh store and instance: wall seconds."""
    n = len(symbols) * len(sessions)
    store_url = fresh_store(args, home, symbols, "dagster")
    defs = build_definitions(Settings(data_dir=home, database_url=store_url, history_start=sessions[0]))
    check = dg.AssetCheckKey(dg.AssetKey("bars_m15"), "m15_completeness")
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(
        asset_selection={dg.AssetKey("bars_m15")}, asset_check_selection=set() if args.no_checks else {check}
    )
    with instance_for(args.instance, home / "dagster", args.event_log, args.synchronous_commit) as instance:
        instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, symbols)
        if args.instance == "postgres":  # the setting reaches the event log's connections
            with instance.event_log_storage._engine.connect() as conn:
                assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == args.synchronous_commit
        if args.pool_at_launch:
            hold_event_log_connection(instance)
        if args.unpooled:  # the steps would pool it: make that a no-op
            assets.hold_event_log_connection = checks.hold_event_log_connection = lambda _instance: None
        start = time.perf_counter()
        result = job.execute_in_process(
            instance=instance, tags=range_tags((symbols[0], sessions[0]), (symbols[-1], sessions[-1])),
            run_config=QUIET,
        )
        wall = time.perf_counter() - start
        assert result.success
        assert len(instance.get_materialized_partitions(dg.AssetKey("bars_m15"))) == n
        if not args.no_checks:  # one summary of the run's partitions
            (evaluation,) = result.get_asset_check_evaluations()
            assert evaluation.passed and evaluation.metadata["partitions_checked"].value == n
    return wall


def _walls(walls: list[float]) -> str:
    return ", ".join(f"{w:.2f}" for w in walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--instance", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--event-batch-size", type=int, default=int(EVENT_BATCH_SIZE),
                        help=f"DAGSTER_EVENT_BATCH_SIZE; {EVENT_BATCH_SIZE} is what the project sets, 0 is Dagster's default")
    parser.add_argument("--event-log", choices=EVENT_LOGS, default="bulk",
                        help="PostgreSQL: the deployed bulk event log (default) or dagster-postgres's stock one")
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="on",
                        help="PostgreSQL: synchronous_commit on the instance's connections")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run both phases this many times, alternating, and report the best of each")
    parser.add_argument("--no-checks", action="store_true")
    parser.add_argument("--unpooled", action="store_true",
                        help="skip hold_event_log_connection: a new PostgreSQL connection per event")
    parser.add_argument("--pool-at-launch", action="store_true",
                        help="pool the event-log connection before the run is created, as the webserver does")
    parser.add_argument("--subset-planned", action="store_true",
                        help="DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=true: one planned event per asset and run "
                             "(the bulk event log asks for it anyway)")
    parser.add_argument("--unordered-commits", action="store_true",
                        help="the bulk event log without its commit-order lock (ids may become visible out of order)")
    args = parser.parse_args()
    if args.unordered_commits:
        from backfill_dagster.instance.event_log import BulkPostgresEventLogStorage

        BulkPostgresEventLogStorage.commit_in_id_order = False
    os.environ["DAGSTER_EVENT_BATCH_SIZE"] = str(args.event_batch_size)
    if args.subset_planned:
        os.environ["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] = "true"

    calendar = xnys()
    sessions = calendar.sessions("2024-01-01", "2026-11-20")[: args.sessions]
    symbols = [f"S{i:03d}" for i in range(args.symbols)]
    partitions = [(s, d) for s in symbols for d in sessions]
    n = len(partitions)

    direct_walls, dagster_walls = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(args.repeat):  # alternating, each phase on a fresh store, so both see the same load
            home = Path(tmp) / str(attempt)
            home.mkdir()
            direct_walls.append(run_direct(args, home, symbols, sessions, partitions))
            dagster_walls.append(run_dagster(args, home, symbols, sessions))
    direct_s, run_s = min(direct_walls), min(dagster_walls)

    overhead = run_s - direct_s
    print(f"range run of {n:,} bars_m15 partitions ({args.symbols} symbols x {len(sessions)} sessions), "
          f"instance {args.instance}{f' ({args.event_log} event log)' if args.instance == 'postgres' else ''}, "
          f"checks {'off' if args.no_checks else 'on'}, "
          f"{'unordered commits, ' if args.unordered_commits else ''}"
          f"DAGSTER_EVENT_BATCH_SIZE={args.event_batch_size}")
    print(f"  direct (no Dagster)     {direct_s:8.2f} s   (best of {args.repeat}: {_walls(direct_walls)})")
    print(f"  Dagster run             {run_s:8.2f} s   (best of {args.repeat}: {_walls(dagster_walls)})")
    print(f"  bookkeeping             {overhead:8.2f} s = {overhead / n * 1000:.2f} ms per partition, "
          f"{overhead / run_s:.0%} of the run")


if __name__ == "__main__":
    main()

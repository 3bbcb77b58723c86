"""A UI-style m15 backfill from the fake Alpaca and Polygon servers: API calls, Dagster runs, bars, wall time.

    python bench/provider_backfill.py [--symbols 20] [--sessions 504] [--providers alpaca,polygon]
                                      [--no-checks] [--event-log bulk|stock] [--subset-planned]
                                      [--repeat 1] [--synchronous-commit on|off]

For each provider, symbols x sessions of bars_m15 (default 20 x 504 = 10,080 partitions, the 504
sessions ending 2025-12-31) are backfilled as the UI does it for this box: bars_m15 has
`BackfillPolicy.single_run()`, and Dagster then makes one run per symbol (docs/design.md), so this is 20
range runs of the all_bars job subset to bars_m15 (with its completeness check, as the UI includes
it: one summary per run), executed in-process on a persistent PostgreSQL instance with the project's DAGSTER_EVENT_BATCH_SIZE and the
deployed event log (dagster.yaml: BulkPostgresEventLogStorage; --event-log stock: dagster-postgres's).
The clients talk to the in-process fake servers (no rate limits, no faults, every session closed)
and write into a fresh PostgreSQL store. In the same process, the same fetch + write (+ check) is
done per symbol with no Dagster, into a second fresh store: the difference is Dagster's bookkeeping.

Printed per provider: API calls next to the naive figure (one call per partition) and the floor,
Dagster runs, bars written, wall times and bookkeeping's share, each against its target:
- Alpaca floor: ceil(bars returned / 10,000), a page holding 10,000 bars of any symbols. The API
  has no regular-hours filter: it returns every 04:00-20:00 bar inside the requested windows,
  although the store keeps regular hours only. Target <= 1.5 x floor.
- Polygon floor: per symbol, ceil(base minutes / 50,000), base minutes = 15 x the m15 bars in the
  requested window (extended hours included, as the API serves them). Target <= 1.1 x floor.
- <= 25 Dagster runs; bookkeeping (Dagster wall - direct wall) under a third of the Dagster wall.
--subset-planned sets DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=true, which only changes the
stock event log (the bulk one always asks for the subset event and stores it per partition). Polygon is given full history (a
paid plan): the free plan's ~2 years back from today do not reach the box's first sessions.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import sqlalchemy as sa

from backfill_dagster.definitions import build_definitions
from backfill_dagster.domain import quality
from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.ingest import fetch_partitions
from backfill_dagster.instance.event_log_tuning import EVENT_BATCH_SIZE
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME, range_tags
from backfill_dagster.orchestration.resources import ProvidersResource, StoreResource
from backfill_dagster.providers import alpaca, polygon
from backfill_dagster.settings import PROVIDER_ENV_VARS, Settings
from backfill_dagster.store import Watchlist, shared_engine
from pg_instance import EVENT_LOGS, PG, QUIET, fresh_pg_database, pg_instance

LAST_SESSION = date(2025, 12, 31)
FAKE_NOW = pd.Timestamp("2026-01-02 12:00", tz="UTC")  # after the last session: all closed, all final
M15 = dg.AssetKey("bars_m15")
CHECK = dg.AssetCheckKey(M15, "m15_completeness")
TARGET_RATIO = {"alpaca": 1.5, "polygon": 1.1}
TARGET_RUNS = 25
TARGET_BOOKKEEPING = 1 / 3


def fresh_store(symbols: list[str]) -> str:
    url = f"{PG}/{fresh_pg_database('bench_store')}"
    Watchlist(shared_engine(url)).add(symbols)  # shared_engine creates the schema
    return url


def m15_bars_stored(url: str) -> int:
    with shared_engine(url).connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM ohlc_bars WHERE timeframe = 'm15'")).scalar_one()


def served_starts(fakes: FakeProviders, symbols: list[str], sessions: list[date]) -> dict[str, np.ndarray]:
    """Start (UTC ns) of every m15 bar the fakes serve for the box, 04:00-20:00, per symbol.
    Done before anything is timed, which also warms the fakes' bar cache for both phases alike."""
    return {
        s: np.concatenate([pd.DatetimeIndex(fakes.bars(Timeframe.M15, s, d)["ts"]).asi8 for d in sessions])
        for s in symbols
    }


def bars_returned(log, provider: str, starts: dict[str, np.ndarray]) -> dict[str, int]:
    """Bars each symbol's requests returned, from the first page of each request in the fake's log
    (the window asked for; the following pages only walk through it)."""
    out = dict.fromkeys(starts, 0)
    for entry in log:
        if entry.provider != provider or entry.status != 200:
            continue
        if provider == "alpaca" and "page_token" not in entry.query:
            names = entry.query["symbols"].split(",")
            lo, hi = pd.Timestamp(entry.query["start"]).value, pd.Timestamp(entry.query["end"]).value
        elif provider == "polygon" and "cursor" not in entry.query:
            parts = entry.path.split("/")  # /v2/aggs/ticker/{T}/range/15/minute/{from ms}/{to ms}
            names, lo, hi = [parts[4]], int(parts[-2]) * 1_000_000, int(parts[-1]) * 1_000_000
        else:
            continue
        for name in names:  # both ends inclusive, as both APIs read them
            ts = starts[name]
            out[name] += int(np.searchsorted(ts, hi, "right") - np.searchsorted(ts, lo, "left"))
    return out


def floor_calls(provider: str, returned: dict[str, int]) -> int:
    if provider == "alpaca":  # a page is 10,000 bars of any symbols together
        return math.ceil(sum(returned.values()) / alpaca.PAGE_LIMIT)
    return sum(math.ceil(15 * n / polygon.PAGE_LIMIT) for n in returned.values())  # one symbol a request


def direct(provider: str, symbols: list[str], sessions: list[date], checks: bool, env: dict) -> tuple[float, int, int]:
    """The same work with no Dagster, symbol by symbol like the runs: (wall s, bars written, bars stored)."""
    url, calendar = fresh_store(symbols), xnys()
    store = StoreResource(database_url=url)
    creds = {k.lower(): v for k, v in env.items() if k in PROVIDER_ENV_VARS}
    written = 0
    start = time.perf_counter()
    for symbol in symbols:  # a router per run, as the asset builds one per step
        partitions = [(symbol, d) for d in sessions]
        router = ProvidersResource(names=[provider], **creds).router(store, calendar)
        bars = store.bar_store(calendar)
        try:
            report = fetch_partitions(partitions, Timeframe.M15, router, bars, run_id="direct")
        finally:
            router.close()
        assert report.ok, report.failure_summary()
        written += report.bars_written
        if checks:
            quality.completeness(bars.coverage(Timeframe.M15, [symbol]), partitions)
    return time.perf_counter() - start, written, m15_bars_stored(url)


def with_dagster(
    provider: str, symbols: list[str], sessions: list[date], checks: bool, home: Path, event_log: str,
    synchronous_commit: str = "on",
) -> tuple[float, int, int]:
    """The UI's backfill of the box: one range run per symbol. (wall s, runs, bars stored)."""
    url, n = fresh_store(symbols), len(symbols) * len(sessions)
    settings = Settings(
        data_dir=home, database_url=url, history_start=sessions[0], providers=(provider,),
        rate_limits={"alpaca": 0, "polygon": 0},  # the fakes enforce none; measure calls, not waits
    )
    job = build_definitions(settings).resolve_job_def(ALL_BARS_JOB).get_subset(
        asset_selection={M15}, asset_check_selection=None if checks else set()  # None: its checks too
    )
    with pg_instance(home / f"dagster_{provider}", event_log, synchronous_commit) as instance:
        instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, symbols)
        start = time.perf_counter()
        for symbol in symbols:
            tags = range_tags((symbol, sessions[0]), (symbol, sessions[-1]))
            assert job.execute_in_process(instance=instance, tags=tags, run_config=QUIET).success
        wall = time.perf_counter() - start
        assert len(instance.get_materialized_partitions(M15)) == n
        runs = instance.get_runs_count()
        if checks:  # one summary per run, together covering every partition
            history = instance.event_log_storage.get_asset_check_execution_history(CHECK, limit=runs + 1)
            assert len(history) == runs and all(r.evaluation and r.evaluation.passed for r in history)
            assert sum(r.evaluation.metadata["partitions_checked"].value for r in history) == n
    return wall, runs, m15_bars_stored(url)


def _walls(walls: list[float]) -> str:
    return ", ".join(f"{w:.1f}" for w in walls)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=504)
    parser.add_argument("--providers", default="alpaca,polygon")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run both phases this many times, alternating, and report the best of each")
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="on",
                        help="synchronous_commit on the Dagster instance's connections")
    parser.add_argument("--no-checks", action="store_true")
    parser.add_argument("--event-log", choices=EVENT_LOGS, default="bulk",
                        help="the deployed bulk event log (default) or dagster-postgres's stock one")
    parser.add_argument("--subset-planned", action="store_true",
                        help="DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=true: one planned event per run")
    args = parser.parse_args()
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    assert set(providers) <= set(TARGET_RATIO), f"--providers: choose from {', '.join(TARGET_RATIO)}"
    checks = not args.no_checks
    os.environ["DAGSTER_EVENT_BATCH_SIZE"] = EVENT_BATCH_SIZE  # as the project sets it for run workers
    if args.subset_planned:
        os.environ["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] = "true"

    calendar = xnys()
    sessions = calendar.sessions(date(2000, 1, 1), LAST_SESSION)[-args.sessions :]
    symbols = [f"S{i:03d}" for i in range(args.symbols)]
    n = len(symbols) * len(sessions)
    config = FakeConfig(now=lambda: FAKE_NOW, polygon_history_days=None)

    with FakeProviders(config) as fakes, tempfile.TemporaryDirectory() as tmp:
        env = {**fakes.env(), "POLYGON_HISTORY_DAYS": "0"}  # full history, as the fake's paid plan
        os.environ.update(env)
        starts = served_starts(fakes, symbols, sessions)
        for provider in providers:
            os.environ["BACKFILL_PROVIDERS"] = provider
            direct_walls, dagster_walls = [], []
            for attempt in range(args.repeat):  # alternating, so both see the same load
                before = fakes.calls(provider)
                wall, direct_written, direct_stored = direct(provider, symbols, sessions, checks, env)
                direct_walls.append(wall)
                direct_calls = fakes.calls(provider) - before

                seen = len(fakes.log)
                wall, runs, stored = with_dagster(
                    provider, symbols, sessions, checks, Path(tmp) / str(attempt), args.event_log,
                    args.synchronous_commit,
                )
                dagster_walls.append(wall)
                log = fakes.log[seen:]
            direct_s, run_s = min(direct_walls), min(dagster_walls)
            calls = sum(1 for e in log if e.provider == provider)
            returned = bars_returned(log, provider, starts)
            floor = floor_calls(provider, returned)
            ratio = calls / floor
            overhead = run_s - direct_s
            share = overhead / run_s

            print(f"{provider}: UI-style backfill of bars_m15, {len(symbols)} symbols x {len(sessions)} sessions "
                  f"({sessions[0]}..{sessions[-1]}) = {n:,} partitions, checks {'on' if checks else 'off'}, "
                  f"planned events {'one per asset and run' if args.subset_planned or args.event_log == 'bulk' else 'one per partition'}, "
                  f"{args.event_log} event log")
            print(f"  API calls                {calls:>10,}   (direct, no Dagster: {direct_calls:,})")
            print(f"  naive, 1 per partition   {n:>10,}")
            print(f"  floor                    {floor:>10,}   ({sum(returned.values()):,} bars returned, "
                  f"04:00-20:00 inside the requested windows: no regular-hours filter)")
            print(f"  calls / floor            {ratio:>10.2f}   target <= {TARGET_RATIO[provider]}  "
                  f"{verdict(ratio <= TARGET_RATIO[provider])}")
            print(f"  Dagster runs             {runs:>10,}   target <= {TARGET_RUNS}  {verdict(runs <= TARGET_RUNS)}")
            print(f"  m15 bars written         {stored:>10,}   (regular hours; direct: {direct_stored:,})")
            print(f"  wall, Dagster            {run_s:>10.1f} s   (best of {args.repeat}: {_walls(dagster_walls)})")
            print(f"  wall, direct             {direct_s:>10.1f} s   (best of {args.repeat}: {_walls(direct_walls)})")
            print(f"  bookkeeping              {overhead:>10.1f} s = {overhead / n * 1000:.2f} ms per partition, "
                  f"{share:.0%} of the Dagster wall   target < 33%  {verdict(share < TARGET_BOOKKEEPING)}")
            assert stored == direct_stored == direct_written


if __name__ == "__main__":
    main()

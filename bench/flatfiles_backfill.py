"""A box of all four bar assets through the flat-files fake vs through the Alpaca fake, same sitting.

    python bench/flatfiles_backfill.py [--symbols 50] [--sessions 20] [--fillers 500]

One range run of the all_bars job (m15, h1, h4, d1) over symbols x sessions (the sessions ending
2025-12-31, raw prices: BACKFILL_ADJUSTMENT=raw, so neither side needs corporate actions), executed
in a child process per provider on a persistent PostgreSQL instance (the deployed event log) into a
fresh PostgreSQL store. The fakes share one synthetic market and run in this process, so the child's
peak memory is the run worker's alone. Each file of the flat-files fake also carries `--fillers`
tickers that nobody asked for, so the file is whole-market-like in size; its files are generated
before anything is timed (warm), as the real ones exist before a backfill.

Printed per provider: wall time, requests (GETs / API calls), bytes read, bars written, run worker
peak RSS; then the flat files' ratios against Alpaca. Targets: GETs = sessions x 2 (minute + day
files) whatever the symbols; peak RSS <= 1 GB. The machine may be shared: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pg_instance import PG, QUIET, fresh_pg_database, pg_instance  # noqa: E402

LAST_SESSION = date(2025, 12, 31)
FAKE_NOW = pd.Timestamp("2026-01-02 18:00", tz="UTC")  # every session closed, every file published
PROVIDERS = ("flatfiles", "alpaca")


def box(symbols: int, sessions: int) -> tuple[list[str], list[date]]:
    from backfill_dagster.domain.calendar import xnys

    days = xnys().sessions(date(2000, 1, 1), LAST_SESSION)[-sessions:]
    return [f"S{i:03d}" for i in range(symbols)], days


def one_run(provider: str, symbols: list[str], sessions: list[date], env: dict[str, str]) -> dict:
    """The child: one range run of all four assets; its figures as JSON."""
    import sqlalchemy as sa

    from backfill_dagster.definitions import build_definitions
    from backfill_dagster.instance.event_log_tuning import EVENT_BATCH_SIZE
    from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
    from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME, range_tags
    from backfill_dagster.providers.base import Adjustment
    from backfill_dagster.settings import Settings
    from backfill_dagster.store import Watchlist, shared_engine

    os.environ["DAGSTER_EVENT_BATCH_SIZE"] = EVENT_BATCH_SIZE
    os.environ.update(env)
    url = f"{PG}/{fresh_pg_database('bench_store')}"
    Watchlist(shared_engine(url)).add(symbols)
    home = Path(tempfile.mkdtemp(prefix=f"ffbench_{provider}_"))
    settings = Settings(data_dir=home, database_url=url, history_start=sessions[0], providers=(provider,),
                        adjustment=Adjustment.RAW, rate_limits={"alpaca": 0, "flatfiles": 0})
    job = build_definitions(settings).resolve_job_def(ALL_BARS_JOB)  # provider settings: os.environ
    with pg_instance(home / "dagster") as instance:
        instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, symbols)
        start = time.perf_counter()
        result = job.execute_in_process(instance=instance, run_config=QUIET,
                                        tags=range_tags((symbols[0], sessions[0]), (symbols[-1], sessions[-1])))
        wall = time.perf_counter() - start
        assert result.success
    with shared_engine(url).connect() as conn:
        counts = dict(conn.execute(sa.text("SELECT timeframe, count(*) FROM ohlc_bars GROUP BY timeframe")).all())
        served = dict(conn.execute(sa.text("SELECT provider, count(*) FROM bar_coverage GROUP BY provider")).all())
    return {"wall_s": wall, "bars": counts, "served_by": served,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--fillers", type=int, default=500, help="unrequested tickers in every flat file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    symbols, sessions = box(args.symbols, args.sessions)
    if args.child:
        print(json.dumps(one_run(args.child, symbols, sessions, json.loads(os.environ["BENCH_ENV"]))))
        return

    from backfill_dagster.fakes import FakeConfig, FakeProviders
    from backfill_dagster.fakes.flatfiles import FakeFlatFiles, FlatFilesConfig

    market = FakeConfig(now=lambda: FAKE_NOW)
    with FakeProviders(market, host="127.0.0.1", port=0) as rest, \
            FakeFlatFiles(FlatFilesConfig(symbols=tuple(symbols), fillers=args.fillers, pitfall_tickers=False),
                          market=market) as files:
        start = time.perf_counter()
        files.warm(sessions)
        print(f"box: {len(symbols)} symbols x {len(sessions)} sessions ({sessions[0]}..{sessions[-1]}), "
              f"files of {len(symbols) + args.fillers} tickers, generated in {time.perf_counter() - start:.1f} s")
        files.reset()
        figures = {}
        for provider in PROVIDERS:
            env = {**rest.env(), **files.env()}
            before_rest, before_files = len(rest.log), len(files.log)
            child = subprocess.run([sys.executable, __file__, "--symbols", str(args.symbols), "--sessions",
                                    str(args.sessions), "--child", provider],
                                   env={**os.environ, "BENCH_ENV": json.dumps(env)}, capture_output=True, text=True)
            if child.returncode:
                sys.exit(f"{provider} run failed:\n{child.stderr[-4000:]}")
            out = json.loads(child.stdout.strip().splitlines()[-1])
            rest_log, files_log = rest.log[before_rest:], files.log[before_files:]
            if provider == "flatfiles":
                out["requests"] = sum(1 for e in files_log if e.operation == "GetObject")
                out["bytes"] = sum(e.bytes_sent for e in files_log if e.operation == "GetObject")
                out["fallback_calls"] = len(rest_log)
            else:
                out["requests"] = sum(1 for e in rest_log if e.provider == "alpaca")
                out["bytes"] = None  # the REST fakes' log does not count bytes
            figures[provider] = out
            read = "n/a" if out["bytes"] is None else f"{out['bytes'] / 1e6:.1f} MB"
            print(f"{provider:9s} wall {out['wall_s']:7.1f} s  requests {out['requests']:6d}  bytes {read}  "
                  f"bars {out['bars']}  served_by {out['served_by']}  peak RSS {out['peak_rss_mb']:.0f} MB")
        f, a = figures["flatfiles"], figures["alpaca"]
        target = 2 * len(sessions)
        print(f"flatfiles / alpaca: wall {f['wall_s'] / a['wall_s']:.2f}x, requests {f['requests']}/{a['requests']}, "
              f"peak RSS {f['peak_rss_mb'] / a['peak_rss_mb']:.2f}x")
        print(f"GETs = sessions x 2 ({target}): {'PASS' if f['requests'] == target else 'MISS'}; "
              f"no fallback: {'PASS' if f['fallback_calls'] == 0 else 'MISS'}; "
              f"peak RSS <= 1 GB: {'PASS' if f['peak_rss_mb'] <= 1024 else 'MISS'}; "
              f"same bars stored: {'PASS' if f['bars'] == a['bars'] else 'MISS'}")


if __name__ == "__main__":
    main()

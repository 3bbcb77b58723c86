"""A whole-market UI backfill, at a size this machine finishes.

    python bench/scale_backfill.py [--symbols 100] [--sessions 504] [--alpaca-rate 200] [--timeout-min 60]
                                   [--runs boxes|per-symbol] [--provider alpaca|polygon|flatfiles]

A deployment as a user runs it (PostgreSQL instance with the project's dagster.yaml, PostgreSQL
store, dagster-webserver + dagster-daemon), its provider Alpaca pointed at the fake servers on
loopback (served from this process) with Alpaca's limit of `--alpaca-rate` requests a minute
enforced by the fake, and the client's own shared budget at the same figure. The symbols are added
with `backfill-dagster watchlist add`; then all four assets over symbols x sessions are launched as
the UI launches a backfill (GraphQL `launchPartitionBackfill` with the partition names), and the
daemon, started right after, runs it (its gap sensor leaves the backfill's partitions to it) as
boxes of many symbols, or with `--runs per-symbol` as Dagster forms runs on its own (one run per
symbol: BACKFILL_BOX_PARTITIONS=0), the baseline. Reported: wall time from launch to the backfill's end, Alpaca calls against the
floor (ceil(bars the requests returned / 10,000 a page), m15 and d1), runs (the backfill's and
any the gap sensor made), peak RSS of the daemon's tree and of the run workers (sampled every
second), the ledger's counts, and where the wall went: when the daemon submitted the runs, how
long each waited in the queue and for its worker, and how many ran at once. Then, unless
--no-direct, the same work with no Dagster on a fresh store and fresh fakes at the same limit:
each symbol's m15 and d1 fetched and its h1 and h4 derived, symbol after symbol, as each run does;
the difference is Dagster's share of the whole-market backfill.

With `--provider flatfiles` the deployment's providers are `flatfiles,alpaca` on a raw store (the flat
files' prices as they are, so no corporate actions are needed first), the flat-files fake served
from this process with one file per session of the watchlist's tickers and `--fillers` more, every
file generated before the launch (kept in `--flatfiles-cache` for the next sitting). The daemon then
forms boxes of every symbol over few sessions (BACKFILL_BOX_SHAPE follows the providers' order), and
the report adds the GETs of minute and day files against the target (one of each a session), the
bytes downloaded, and Alpaca's fallback calls (only for the m15 of tickers whose closing minute the
fake's January 2025 minute files lack, ~0.4% a session, as the real files did); the direct baseline reads the same
files through the provider with no Dagster, box by box.

With `--provider polygon` the deployment's provider is Polygon with no rate limit (a paid plan:
POLYGON_RATE_LIMIT=0, the fake unlimited; `--polygon-rate N` sets a limit a minute on both) and full
history (POLYGON_HISTORY_DAYS=0, as paid plans reach back; the free plan's two years from today
leave the box's first sessions to no provider), one
symbol a request and 50,000 base minute aggregates a page, as the API pages. The report gives
Polygon's calls against the direct baseline's for the same work, and Dagster's share of the wall.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_daemon import MB, Sampler, ledger  # noqa: E402
from scale_deploy import BIN, Deployment, db_sizes, history_for, load_average, symbols as symbol_names  # noqa: E402
from tests.deploy import BACKFILL_STATUS, LAUNCH_BACKFILL  # noqa: E402

warnings.filterwarnings("ignore", message=".*is currently in beta.*")

ASSETS = ["bars_m15", "bars_h1", "bars_h4", "bars_d1"]
DONE = ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=504)
    parser.add_argument("--alpaca-rate", type=int, default=200, help="requests a minute (fake and client)")
    parser.add_argument("--timeout-min", type=float, default=60.0)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--no-direct", action="store_true", help="skip the baseline with no Dagster")
    parser.add_argument("--direct-only", type=float, default=None, metavar="WALL_S",
                        help="only the baseline with no Dagster, compared with a backfill's wall measured before")
    parser.add_argument("--runs", choices=("boxes", "per-symbol"), default="boxes",
                        help="how the daemon forms the backfill's runs (per-symbol: Dagster's own)")
    parser.add_argument("--box-partitions", type=int, default=12_000, help="BACKFILL_BOX_PARTITIONS for boxes")
    parser.add_argument("--backfill-runs", type=int, default=None,
                        help="runs of one backfill at once (the dagster/backfill limit; dagster.yaml's by default)")
    parser.add_argument("--code-server", action="store_true",
                        help="one standalone code server (`dagster code-server start`, a grpc_server workspace) "
                             "instead of the code servers the webserver and the daemon each start")
    parser.add_argument("--provider", choices=("alpaca", "polygon", "flatfiles"), default="alpaca",
                        help="the first provider (flatfiles: Alpaca behind it as the fallback)")
    parser.add_argument("--polygon-rate", type=int, default=0,
                        help="polygon: requests a minute (fake and client); 0, the default: no limit")
    parser.add_argument("--fillers", type=int, default=0,
                        help="flat files: tickers in every file besides the watchlist's (a real file has ~10,000)")
    parser.add_argument("--flatfiles-cache", type=Path,
                        default=Path.home() / ".cache" / "backfill_dagster" / "bench-flatfiles",
                        help="flat files: where the fake keeps generated files across sittings")
    parser.add_argument("--warm-processes", type=int, default=2, help="flat files: processes generating files")
    parser.add_argument("--warm-only", action="store_true", help="flat files: generate the files and stop")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_scale_backfill"))
    args = parser.parse_args()
    if args.symbols < 1 or args.sessions < 1 or args.alpaca_rate < 1:
        parser.error("--symbols, --sessions and --alpaca-rate must be positive")

    from backfill_dagster.fakes import FakeConfig, FakeProviders

    history_start, sessions = history_for(args.sessions)
    syms = symbol_names(args.symbols)
    keys = [f"{d.isoformat()}|{s}" for s in syms for d in sessions]
    rest = "polygon" if args.provider == "polygon" else "alpaca"  # the REST provider the fakes count
    rate = args.polygon_rate if rest == "polygon" else args.alpaca_rate
    config = FakeConfig(rate_limits={rest: rate} if rate else {}, rate_window_s=60.0, polygon_history_days=None)
    flat = args.provider == "flatfiles"
    if args.direct_only is not None:
        if flat:
            return report_direct_flat_files(syms, sessions, args, args.direct_only)
        return report_direct(syms, sessions, history_start, rate, rest, args.direct_only, None)
    with FakeProviders(config) as fakes, flat_files(config, syms, args) as files:
        if flat:
            began = time.monotonic()
            made = files.warm(sessions, processes=args.warm_processes)
            print(f"flat files: {made} files of {len(syms) + args.fillers} tickers ready in "
                  f"{time.monotonic() - began:.0f} s ({args.flatfiles_cache})", flush=True)
            if args.warm_only:
                return
            files.reset()
        # Named after the variant, so two variants can run side by side on their own databases.
        name = (f"bench_scale_backfill_{args.symbols}x{args.sessions}{'_ff' if flat else ''}{'_pg' if rest == 'polygon' else ''}"
                f"{'_cs' if args.code_server else ''}{f'_r{args.backfill_runs}' if args.backfill_runs else ''}")
        dep = Deployment(name, args.workdir / name, history_start, extra_env={
            **fakes.env(), "BACKFILL_PROVIDERS": "flatfiles,alpaca" if flat else rest,
            "ALPACA_RATE_LIMIT": str(args.alpaca_rate), "POLYGON_RATE_LIMIT": str(args.polygon_rate),
            "POLYGON_HISTORY_DAYS": "0",
            "BACKFILL_BOX_PARTITIONS": str(args.box_partitions) if args.runs == "boxes" else "0",
            **({**files.env(), "BACKFILL_ADJUSTMENT": "raw"} if flat else {}),
        })
        print(f"whole-market backfill bench: {len(syms)} symbols x {len(sessions)} sessions "
              f"({sessions[0]}..{sessions[-1]}) x {len(ASSETS)} assets = {len(keys) * len(ASSETS):,} asset partitions; "
              f"{'flat files first, ' if flat else ''}{rest.title()} fake at {f'{rate}/min' if rate else 'no limit'}; "
              f"runs: {args.runs}"
              f"{f' of {args.box_partitions:,}' if args.runs == 'boxes' else ''}, "
              f"{args.backfill_runs or 'dagster.yaml'} at once; code server: "
              f"{'standalone' if args.code_server else 'per process'}; load {load_average()}", flush=True)
        dep.create()
        if args.backfill_runs:
            set_backfill_runs(dep.home / "dagster.yaml", args.backfill_runs)
        try:
            out = dep.run(BIN / "backfill-dagster", "watchlist", "add", *syms)
            if out.returncode != 0:
                raise SystemExit(f"watchlist add failed:\n{out.stdout}\n{out.stderr}")
            roots = [dep.start_code_server().pid] if args.code_server else []
            dep.start_webserver()
            began = time.monotonic()
            launched = dep.graphql(LAUNCH_BACKFILL, {"params": {
                "assetSelection": [{"path": [a]} for a in ASSETS], "partitionNames": keys,
                "fromFailure": False, "tags": [], "title": f"whole market {len(syms)}x{len(sessions)}",
            }})["launchPartitionBackfill"]
            if launched["__typename"] != "LaunchBackfillSuccess":
                raise SystemExit(f"launch refused: {launched}")
            backfill_id = launched["backfillId"]
            print(f"launched backfill {backfill_id} in {time.monotonic() - began:.1f} s", flush=True)
            # The daemon starts after the launch, as when a user adds symbols and backfills them at
            # once: the gap sensor then sees the unfinished backfill and leaves its partitions to it.
            daemon = dep.start_daemon()
            # Every process of the deployment: the daemon, the webserver, each with the code servers
            # they start and the run workers those start (or a standalone code server and its workers).
            sampler = Sampler([daemon.pid, dep.processes["webserver"].pid, *roots])
            sampler.start()
            status = None
            next_line = 0.0
            while time.monotonic() - began < args.timeout_min * 60:
                status = dep.graphql(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
                elapsed = time.monotonic() - began
                if elapsed >= next_line or status["status"] in DONE:
                    counts, _ = ledger(dep.store_url)
                    done = {tf: counts.get((tf, "complete"), 0) for tf in ("m15", "h1", "h4", "d1")}
                    print(f"  t+{elapsed:5.0f} s {status['status']:<10} ledger complete {done} "
                          f"{rest} calls {fakes.calls(rest)}"
                          f"{f'  flat-file GETs {files.gets()}' if flat else ''}  processes "
                          f"{sampler.peak_total / MB:.0f} MB peak  load {load_average()}", flush=True)
                    next_line += 60
                if status["status"] in DONE:
                    break
                time.sleep(5)
            wall = time.monotonic() - began
            sampler.stop_event.set()
            sampler.join()
            calls = fakes.calls(rest)
            log = list(fakes.log)

            # The floor: bars the requests returned (every page the fake served, as it logged them),
            # 10,000 a page. Summed from the log: rebuilding every served bar did not finish at 500 symbols.
            def returned(timeframe: str) -> int:
                wanted = "15min" if timeframe == "m15" else "1day"
                return sum(entry.bars or 0 for entry in log
                           if entry.provider == "alpaca" and entry.status == 200
                           and entry.query.get("timeframe", "").lower() == wanted)

            m15_bars, d1_bars = returned("m15"), returned("d1")
            floor = math.ceil(m15_bars / 10_000) + math.ceil(d1_bars / 10_000)
            statuses = Counter(e.status for e in log if e.provider == "alpaca")
            paths = Counter(e.path.rsplit("/", 1)[-1] if "/bars" not in e.path else "bars" for e in log
                            if e.provider == "alpaca")
            with dep.instance() as instance:
                records = instance.get_run_records()
            by = Counter((("backfill" if r.dagster_run.tags.get("dagster/backfill") == backfill_id else
                           r.dagster_run.tags.get("backfill/requested_by", "other")), r.dagster_run.status.value)
                         for r in records)
            walls = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
            ours = [r for r in records if r.dagster_run.tags.get("dagster/backfill") == backfill_id]
            launch_ts = time.time() - (time.monotonic() - began)
            counts, bars = ledger(dep.store_url)
            total_db, tables = db_sizes(dep.dagster_db)
            dep.stop()

            print()
            print(f"== backfill {status['status'] if status else '?'} after {wall:.0f} s ({wall / 60:.1f} min); "
                  f"{len(keys) * len(ASSETS):,} asset partitions")
            for s in (status or {}).get("assetBackfillData", {}).get("assetBackfillStatuses", []):
                print(f"  {s['assetKey']['path'][0]:<9} targeted {s['numPartitionsTargeted']:>7,} "
                      f"materialized {s['numPartitionsMaterialized']:>7,} failed {s['numPartitionsFailed']:>5,}")
            if rest == "alpaca":
                print(f"== Alpaca calls {calls:,} ({dict(statuses)}; by endpoint {dict(paths)}); floor {floor:,} "
                      f"(m15 {m15_bars:,} + d1 {d1_bars:,} bars returned, 10,000 a page): "
                      f"{f'{calls / floor:.2f}x' if floor else 'no floor:'} floor; "
                      f"the rate limit alone needs {floor / args.alpaca_rate:.1f} min")
            else:
                polygon = Counter(e.status for e in log if e.provider == "polygon")
                print(f"== Polygon calls {calls:,} ({dict(polygon)}), {calls / len(syms):.1f} a symbol")
            if flat:
                print(flat_files_report(files, sessions))
            print("== runs: " + ", ".join(f"{who} {st} {n}" for (who, st), n in sorted(by.items())))
            if walls:
                print(f"   run wall median {sorted(walls)[len(walls) // 2]:.1f} s, max {max(walls):.1f} s")
            print(timeline(ours, launch_ts, wall))
            print(f"== peak RSS: all processes {sampler.peak_total / MB:.0f} MB, run workers at once "
                  f"{sampler.max_workers}; " + "; ".join(
                f"{r} one {sampler.peak_by_role[r] / MB:.0f} MB, together {sampler.peak_sum_by_role[r] / MB:.0f} MB"
                for r in ("daemon", "webserver", "code server", "run worker", "other") if r in sampler.peak_by_role))
            print("== ledger: " + ", ".join(f"{tf} {st} {n:,}" for (tf, st), n in sorted(counts.items())))
            print(f"== Dagster database {total_db / MB:.0f} MB: " +
                  ", ".join(f"{t} {b / MB:.0f} MB" for t, b, _ in tables[:4]))
            print(f"load at end {load_average()}")
        finally:
            dep.stop()
            if not args.keep:
                dep.drop()
    if not args.no_direct and flat:
        report_direct_flat_files(syms, sessions, args, wall)
    elif not args.no_direct:
        report_direct(syms, sessions, history_start, rate, rest, wall, calls)


def report_direct_flat_files(syms, sessions, args, wall: float) -> None:
    direct_s, gets, calls = direct_flat_files(syms, sessions, args)
    print(f"== direct, no Dagster: {direct_s:.0f} s, {gets:,} flat-file GETs, {calls:,} Alpaca calls; Dagster's share "
          f"of the backfill: ({wall:.0f} - {direct_s:.0f}) / {wall:.0f} = {(wall - direct_s) / wall:.0%}")


def report_direct(syms, sessions, history_start, rate: int, rest: str, wall: float, calls: int | None) -> None:
    direct_s, direct_calls = direct_baseline(syms, sessions, history_start, rate, rest)
    bound = f" (the rate limit alone needs {direct_calls / rate:.1f} min)" if rate else ""
    versus = f"through Dagster {calls / direct_calls:.2f}x as many; " if calls else ""
    print(f"== direct, no Dagster: {direct_s:.0f} s, {direct_calls:,} {rest.title()} calls{bound}, {versus}"
          f"Dagster's share of the backfill: ({wall:.0f} - {direct_s:.0f}) / {wall:.0f} = {(wall - direct_s) / wall:.0%}")


@contextlib.contextmanager
def flat_files(market, syms: list[str], args):
    """The flat-files fake over the REST fakes' market with the watchlist's tickers (and `--fillers`
    more), its generated files kept across sittings; None unless --provider flatfiles."""
    if args.provider != "flatfiles":
        yield None
        return
    from backfill_dagster.fakes.flatfiles import FakeFlatFiles, FlatFilesConfig

    args.flatfiles_cache.mkdir(parents=True, exist_ok=True)
    config = FlatFilesConfig(symbols=tuple(syms), fillers=args.fillers, pitfall_tickers=False,
                             cache_dir=str(args.flatfiles_cache), cache_max_bytes=64 * 1024**3)
    with FakeFlatFiles(config, market=market) as files:
        yield files


def flat_files_report(files, sessions) -> str:
    """GETs against their target: one minute and one day file for each session whose files are
    published by now (a session closed last evening is fetched from the fallback provider)."""
    from backfill_dagster.providers.flatfiles import publication

    now = pd.Timestamp.now(tz="UTC")
    published = sum(1 for s in sessions if publication(s) <= now)
    gets = {d: files.gets(prefix=f"us_stocks_sip/{d}_aggs_v1/") for d in ("minute", "day")}
    sent = sum(e.bytes_sent for e in files.log if e.operation == "GetObject")
    refused = Counter(e.status for e in files.log if e.operation == "GetObject" and e.status != 200)
    ok = gets["minute"] == published and gets["day"] == published
    return (f"== flat-file GETs: minute {gets['minute']:,}, day {gets['day']:,} (target: {published:,} each, one a "
            f"session whose files are published, of {len(sessions):,}: {'met' if ok else 'MISSED'}); "
            f"refused {dict(refused) or 'none'}; "
            f"downloaded {sent / MB:.0f} MB")


def direct_flat_files(syms: list[str], sessions, args) -> tuple[float, int, int]:
    """The flat-file backfill's work with no Dagster: boxes of every symbol over as many sessions as
    a box run holds, m15 and d1 read from the files through the provider, h1 and h4 derived, on a
    fresh raw store, with the deployment's fallback (Alpaca's fake at its limit) for what the files
    do not serve: the session closed last evening (published the next morning) and the minute
    files' known defects. Returns (wall s, GETs, Alpaca calls)."""
    from backfill_dagster.domain.calendar import xnys
    from backfill_dagster.fakes import FakeConfig, FakeProviders
    from backfill_dagster.orchestration.resources import ProvidersResource, StoreResource
    from backfill_dagster.settings import PROVIDER_ENV_VARS
    from backfill_dagster.store import Watchlist, shared_engine
    from scale_deploy import PG, PG_ADMIN, create_database, drop_database

    name = "bench_scale_backfill_direct_ff"
    create_database(PG_ADMIN, name)
    url = f"{PG}/{name}"
    calendar = xnys()
    width = max(1, args.box_partitions // len(syms))
    try:
        Watchlist(shared_engine(url)).add(syms)
        config = FakeConfig(rate_limits={"alpaca": args.alpaca_rate}, rate_window_s=60.0, polygon_history_days=None)
        with FakeProviders(config) as fakes, flat_files(config, syms, args) as files:
            creds = {k.lower(): v for k, v in {**fakes.env(), **files.env()}.items() if k in PROVIDER_ENV_VARS}
            store = StoreResource(database_url=url, adjustment="raw")
            start = time.perf_counter()
            providers = ProvidersResource(names=["flatfiles", "alpaca"], rate_limits={"alpaca": args.alpaca_rate},
                                          rate_window_s=60.0, **creds)
            for first in range(0, len(sessions), width):
                fill_box([(s, d) for s in syms for d in sessions[first:first + width]], providers, store, calendar)
            return time.perf_counter() - start, files.gets(), fakes.calls("alpaca")
    finally:
        drop_database(PG_ADMIN, name)


def set_backfill_runs(path: Path, runs: int) -> None:
    """The deployment's dagster.yaml with `runs` runs of a backfill at once, and as many runs
    started ahead of a free provider pool slot (op_granularity_run_buffer) as that leaves."""
    import yaml

    config = yaml.safe_load(path.read_text())
    for limit in config["concurrency"]["runs"]["tag_concurrency_limits"]:
        if limit["key"] == "dagster/backfill":
            limit["limit"] = runs
    config["concurrency"]["pools"]["op_granularity_run_buffer"] = max(0, runs - config["concurrency"]["pools"]["default_limit"])
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    v = sorted(values)
    return f"median {v[len(v) // 2]:.1f} s, p90 {v[int(len(v) * 0.9)]:.1f} s, max {v[-1]:.1f} s"


def timeline(records, launch_ts: float, wall: float) -> str:
    """Where the backfill's wall went: submission by the daemon, queue and worker start, run time."""
    if not records:
        return "== timeline: no backfill runs"
    created = sorted(r.create_timestamp.timestamp() - launch_ts for r in records)
    queued = [r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time]
    ran = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    per_window = Counter(int(c // 30) for c in created)
    return (
        f"== timeline ({len(records)} backfill runs): submitted from t+{created[0]:.0f} s to t+{created[-1]:.0f} s "
        f"(per 30 s: {', '.join(f't+{w * 30}:{n}' for w, n in sorted(per_window.items()))}); "
        f"submitted -> started (queue, worker start-up) {_quantiles(queued)}; "
        f"started -> ended {_quantiles(ran)}; runs' time in all {sum(ran):.0f} s = "
        f"{sum(ran) / wall:.1f} running on average over the {wall:.0f} s"
    )


def direct_baseline(syms: list[str], sessions, history_start: str, rate: int,
                    provider: str = "alpaca") -> tuple[float, int]:
    """The backfill's work with no Dagster: per symbol, m15 and d1 fetched, h1 and h4 derived, on a
    fresh store, against fresh fakes enforcing the same limit (none when `rate` is 0), the client's
    budget at the same. Returns (wall s, the provider's calls)."""
    from backfill_dagster.domain.calendar import xnys
    from backfill_dagster.fakes import FakeConfig, FakeProviders
    from backfill_dagster.orchestration.resources import ProvidersResource, StoreResource
    from backfill_dagster.settings import PROVIDER_ENV_VARS
    from backfill_dagster.store import Watchlist, shared_engine
    from scale_deploy import PG, PG_ADMIN, create_database, drop_database

    name = "bench_scale_backfill_direct"
    create_database(PG_ADMIN, name)
    url = f"{PG}/{name}"
    calendar = xnys()
    config = FakeConfig(rate_limits={provider: rate} if rate else {}, rate_window_s=60.0, polygon_history_days=None)
    try:
        Watchlist(shared_engine(url)).add(syms)
        with FakeProviders(config) as fakes:
            creds = {k.lower(): v for k, v in fakes.env().items() if k in PROVIDER_ENV_VARS}
            store = StoreResource(database_url=url)
            start = time.perf_counter()
            providers = ProvidersResource(names=[provider], rate_limits={provider: rate}, rate_window_s=60.0,
                                          **creds, polygon_history_days="0")
            for symbol in syms:
                fill_box([(symbol, d) for d in sessions], providers, store, calendar)
            return time.perf_counter() - start, fakes.calls(provider)
    finally:
        drop_database(PG_ADMIN, name)


def fill_box(partitions, providers, store, calendar) -> None:
    """What one run of the backfill does, with no Dagster: m15 and d1 fetched, h1 and h4 derived."""
    from backfill_dagster.domain.timeframes import Timeframe
    from backfill_dagster.ingest import derive_partitions, fetch_partitions

    bars = store.bar_store(calendar)
    for timeframe in (Timeframe.M15, Timeframe.D1):
        router = providers.router(store, calendar)
        try:
            report = fetch_partitions(partitions, timeframe, router, bars, run_id="direct")
        finally:
            router.close()
        assert report.ok, report.failure_summary()
    for timeframe in (Timeframe.H1, Timeframe.H4):
        assert derive_partitions(partitions, timeframe, bars, run_id="direct").ok


if __name__ == "__main__":
    main()

"""The UI at whole-market scale: every GraphQL query the asset pages issue, timed in a
real browser, with ~252,000 checked partitions per asset.

    python bench/scale_ui.py [--symbols 500] [--sessions 504] [--box 10] [--assets all|m15,d1]
                             [--keep] [--rounds 2] [--quiet-s 3] [--page-timeout 600] [--limit-s 3]

1. A deployment as a user runs it: PostgreSQL Dagster instance with the project's dagster.yaml,
   PostgreSQL store, demo provider, `backfill-dagster watchlist add` of the symbols (watchlist
   table and symbol partitions). The partitions definition holds exactly the last `--sessions`
   closed sessions (BACKFILL_HISTORY_START is set so) plus today's.
2. Populate: every symbol x session partition of the assets (default all four, so the daemon's
   h1/h4 sweep has nothing to derive while the pages are timed) with their checks, through the
   project's own range runs: the `all_bars` job over boxes of `--box` symbols x all sessions,
   executed in this process against the instance (the same events, check summaries and tags a
   daemon-launched run writes). Timed per run.
3. dagster-webserver and dagster-daemon start; headless Chromium (Debian's /usr/bin/chromium)
   loads the overview root, the global asset graph, the catalog, and the overview, partitions and
   checks pages of bars_m15 and bars_d1, `--rounds` times each. Every GraphQL request's
   operationName and duration (browser resource timing: request start to response end) is
   recorded until no GraphQL request has been pending for `--quiet-s` seconds. Prints a table
   (page, query, seconds, max) and flags every request over `--limit-s` (3 s by default) or not
   finished when the page was left.

`--keep` leaves the databases (bench_scale_ui_<symbols>x<sessions>_{dagster,store}) and reuses them
when they exist and are populated, so the pages can be timed again without filling them again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_deploy import BIN, Deployment, db_sizes, history_for, load_average, symbols as symbol_names  # noqa: E402

warnings.filterwarnings("ignore", message=".*is currently in beta.*")
warnings.filterwarnings("ignore", message=".*is currently in preview.*")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ASSETS = ["bars_m15", "bars_h1", "bars_h4", "bars_d1"]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def pages() -> list[tuple[str, str]]:
    rows = [("overview root /", "/"), ("asset graph", "/asset-groups"), ("asset catalog", "/assets")]
    for asset in ("bars_m15", "bars_d1"):
        rows += [
            (f"{asset} overview", f"/assets/{asset}"),
            (f"{asset} partitions", f"/assets/{asset}?view=partitions"),
            (f"{asset} checks", f"/assets/{asset}?view=checks"),
        ]
    return rows


# ---------------------------------------------------------------------------------------- populate
def populate(dep: Deployment, syms: list[str], sessions, box: int, assets: list[str]) -> dict:
    import dagster as dg

    from backfill_dagster.definitions import build_definitions
    from backfill_dagster.instance.event_log_tuning import batch_dagster_events
    from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
    from backfill_dagster.orchestration.partitions import range_tags
    from backfill_dagster.settings import Settings

    out = dep.run(BIN / "backfill-dagster", "watchlist", "add", *syms)
    if out.returncode != 0:
        raise SystemExit(f"watchlist add failed:\n{out.stdout}\n{out.stderr}")
    dep.use_in_this_process()
    batch_dagster_events()
    defs = build_definitions(Settings.from_env(), env_has_database_url=True)
    job = defs.resolve_job_def(ALL_BARS_JOB)
    if set(assets) != set(ASSETS):
        job = job.get_subset(asset_selection={dg.AssetKey(a) for a in assets})
    walls = []
    began = time.perf_counter()
    with dep.instance() as instance:
        for i in range(0, len(syms), box):
            block = syms[i:i + box]
            start = time.perf_counter()
            result = job.execute_in_process(
                instance=instance, run_config=QUIET,
                tags=range_tags((block[0], sessions[0]), (block[-1], sessions[-1])),
            )
            walls.append(time.perf_counter() - start)
            if not result.success:
                raise SystemExit(f"range run over {block[0]}..{block[-1]} failed")
            checks = result.get_asset_check_evaluations()
            done = min(i + box, len(syms)) * len(sessions)
            print(f"  run {i // box + 1}: {block[0]}..{block[-1]} x {len(sessions)} sessions, {walls[-1]:.1f} s, "
                  f"{len(checks)} check summaries ({sum(c.passed for c in checks)} passed); "
                  f"{done:,} partitions per asset so far; load {load_average()}", flush=True)
    return {"runs": len(walls), "wall_s": time.perf_counter() - began, "median_run_s": statistics.median(walls),
            "partitions_per_asset": len(syms) * len(sessions)}


def populated(dep: Deployment, assets: list[str], expected: int) -> bool:
    import dagster as dg

    with dep.instance() as instance:
        return all(len(instance.get_materialized_partitions(dg.AssetKey(a))) >= expected for a in assets)


def checked_partitions(dep: Deployment) -> dict[str, int]:
    """Check summaries stored per check, and the partitions they judged (metadata), from Dagster."""
    import dagster as dg

    counts = {}
    with dep.instance() as instance:
        for asset, check in (("bars_m15", "m15_completeness"), ("bars_d1", "bounds_m15")):
            records = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(dg.AssetKey(asset), check), limit=100_000
            )
            judged = 0
            for r in records:
                evaluation = r.event.dagster_event.event_specific_data if r.event and r.event.dagster_event else None
                md = getattr(evaluation, "metadata", {}) or {}
                if "partitions_checked" in md:
                    judged += md["partitions_checked"].value
            counts[f"{asset}.{check}"] = (len(records), judged)
    return counts


# ---------------------------------------------------------------------------------------- browser
def time_pages(base_url: str, rounds: int, quiet_s: float, page_timeout: float,
               only: list[str] | None = None) -> list[dict]:
    from playwright.sync_api import sync_playwright

    rows: list[dict] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            for round_ in range(1, rounds + 1):
                for label, path in pages():
                    if only and label not in only:
                        continue
                    rows += time_one_page(context, base_url + path, label, round_, quiet_s, page_timeout)
        finally:
            browser.close()
    return rows


def operation_of(request) -> str:
    try:
        body = request.post_data_json or {}
    except Exception:  # not JSON
        body = {}
    if isinstance(body, dict) and body.get("operationName"):
        return body["operationName"]
    if "op=" in request.url:
        return request.url.split("op=", 1)[1].split("&", 1)[0]
    return "?"


def time_one_page(context, url: str, label: str, round_: int, quiet_s: float, page_timeout: float) -> list[dict]:
    page = context.new_page()
    pending: dict = {}
    finished: list[dict] = []
    load = load_average()

    def on_request(request):
        if "/graphql" in request.url and request.method == "POST":
            pending[request] = (time.monotonic(), operation_of(request))

    def on_done(request, failed: bool):
        if request not in pending:
            return
        began, op = pending.pop(request)
        wall = time.monotonic() - began
        timing = request.timing
        seconds = timing["responseEnd"] / 1000 if timing and timing.get("responseEnd", -1) > 0 else wall
        finished.append({"page": label, "round": round_, "query": op, "seconds": seconds,
                         "state": "failed" if failed else "ok", "load": load})

    page.on("request", on_request)
    page.on("requestfinished", lambda r: on_done(r, False))
    page.on("requestfailed", lambda r: on_done(r, True))
    began = time.monotonic()
    page.goto(url, wait_until="load", timeout=page_timeout * 1000)
    quiet_since = time.monotonic()
    while time.monotonic() - began < page_timeout:
        page.wait_for_timeout(250)
        if pending:
            quiet_since = time.monotonic()
        elif finished and time.monotonic() - quiet_since >= quiet_s:
            break
    page_s = time.monotonic() - began
    unfinished = [{"page": label, "round": round_, "query": op, "seconds": time.monotonic() - t0,
                   "state": "unfinished", "load": load} for t0, op in pending.values()]
    page.close()
    rows = finished + unfinished
    slowest = max((r["seconds"] for r in rows), default=0)
    print(f"  round {round_} {label:<22} {len(rows):3d} GraphQL requests, slowest {slowest:6.2f} s, "
          f"page quiet after {page_s - quiet_s:6.1f} s; load {load}", flush=True)
    return rows


def report(rows: list[dict], limit_s: float) -> list[str]:
    by_key: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        by_key[(r["page"], r["query"])].append(r)
    order = [label for label, _ in pages()]
    order += sorted({r["page"] for r in rows} - set(order))
    lines = [f"{'page':<22} {'query':<44} {'n':>3} {'median s':>9} {'max s':>8}  flag"]
    for (page, query), rs in sorted(by_key.items(), key=lambda kv: (order.index(kv[0][0]), -max(r['seconds'] for r in kv[1]))):
        worst = max(r["seconds"] for r in rs)
        bad = [r["state"] for r in rs if r["state"] != "ok"]
        flag = ("OVER %.0f s" % limit_s if worst > limit_s else "") + (f" {','.join(sorted(set(bad)))}" if bad else "")
        lines.append(f"{page:<22} {query:<44} {len(rs):3d} {statistics.median(r['seconds'] for r in rs):9.3f} "
                     f"{worst:8.3f}  {flag}")
    over = [r for r in rows if r["seconds"] > limit_s or r["state"] != "ok"]
    lines.append(f"{len(rows)} GraphQL requests; slowest {max(r['seconds'] for r in rows):.2f} s; "
                 f"{len(over)} over {limit_s:.0f} s or not finished")
    return lines


def git_head(root: Path) -> str:
    import subprocess

    out = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    return out.stdout.strip()[:60]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=504)
    parser.add_argument("--box", type=int, default=10, help="symbols per range run (x all sessions)")
    parser.add_argument("--assets", default="all", help="all, or a comma list such as bars_m15,bars_d1")
    parser.add_argument("--keep", action="store_true", help="reuse a populated deployment; leave it afterwards")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quiet-s", type=float, default=3.0)
    parser.add_argument("--page-timeout", type=float, default=600.0)
    parser.add_argument("--limit-s", type=float, default=3.0)
    parser.add_argument("--settle-s", type=float, default=20.0,
                        help="seconds the daemon runs before the pages load (its sensors tick meanwhile)")
    parser.add_argument("--no-daemon", action="store_true", help="webserver only")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_scale_ui"))
    parser.add_argument("--json", type=Path, help="write every request's row here")
    parser.add_argument("--pages", help="only these pages, comma-separated labels as printed (e.g. 'bars_m15 overview')")
    parser.add_argument("--cold-status-cache", action="store_true",
                        help="clear Dagster's per-asset partition status cache (asset_keys.cached_status_data) before "
                             "the pages load, as on an instance whose UI nobody opened while partitions were written")
    parser.add_argument("--code-root", type=Path,
                        help="deploy another checkout of the project (e.g. a `git worktree` of an earlier commit), "
                             "for the earlier design's figures side by side")
    args = parser.parse_args()
    code_root = (args.code_root or Path(__file__).resolve().parents[1]).resolve()
    sys.path.insert(0, str(code_root))  # before the package is first imported
    if args.symbols < 1 or args.sessions < 1 or args.box < 1:
        parser.error("--symbols, --sessions and --box must be positive")
    assets = ASSETS if args.assets == "all" else [a.strip() for a in args.assets.split(",")]
    unknown = set(assets) - set(ASSETS)
    if unknown:
        parser.error(f"unknown asset(s) {sorted(unknown)}; choose from {ASSETS}")

    history_start, sessions = history_for(args.sessions)
    syms = symbol_names(args.symbols)
    name = f"bench_scale_ui_{args.symbols}x{args.sessions}" + ("_" + code_root.name.replace("-", "_") if args.code_root else "")
    dep = Deployment(name, args.workdir / name, history_start, code_root=code_root)
    n = len(syms) * len(sessions)
    print(f"whole-market UI bench: {len(syms)} symbols x {len(sessions)} sessions "
          f"({sessions[0]}..{sessions[-1]}) = {n:,} partitions per asset; assets {','.join(assets)}; "
          f"code {code_root} ({git_head(code_root)}); "
          f"load {load_average()}", flush=True)
    try:
        if args.keep and dep.exists() and populated(dep, assets, n):
            print(f"reusing populated databases {dep.dagster_db}, {dep.store_db}")
        else:
            dep.create()
            print("populating through range runs of the all_bars job ...", flush=True)
            filled = populate(dep, syms, sessions, args.box, assets)
            print(f"populated: {filled['runs']} runs, {filled['wall_s']:.0f} s "
                  f"(median {filled['median_run_s']:.1f} s a run of {args.box * len(sessions):,} partitions x "
                  f"{len(assets)} assets)", flush=True)
        for check, (summaries, judged) in checked_partitions(dep).items():
            print(f"  {check}: {summaries} check summaries covering {judged:,} checked partitions")
        total, tables = db_sizes(dep.dagster_db)
        print(f"  Dagster database {total / 1e6:.0f} MB: " + ", ".join(f"{t} {b / 1e6:.0f} MB" for t, b, _ in tables[:6]))

        if args.cold_status_cache:
            import psycopg

            with psycopg.connect(dep.store_url.rsplit("/", 1)[0] + "/" + dep.dagster_db, autocommit=True) as conn:
                cleared = conn.execute("UPDATE asset_keys SET cached_status_data = NULL "
                                       "WHERE cached_status_data IS NOT NULL").rowcount
            print(f"  cleared the partition status cache of {cleared} asset(s)")
        started = dep.start_webserver()
        print(f"webserver answered after {started:.1f} s; load {load_average()}", flush=True)
        if not args.no_daemon:
            dep.start_daemon()
            time.sleep(args.settle_s)  # let the daemon's sensors tick first, as on a live deployment
        only = [p.strip() for p in args.pages.split(",")] if args.pages else None
        if only and set(only) - {label for label, _ in pages()}:
            parser.error(f"unknown page(s) {sorted(set(only) - {label for label, _ in pages()})}; "
                         f"choose from {[label for label, _ in pages()]}")
        rows = time_pages(dep.webserver_url, args.rounds, args.quiet_s, args.page_timeout, only)
        print()
        print(f"GraphQL per page, {n:,} checked partitions per asset, webserver{'' if args.no_daemon else ' + daemon'} "
              f"running, {args.rounds} round(s); load after: {load_average()}")
        for line in report(rows, args.limit_s):
            print(line)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    finally:
        dep.stop()
        if not args.keep:
            dep.drop()


if __name__ == "__main__":
    main()

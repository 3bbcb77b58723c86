"""The webserver's and the standalone code server's RSS, as processes, through a whole-market
backfill's launch and status polls and the code server's sensor ticks; no daemon.

    python bench/server_processes.py [--symbols 500] [--sessions 504] [--polls 10] [--code-root DIR]

bench/scale_backfill.py's deployment with `--code-server` (PostgreSQL instance with the project's
dagster.yaml, PostgreSQL store, one `dagster code-server start`, dagster-webserver on a workspace
naming it) on fresh databases: the symbols added with `backfill-dagster watchlist add`, then
- launch: all four assets over every partition with `launchPartitionBackfill` (the partition
  names, as bench/scale_backfill.py and the UI's "Materialize partitions" dialog send them);
- polls as launched: bench/scale_backfill.py's status query, `--polls` times, 2 s apart;
- the backfill's row set from this process as the daemon leaves it half way: every partition
  requested, half the symbols materialized; polls again;
- sensor ticks: `dagster sensor preview` of `coverage_gaps` (twice) and `partition_status_cache`,
  which the code server evaluates (the gap sensor with the backfill unfinished and an empty ledger).
Every process is sampled from /proc every 0.5 s; per phase, the largest RSS of the webserver and of
each code server process (the `dagster code-server start` proxy and the `dagster api grpc` server
it starts, which loads the definitions and evaluates the sensors). `--code-root` deploys another
checkout (its package, dagster.yaml), e.g. the code before a change, on databases of its own.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_deploy import BIN, ROOT, Deployment, history_for, load_average, process_tree_rss, symbols as symbol_names  # noqa: E402
from tests.deploy import BACKFILL_STATUS, LAUNCH_BACKFILL  # noqa: E402

warnings.filterwarnings("ignore")
ASSETS = ["bars_m15", "bars_h1", "bars_h4", "bars_d1"]
MB = 1e6


def role(cmd: str) -> str:
    if "code-server" in cmd or "code_server" in cmd:
        return "code server proxy"
    if " api grpc" in cmd:
        return "code server (grpc)"
    if "dagster-webserver" in cmd or "dagster_webserver" in cmd:
        return "webserver"
    return "other"


class PhaseSampler(threading.Thread):
    def __init__(self, roots: list[int], interval: float = 0.5):
        super().__init__(daemon=True)
        self.roots, self.interval = roots, interval
        self.phase = "start"
        self.peaks: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.last: dict[str, int] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            _, tree = process_tree_rss(self.roots)
            now: dict[str, int] = defaultdict(int)
            for cmd, rss in tree.values():
                r = role(cmd)
                now[r] = max(now[r], rss)
            for r, rss in now.items():
                self.peaks[self.phase][r] = max(self.peaks[self.phase][r], rss)
            self.last = dict(now)
            self.stop_event.wait(self.interval)

    def enter(self, phase: str) -> None:
        time.sleep(self.interval * 2)
        self.phase = phase

    def line(self, phase: str) -> str:
        return ", ".join(f"{r} {v / MB:,.0f} MB" for r, v in sorted(self.peaks[phase].items()) if r != "other")


def set_half_done(dep: Deployment, backfill_id: str) -> str:
    """The row as the daemon leaves it half way: every partition requested, half the symbols materialized."""
    import sqlalchemy as sa
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
    from dagster._core.execution.backfill import BulkActionStatus

    with dep.instance() as instance:
        backfill = instance.get_backfill(backfill_id)
        data = backfill.asset_backfill_data
        target = data.target_subset.partitions_subsets_by_asset_key
        symbols = instance.get_dynamic_partitions("symbols")
        half = set(symbols[: len(symbols) // 2])
        done = {k: DefaultPartitionsSubset({str(p) for p in s.get_partition_keys() if str(p).split("|")[1] in half})
                for k, s in target.items()}
        requested = {k: DefaultPartitionsSubset({str(p) for p in s.get_partition_keys()}) for k, s in target.items()}
        data = data._replace(requested_subset=AssetGraphSubset(partitions_subsets_by_asset_key=requested),
                             materialized_subset=AssetGraphSubset(partitions_subsets_by_asset_key=done),
                             requested_runs_for_target_roots=True)
        instance.update_backfill(backfill._replace(asset_backfill_data=data))
        assert instance.get_backfill(backfill_id).status == BulkActionStatus.REQUESTED
        with instance.run_storage.connect() as conn:
            size = conn.execute(sa.text("SELECT octet_length(body) FROM bulk_actions WHERE key = :k"),
                                {"k": backfill_id}).scalar()
    return f"{size / MB:.0f} MB of JSON"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=504)
    parser.add_argument("--polls", type=int, default=10)
    parser.add_argument("--code-root", type=Path, default=ROOT)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_server_processes"))
    args = parser.parse_args()

    history_start, sessions = history_for(args.sessions)
    syms = symbol_names(args.symbols)
    keys = [f"{d.isoformat()}|{s}" for s in syms for d in sessions]
    name = f"h_server_mem_proc_{'here' if args.code_root.resolve() == ROOT else args.code_root.resolve().name}"
    dep = Deployment(name, args.workdir / name, history_start, code_root=args.code_root.resolve())
    print(f"{len(syms)} symbols x {len(sessions)} sessions, code {dep.code_root}; load {load_average()}", flush=True)
    dep.create()
    sampler = None
    try:
        out = dep.run(BIN / "backfill-dagster", "watchlist", "add", *syms)
        if out.returncode != 0:
            raise SystemExit(f"watchlist add failed:\n{out.stdout}\n{out.stderr}")
        code_server = dep.start_code_server()
        dep.start_webserver()
        sampler = PhaseSampler([code_server.pid, dep.processes["webserver"].pid])
        sampler.start()
        sampler.enter("idle")
        time.sleep(3)
        sampler.enter("launch")
        began = time.monotonic()
        launched = dep.graphql(LAUNCH_BACKFILL, {"params": {
            "assetSelection": [{"path": [a]} for a in ASSETS], "partitionNames": keys,
            "fromFailure": False, "tags": [], "title": "whole market"}})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]
        print(f"launched in {time.monotonic() - began:.1f} s", flush=True)

        def polls(phase: str) -> None:
            sampler.enter(phase)
            took = []
            for _ in range(args.polls):
                began = time.monotonic()
                dep.graphql(BACKFILL_STATUS, {"id": backfill_id})
                took.append(time.monotonic() - began)
                time.sleep(2)
            print(f"{phase}: {args.polls} polls, median {sorted(took)[len(took) // 2]:.2f} s", flush=True)

        polls("polls as launched")
        sampler.enter("setting the row")
        print(f"row half done: {set_half_done(dep, backfill_id)}", flush=True)
        polls("polls half done")
        for sensor, times in (("coverage_gaps", 2), ("partition_status_cache", 1)):
            sampler.enter(f"{sensor} ticks")
            for _ in range(times):
                began = time.monotonic()
                out = dep.run(BIN / "dagster", "sensor", "preview", sensor, "-w", dep.workspace)
                print(f"{sensor} preview {time.monotonic() - began:.1f} s: "
                      f"{(out.stdout + out.stderr).strip().splitlines()[-1][:200] if (out.stdout + out.stderr).strip() else ''}",
                      flush=True)
        sampler.enter("end")
        time.sleep(2)
        print(f"\nlargest RSS per phase (load {load_average()}):")
        for phase in ("idle", "launch", "polls as launched", "polls half done", "coverage_gaps ticks",
                      "partition_status_cache ticks", "end"):
            print(f"  {phase:<30} {sampler.line(phase)}")
    finally:
        if sampler is not None:
            sampler.stop_event.set()
        dep.stop()
        dep.drop()


if __name__ == "__main__":
    main()

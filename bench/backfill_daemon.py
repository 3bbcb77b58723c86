"""The backfill daemon's iterations on a whole-market backfill: Dagster's own backfill row reads,
writes, target check and run submission against the project's (instance/backfill_rows.py,
backfill_validity.py, subset_pack.py, subset_repr.py, backfill_submit.py), in the same run.

    python bench/backfill_daemon.py [--symbols 500] [--sessions 504]

Each variant runs in a fresh child process (`--variant stock|patched`), so one's heap does not
raise the other's memory figures, on a PostgreSQL instance as deployed (the project's bulk event log
and pooled run storage, a database of its own, dropped afterwards) with the project's definitions
(4 assets, sessions x symbols) and an in-process code location; runs are queued, never executed.
Dagster's `execute_backfill_iteration` is called one iteration at a time in a thread named as
dagster-daemon names its backfill thread (patched) or another name with the project's patches
undone (stock: every read deserializes the row, update_backfill re-reads it, every write sorts
every subset, the target check builds every key, the debug f-string writes every key, the run
submission builds a MultiPartitionKey per partition and asset, twice).

States: iteration 1 requests the roots (all box runs); a steady iteration at 0%; then the
materialized subset set to 50% and to 98% (written in the iteration's thread, as the daemon
would have written it, the cursor at the newest event) and one box run's materializations
(4 assets x 23 symbols x the sessions) stored as events, so the next iteration finds them; then a
steady iteration with nothing new. Per iteration: wall, CPU (process time), RSS before, peak RSS
(VmHWM, reset before each iteration) and after, the counts, and the backfill row calls' time;
then the ratios patched/stock.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
import warnings
from datetime import date
from pathlib import Path

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dagster as dg  # noqa: E402

from tests.deploy import in_thread  # noqa: E402

BOX_SYMBOLS = 23  # a box run's symbols (backfill_runs.DEFAULT_BOX_PARTITIONS at 504 sessions)
ASSETS = [dg.AssetKey(n) for n in ("bars_m15", "bars_h1", "bars_h4", "bars_d1")]
DAEMON_THREAD = "dagster-daemon-BACKFILL"


def history_start(sessions: int) -> date:
    """The first session such that the date dimension has `sessions` keys up to today."""
    from backfill_dagster.domain.calendar import xnys

    today = date.today()
    return xnys().sessions(date(today.year - 1 - sessions // 250, 1, 1), today)[-sessions]


def symbol_names(n: int) -> list[str]:
    import itertools
    import string

    return ["".join(c) for c in itertools.islice(itertools.product(string.ascii_uppercase, repeat=3), n)]


def _code_location() -> dg.Definitions:
    """The project's definitions as deployed, with the history the benchmark asks for."""
    from backfill_dagster.definitions import build_definitions
    from backfill_dagster.settings import Settings

    data = Path(os.environ["BENCH_BACKFILL_DATA"])
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data / 'store.sqlite'}",
                        history_start=history_start(int(os.environ["BENCH_BACKFILL_SESSIONS"])))
    return build_definitions(settings)


bench_defs = dg.definitions(_code_location)  # what the in-process daemon loads


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    values = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            values[key] = int(value.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Counting:
    """Counts and times the instance's backfill row reads and writes."""

    def __init__(self, instance):
        self.counts: dict[str, list] = {}
        for name in ("get_backfill", "get_backfills", "update_backfill"):
            setattr(instance, name, self._wrap(name, getattr(instance, name)))

    def _wrap(self, name, original):
        def counted(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                entry = self.counts.setdefault(name, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - start
        return counted

    def take(self) -> str:
        out, self.counts = self.counts, {}
        bodies, BODIES[0] = BODIES[0], 0
        return ", ".join(f"{k} x{v[0]} {v[1]:.2f} s" for k, v in sorted(out.items())) + f"; {bodies} bodies deserialized"


BODIES = [0]  # backfill row bodies deserialized since the last take()


def count_bodies() -> None:
    """Count the row bodies the run storages deserialize (Dagster's and the project's reads)."""
    from dagster._core.storage.runs import sql_run_storage

    from backfill_dagster.instance import run_storage

    from dagster._core.execution.backfill import PartitionBackfill

    one, many = sql_run_storage.deserialize_value, sql_run_storage.deserialize_values

    def deserialize_value(value, *args, **kwargs):
        BODIES[0] += PartitionBackfill in args
        return one(value, *args, **kwargs)

    def deserialize_values(values, *args, **kwargs):
        out = many(values, *args, **kwargs)
        BODIES[0] += len(out) if PartitionBackfill in args else 0
        return out

    sql_run_storage.deserialize_value = run_storage.deserialize_value = deserialize_value
    sql_run_storage.deserialize_values = deserialize_values


def use_dagster_s_own(storage) -> None:
    """Dagster's backfill row I/O, target check, repr and run submission in this process (the stock variant)."""
    from dagster_postgres.run_storage import PostgresRunStorage

    from backfill_dagster.instance import backfill_submit, backfill_validity, subset_pack, subset_repr

    storage.update_backfill = types.MethodType(PostgresRunStorage.update_backfill, storage)
    backfill_validity.uninstall()
    subset_pack.uninstall()
    subset_repr.uninstall()
    backfill_submit.uninstall()


def run_variant(variant: str, n_symbols: int, n_sessions: int) -> list[dict]:
    import yaml
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
    from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.storage.dagster_run import RunsFilter
    from dagster._core.storage.tags import BACKFILL_ID_TAG
    from dagster._core.test_utils import create_test_daemon_workspace_context
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
    from dagster._daemon.backfill import execute_backfill_iteration

    from backfill_dagster.orchestration.backfills import launch_backfill
    from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME
    from pg_instance import fresh_pg_database
    from tests.deploy import storage_yaml

    thread = DAEMON_THREAD if variant == "patched" else "stock-backfill"
    tmp = Path(tempfile.mkdtemp(prefix="bench_backfill_daemon_"))
    atexit.register(shutil.rmtree, tmp, True)
    os.environ.update(BENCH_BACKFILL_DATA=str(tmp), BENCH_BACKFILL_SESSIONS=str(n_sessions))
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{fresh_pg_database('bench_bfd')}"
    overrides = yaml.safe_load(storage_yaml(url, "bulk", tmp))
    overrides["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(python_file=str(Path(__file__).resolve()), attribute="bench_defs"),
        location_name="bench")
    logger = logging.getLogger("bench_backfill_daemon")
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    results: list[dict] = []
    with dg.instance_for_test(overrides=overrides) as instance, \
            create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as context:
        if variant == "stock":
            use_dagster_s_own(instance.run_storage)
        syms = symbol_names(n_symbols)
        instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, syms)
        graph = _code_location().resolve_asset_graph()
        dates = graph.get(ASSETS[0]).partitions_def.get_partitions_def_for_dimension("date").get_partition_keys()
        keys = [f"{d}|{s}" for d in dates for s in syms]
        counter = Counting(instance)
        count_bodies()
        backfill_id = launch_backfill(instance, graph, keys, ASSETS, title="whole market")
        counter.take()
        print(f"{variant}: {len(syms)} symbols x {len(dates)} sessions = {len(keys):,} partitions per asset",
              flush=True)

        def iteration(label: str) -> None:
            gc.collect()
            rss0 = rss_mb()[0]
            reset_peak()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            errors = in_thread(thread, lambda: [e for e in execute_backfill_iteration(context, logger) if e])
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            rss1, peak = rss_mb()
            calls = counter.take()
            backfill = in_thread(thread, lambda: instance.get_backfill(backfill_id))
            counter.take()
            data = backfill.asset_backfill_data
            row = dict(label=label, wall=wall, cpu=cpu, rss_before=rss0, peak=peak, rss_after=rss1,
                       materialized=data.materialized_subset.num_partitions_and_non_partitioned_assets,
                       requested=data.requested_subset.num_partitions_and_non_partitioned_assets,
                       status=backfill.status.value, calls=calls)
            del backfill, data
            print(f"  {variant} | {label} | {wall:.1f} s | {cpu:.1f} s | {peak:.0f} MB | {calls}", flush=True)
            for error in errors:
                print("ERROR", error.to_string()[:3000], flush=True)
            results.append(row)

        storage = instance.event_log_storage
        iteration("1: requests the roots")
        runs = instance.get_runs(filters=RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
        iteration("2: 0%, nothing new")
        run = runs[0]

        def set_materialized(n_done: int) -> None:
            def write():
                backfill = instance.get_backfill(backfill_id)
                done = {a: DefaultPartitionsSubset({f"{d}|{s}" for d in dates for s in syms[:n_done]}) for a in ASSETS}
                data = backfill.asset_backfill_data._replace(
                    materialized_subset=AssetGraphSubset(partitions_subsets_by_asset_key=done),
                    latest_storage_id=storage.get_maximum_record_id())
                instance.update_backfill(backfill._replace(asset_backfill_data=data))
            in_thread(thread, write)
            counter.take()

        def store_box(first: int, count: int) -> None:
            for asset in ASSETS:
                events = [EventLogEntry(
                    error_info=None, level=logging.DEBUG, user_message="", run_id=run.run_id, timestamp=time.time(),
                    step_key=asset.path[-1], job_name=run.job_name,
                    dagster_event=DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION.value, run.job_name,
                                               event_specific_data=StepMaterializationData(
                                                   dg.AssetMaterialization(asset, partition=f"{d}|{s}"))))
                    for d in dates for s in syms[first:first + count]]
                for i in range(0, len(events), 2000):
                    storage.store_event_batch(events[i:i + 2000])
            if hasattr(storage, "_written_behind"):
                storage._written_behind.finish()

        box = min(BOX_SYMBOLS, max(1, n_symbols // 10))
        for pct, n_done in (("50%", n_symbols // 2), ("98%", n_symbols - box)):
            set_materialized(n_done)
            store_box(n_done, min(box, n_symbols - n_done))
            iteration(f"{pct} + one box's new materializations")
            iteration(f"{pct} + box, nothing new")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=504)
    parser.add_argument("--variant", choices=("stock", "patched"), help="run one variant here (the children)")
    args = parser.parse_args()
    if args.variant:
        results = run_variant(args.variant, args.symbols, args.sessions)
        print("RESULT " + json.dumps(results), flush=True)
        return
    runs = {}
    for variant in ("stock", "patched"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--symbols", str(args.symbols),
                              "--sessions", str(args.sessions)], capture_output=True, text=True, cwd=ROOT)
        sys.stdout.write("".join(line + "\n" for line in out.stdout.splitlines() if not line.startswith("RESULT ")))
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-5000:])
            raise SystemExit(f"the {variant} variant failed")
        runs[variant] = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    stock, patched = runs["stock"], runs["patched"]
    print(f"\n{args.symbols} symbols x {args.sessions} sessions x {len(ASSETS)} assets")
    print("| iteration | CPU stock -> patched (ratio) | wall stock -> patched (ratio) | peak RSS stock -> patched (ratio) "
          "| RSS after stock -> patched | materialized, requested (both) | backfill row calls: stock; patched |")
    print("|---|---|---|---|---|---|---|")
    def ratio(a: float, b: float) -> str:
        return f"{b / a:.2f}x" if a else "-"

    for s, p in zip(stock, patched):
        same = (s["materialized"], s["requested"], s["status"]) == (p["materialized"], p["requested"], p["status"])
        print(f"| {s['label']} | {s['cpu']:.2f} -> {p['cpu']:.2f} s ({ratio(s['cpu'], p['cpu'])}) "
              f"| {s['wall']:.2f} -> {p['wall']:.2f} s ({ratio(s['wall'], p['wall'])}) "
              f"| {s['peak']:,.0f} -> {p['peak']:,.0f} MB ({ratio(s['peak'], p['peak'])}) "
              f"| {s['rss_after']:,.0f} -> {p['rss_after']:,.0f} MB "
              f"| {p['materialized']:,}, {p['requested']:,}{'' if same else ' (stock: ' + str(s['materialized']) + ', ' + str(s['requested']) + ' DIFFERENT)'} "
              f"| {s['calls']}; {p['calls']} |")


if __name__ == "__main__":
    main()

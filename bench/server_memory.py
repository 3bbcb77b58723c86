"""Where the webserver's and the code server's memory goes in a whole-market backfill, each part
measured in a fresh process at full size.

    python bench/server_memory.py [--symbols 500] [--sessions 504] [--parts launch,iterate,poll,gap,status]
                                  [--tracemalloc] [--keep NAME]

One PostgreSQL Dagster instance as deployed (the project's event log and pooled run storage, a
QueuedRunCoordinator: runs are queued, never executed) and one PostgreSQL store, in databases of
their own (dropped afterwards unless --keep), with `--symbols` symbols on the watchlist and as
symbol partitions, the project's definitions with `--sessions` sessions, loaded in-process. Each
part runs in a child process of its own, so one part's heap does not raise the next one's figures;
per measured call: wall, RSS before, peak (VmHWM, reset before the call), RSS after, and with
--tracemalloc the call's traced peak and the largest allocation sites alive at the end.

- launch (the webserver): `launchPartitionBackfill` through Dagster's GraphQL schema, as the UI's
  "Materialize partitions" dialog and bench/scale_backfill.py send it (the partition names, all
  four assets); stock: Dagster's target check (instance/backfill_validity.py uninstalled), then
  patched, whose backfill is kept (the stock one is cancelled).
- iterate (setup, not measured): the backfill daemon's first iteration (the box runs requested and
  queued), then the materialized subset set to half the symbols, as the daemon writes it.
- poll (the webserver): bench/scale_backfill.py's status query (tests/deploy.py BACKFILL_STATUS), 3
  times; stock: every subset its own key set (instance/subset_unpack.py uninstalled), then patched.
- gap (the code server): one `coverage_gaps` tick with that backfill unfinished and a ledger with
  half the symbols complete, with Dagster's get_backfills (stock: every unfinished backfill's whole
  row deserialized) and as the sensor reads them now (patched: instance/backfill_selection.py).
- status (the code server): one `partition_status_cache` tick for the four assets after one box
  run's materializations, the cache holding the half materialized before.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dagster as dg  # noqa: E402

ASSETS = ["bars_m15", "bars_h1", "bars_h4", "bars_d1"]
PARTS = ("launch", "iterate", "poll", "gap", "status")
DAEMON_THREAD = "dagster-daemon-BACKFILL"
BOX_SYMBOLS = 23


def _code_location() -> dg.Definitions:
    from backfill_dagster.definitions import build_definitions
    from backfill_dagster.settings import Settings
    from backfill_daemon import history_start

    return build_definitions(Settings(data_dir=Path(os.environ["BENCH_SERVER_DATA"]),
                                      database_url=os.environ["BENCH_SERVER_STORE"],
                                      history_start=history_start(int(os.environ["BENCH_SERVER_SESSIONS"]))),
                             env_has_database_url=True)


bench_defs = dg.definitions(_code_location)


def rss_mb() -> tuple[float, float]:
    values = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":")
            values[key] = int(value.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def measure(label: str, fn, traced: bool):
    import tracemalloc

    gc.collect()
    rss0 = rss_mb()[0]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    if traced:
        tracemalloc.start(12)
    profiler = None
    if os.environ.get("BENCH_SERVER_PROFILE"):
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    began = time.perf_counter()
    value = fn()
    wall = time.perf_counter() - began
    if profiler is not None:
        import io
        import pstats
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
        print(out.getvalue()[-6000:], flush=True)
    rss1, peak = rss_mb()
    line = f"{label}: {wall:.1f} s, RSS {rss0:.0f} -> peak {peak:.0f} (+{peak - rss0:.0f}) -> after {rss1:.0f} MB"
    if traced:
        _, traced_peak = tracemalloc.get_traced_memory()
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        line += f"; traced peak {traced_peak / 1e6:.0f} MB"
        stats = snapshot.statistics("traceback")[:6]
        for stat in stats:
            frames = [f"{Path(fr.filename).name}:{fr.lineno}" for fr in stat.traceback if "dagster" in fr.filename
                      or "backfill" in fr.filename][-5:]
            line += f"\n    alive at end {stat.size / 1e6:6.1f} MB {stat.count:>8} blocks  {' < '.join(reversed(frames))}"
    print(line, flush=True)
    return value


def child(part: str, args) -> None:
    """One part, in this (fresh) process."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    from tests.deploy import BACKFILL_STATUS, LAUNCH_BACKFILL, in_thread

    home = Path(os.environ["BENCH_SERVER_HOME"])
    os.environ["BACKFILL_DATABASE_URL"] = os.environ["BENCH_SERVER_STORE"]  # the store resource reads it
    instance = dg.DagsterInstance.from_config(str(home))
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(python_file=str(Path(__file__).resolve()), attribute="bench_defs"),
        location_name="backfill_dagster")
    target = InProcessWorkspaceLoadTarget(origin)
    state_file = home / "bench_state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    traced = args.tracemalloc

    variant = os.environ.get("BENCH_SERVER_VARIANT") or "patched"
    if part == "launch" and variant == "stock":
        from backfill_dagster.instance import backfill_validity
        backfill_validity.uninstall()
    if part == "poll" and variant == "stock":
        from backfill_dagster.instance import subset_unpack
        subset_unpack.uninstall()
    if part in ("launch", "poll"):
        from dagster._core.execution.backfill import BulkActionStatus
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster_graphql.test.utils import execute_dagster_graphql

        with WorkspaceProcessContext(instance, target) as process_context:
            print(f"  after imports and the code location: RSS {rss_mb()[0]:.0f} MB", flush=True)
            if part == "launch":
                graph = process_context.create_request_context().asset_graph
                dates = graph.get(dg.AssetKey(ASSETS[0])).partitions_def.get_partitions_def_for_dimension(
                    "date").get_partition_keys()
                symbols = instance.get_dynamic_partitions("symbols")
                keys = [f"{d}|{s}" for s in symbols for d in dates]  # as bench/scale_backfill.py lists them
                params = {"assetSelection": [{"path": [a]} for a in ASSETS], "partitionNames": keys,
                          "fromFailure": False, "tags": [], "title": "whole market"}
                result = measure(f"launchPartitionBackfill ({variant}), {len(keys):,} names x {len(ASSETS)} assets",
                                 lambda: execute_dagster_graphql(process_context.create_request_context(),
                                                                 LAUNCH_BACKFILL, {"params": params}), traced)
                launched = result.data["launchPartitionBackfill"]
                assert launched["__typename"] == "LaunchBackfillSuccess", launched
                if variant == "stock":  # measured only: the patched launch's backfill is the one kept
                    backfill = instance.get_backfill(launched["backfillId"])
                    instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELED))
                else:
                    state_file.write_text(json.dumps({"backfill_id": launched["backfillId"]}))
            else:
                for i in range(3):
                    result = measure(f"status poll {i + 1} ({variant})", lambda: execute_dagster_graphql(
                        process_context.create_request_context(), BACKFILL_STATUS,
                        {"id": state["backfill_id"]}), traced)
                    data = result.data["partitionBackfillOrError"]
                    counts = [(s["assetKey"]["path"][0], s["numPartitionsTargeted"], s["numPartitionsMaterialized"])
                              for s in data["assetBackfillData"]["assetBackfillStatuses"]]
                    print(f"    {data['status']} {counts}", flush=True)
        return

    if part == "iterate":
        import logging

        import sqlalchemy as sa
        from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
        from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
        from dagster._core.test_utils import create_test_daemon_workspace_context
        from dagster._daemon.backfill import execute_backfill_iteration

        logger = logging.getLogger("bench_server_memory")
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
        backfill_id = state["backfill_id"]
        with create_test_daemon_workspace_context(target, instance) as context:
            began = time.perf_counter()
            errors = in_thread(DAEMON_THREAD, lambda: [e for e in execute_backfill_iteration(context, logger) if e])
            assert not errors, errors
            print(f"  daemon iteration 1: {time.perf_counter() - began:.0f} s, "
                  f"{len(instance.get_run_ids())} runs queued", flush=True)
            symbols = instance.get_dynamic_partitions("symbols")
            graph = _code_location().resolve_asset_graph()
            dates = graph.get(dg.AssetKey(ASSETS[0])).partitions_def.get_partitions_def_for_dimension(
                "date").get_partition_keys()
            half = symbols[: len(symbols) // 2]

            def write():
                backfill = instance.get_backfill(backfill_id)
                done = {dg.AssetKey(a): DefaultPartitionsSubset({f"{d}|{s}" for d in dates for s in half})
                        for a in ASSETS}
                data = backfill.asset_backfill_data._replace(
                    materialized_subset=AssetGraphSubset(partitions_subsets_by_asset_key=done),
                    latest_storage_id=instance.event_log_storage.get_maximum_record_id())
                instance.update_backfill(backfill._replace(asset_backfill_data=data))
            in_thread(DAEMON_THREAD, write)
            with instance.run_storage.connect() as conn:
                size = conn.execute(sa.text(
                    "SELECT octet_length(body), pg_column_size(body) FROM bulk_actions WHERE key = :k"),
                    {"k": backfill_id}).fetchone()
            print(f"  materialized set to {len(half)} symbols x {len(dates)} sessions; the row's body "
                  f"{size[0] / 1e6:.0f} MB of JSON, {size[1] / 1e6:.0f} MB stored", flush=True)
        return

    if part in ("gap", "status"):
        from backfill_dagster.orchestration.resources import StoreResource

        defs = _code_location()
        repo = defs.get_repository_def()
        resources = {"store": StoreResource(database_url=os.environ["BENCH_SERVER_STORE"])}
        print(f"  after imports and the definitions: RSS {rss_mb()[0]:.0f} MB", flush=True)
        if part == "gap":
            sensor = repo.get_sensor_def("coverage_gaps")
            if variant == "stock":
                from backfill_dagster.instance.backfill_selection import backfill_selections_read_whole
                from backfill_dagster.orchestration import gap_sensor
                gap_sensor.unfinished_backfills = lambda instance: backfill_selections_read_whole(
                    instance, gap_sensor.UNFINISHED_BACKFILLS, gap_sensor.UNFINISHED_BACKFILL_LIMIT)
            for i in range(2):
                result = measure(f"coverage_gaps tick {i + 1} ({variant})", lambda: sensor.evaluate_tick(
                    dg.build_sensor_context(instance=instance, resources=resources, repository_def=repo)), traced)
                print(f"    {len(result.run_requests or [])} run requests; "
                      f"{(result.skip_message or '')[:300]}", flush=True)
        else:
            store_box(instance, state)
            sensor = repo.get_sensor_def("partition_status_cache")
            cursor = None
            for i in range(2):
                result = measure(f"partition_status_cache tick {i + 1}", lambda: sensor.evaluate_tick(
                    dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=repo)), traced)
                cursor = result.cursor
                print(f"    {(result.skip_message or '')[:300]}", flush=True)
        return
    raise SystemExit(f"unknown part {part}")


def store_box(instance, state) -> None:
    """The status cache of the four assets as the sensor left it after half the symbols were
    materialized, then one box run's materializations (BOX_SYMBOLS symbols x every session) stored
    as events after it (once; the state file remembers)."""
    import logging

    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.definitions.partitions.subset.default import DefaultPartitionsSubset
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.storage.partition_status_cache import AssetStatusCacheValue

    if state.get("box_stored"):
        return
    graph = _code_location().resolve_asset_graph()
    partitions_def = graph.get(dg.AssetKey(ASSETS[0])).partitions_def
    symbols = instance.get_dynamic_partitions("symbols")
    dates = partitions_def.get_partitions_def_for_dimension("date").get_partition_keys()
    half = symbols[: len(symbols) // 2]
    run = instance.get_runs(limit=1)[0]
    storage = instance.event_log_storage
    began = time.perf_counter()
    for name in ASSETS:
        asset = dg.AssetKey(name)
        for i in range(0, len(half), 50):  # the half as events, so the asset has a record and a cursor
            events = [EventLogEntry(
                error_info=None, level=logging.DEBUG, user_message="", run_id=run.run_id, timestamp=time.time(),
                step_key=name, job_name=run.job_name,
                dagster_event=DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION.value, run.job_name,
                                           event_specific_data=StepMaterializationData(
                                               dg.AssetMaterialization(asset, partition=f"{d}|{s}"))))
                for d in dates[-1:] for s in half[i:i + 50]]
            storage.store_event_batch(events)
        if hasattr(storage, "_written_behind"):
            storage._written_behind.finish()
        latest = storage.get_maximum_record_id()
        with partition_loading_context(dynamic_partitions_store=instance):
            subset = DefaultPartitionsSubset({f"{d}|{s}" for d in dates for s in half})
            instance.update_asset_cached_status_data(asset, AssetStatusCacheValue(
                latest_storage_id=latest, partitions_def_id=partitions_def.get_serializable_unique_identifier(),
                serialized_materialized_partition_subset=subset.serialize(),
                serialized_failed_partition_subset=partitions_def.empty_subset().serialize(),
                serialized_in_progress_partition_subset=partitions_def.empty_subset().serialize()))
    box = symbols[len(half): len(half) + BOX_SYMBOLS]
    for name in ASSETS:
        asset = dg.AssetKey(name)
        events = [EventLogEntry(
            error_info=None, level=logging.DEBUG, user_message="", run_id=run.run_id, timestamp=time.time(),
            step_key=name, job_name=run.job_name,
            dagster_event=DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION.value, run.job_name,
                                       event_specific_data=StepMaterializationData(
                                           dg.AssetMaterialization(asset, partition=f"{d}|{s}"))))
            for d in dates for s in box]
        for i in range(0, len(events), 2000):
            storage.store_event_batch(events[i:i + 2000])
    if hasattr(storage, "_written_behind"):
        storage._written_behind.finish()
    print(f"  status cache at {len(half)} symbols, then {len(box)} symbols x {len(dates)} sessions x "
          f"{len(ASSETS)} assets materialized ({time.perf_counter() - began:.0f} s)", flush=True)
    home = Path(os.environ["BENCH_SERVER_HOME"])
    (home / "bench_state.json").write_text(json.dumps({**state, "box_stored": True}))


def prepare(args, name: str, workdir: Path) -> dict[str, str]:
    """Databases, dagster.yaml, the store's watchlist and ledger, the symbol partitions."""
    import psycopg

    from backfill_daemon import history_start
    from backfill_dagster.domain.calendar import xnys
    from backfill_dagster.store import Watchlist, create_engine
    from scale_deploy import PG, PG_ADMIN, symbols as symbol_names
    from tests.deploy import create_database, storage_yaml

    create_database(PG_ADMIN, f"{name}_dagster")
    create_database(PG_ADMIN, f"{name}_store")
    home = workdir / "home"
    home.mkdir(parents=True)
    (workdir / "data").mkdir()
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}_dagster"
    (home / "dagster.yaml").write_text(
        storage_yaml(url, "bulk", home)
        + "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: QueuedRunCoordinator\n"
        + "telemetry:\n  enabled: false\n")
    store = f"{PG}/{name}_store"
    env = {"BENCH_SERVER_HOME": str(home), "BENCH_SERVER_DATA": str(workdir / "data"),
           "BENCH_SERVER_STORE": store, "BENCH_SERVER_SESSIONS": str(args.sessions)}
    syms = symbol_names(args.symbols)
    engine = create_engine(store)
    Watchlist(engine).add(syms)
    engine.dispose()
    start = history_start(args.sessions)
    sessions = [d for d in xnys().sessions(start, time.strftime("%Y-%m-%d")) if d.isoformat() < time.strftime("%Y-%m-%d")]
    half = syms[: len(syms) // 2]
    with psycopg.connect(store, autocommit=True) as conn:  # half the symbols complete, every timeframe
        conn.execute("""
            INSERT INTO bar_coverage (symbol, timeframe, session, status, bars, expected, provider, fetched_at,
                                      session_closed, attempts, updated_at)
            SELECT s.symbol, t.timeframe, d.session, 'complete', t.expected, t.expected, 'bench', now(), true, 1, now()
            FROM unnest(%(symbols)s::text[]) AS s(symbol) CROSS JOIN unnest(%(sessions)s::date[]) AS d(session)
            CROSS JOIN (VALUES ('m15', 26), ('h1', 7), ('h4', 2), ('d1', 1)) AS t(timeframe, expected)""",
                     {"symbols": half, "sessions": sessions})
        conn.execute("VACUUM ANALYZE bar_coverage")
    os.environ.update(env)
    instance = dg.DagsterInstance.from_config(str(home))
    instance.add_dynamic_partitions("symbols", syms)
    instance.dispose()
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=504)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--tracemalloc", action="store_true", help="also trace the Python allocations (slower)")
    parser.add_argument("--keep", metavar="NAME", help="keep (or reuse) databases NAME_dagster, NAME_store")
    parser.add_argument("--variants", default="stock,patched",
                        help="launch and gap: Dagster's own (stock) and the project's (patched); the last launch is kept")
    parser.add_argument("--profile", action="store_true", help="cProfile each measured call (slower)")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # a child
    args = parser.parse_args()
    if args.part:
        return child(args.part, args)

    from scale_deploy import PG_ADMIN, load_average
    from tests.deploy import database_exists, drop_database

    name = args.keep or f"h_server_mem_{os.getpid()}"
    workdir = Path(tempfile.gettempdir()) / f"bench_server_memory_{name}"
    if args.keep and database_exists(PG_ADMIN, f"{name}_dagster") and workdir.exists():
        env = json.loads((workdir / "env.json").read_text())
        print(f"reusing {name}", flush=True)
    else:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
        began = time.perf_counter()
        env = prepare(args, name, workdir)
        (workdir / "env.json").write_text(json.dumps(env))
        print(f"prepared {name}: {args.symbols} symbols, {args.sessions} sessions, ledger half complete "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
    try:
        for part in args.parts.split(","):
            variants = args.variants.split(",") if part in ("gap", "launch", "poll") else [""]
            for variant in variants:
                print(f"== {part}{f' ({variant})' if variant else ''}; load {load_average()}", flush=True)
                command = [sys.executable, __file__, "--part", part, "--symbols", str(args.symbols),
                           "--sessions", str(args.sessions)] + (["--tracemalloc"] if args.tracemalloc else [])
                out = subprocess.run(command, env={**os.environ, **env, "BENCH_SERVER_VARIANT": variant,
                                                   **({"BENCH_SERVER_PROFILE": "1"} if args.profile else {})}, cwd=ROOT)
                if out.returncode != 0:
                    raise SystemExit(f"part {part} failed")
    finally:
        if not args.keep:
            drop_database(PG_ADMIN, f"{name}_dagster")
            drop_database(PG_ADMIN, f"{name}_store")


if __name__ == "__main__":
    main()

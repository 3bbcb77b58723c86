"""What keeping event ids in commit order costs: concurrent run workers writing the bulk event log.

    python bench/event_log_writers.py [--workers 1,4,8] [--runs 3] [--partitions 2520] [--work-ms 0]
                                      [--repeat 3]

Every transaction of the project's event log that stores events first takes one advisory lock,
held to its commit (instance/event_log.py, COMMIT_ORDER_LOCK), so that event ids become visible in
the order they were taken. Here `--workers` processes, each a run worker with its own instance on
one fresh PostgreSQL database, write `--runs` range runs one after the other, each run what a range
run of `--partitions` partitions of one asset hands the event log: its start (stored at once), one
subset planned event (stored as the per-partition rows), the materializations in batches of 1,000,
a few log lines, and its success (stored after everything before it). `--work-ms` is the step's own
work between two batches of 1,000 (0: the event log only, the worst case for the lock). The
workers start together; the wall is from the first start to the last run's end.

Each worker count is measured with the lock and without it (the storage's `commit_in_id_order`),
alternating, best of `--repeat`; printed: wall, events/s and the ratio with / without, and how
many transactions took the lock and how long its statement took them (the wait for other workers'
transactions and a round trip), with the lock.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dagster as dg  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from dagster._core.events import (  # noqa: E402
    AssetMaterializationPlannedData,
    DagsterEvent,
    DagsterEventType,
    StepMaterializationData,
)
from dagster._core.events.log import EventLogEntry  # noqa: E402

from pg_instance import pg_instance  # noqa: E402

ASSET = dg.AssetKey("bars_m15")
JOB = "all_bars"
BATCH = 1000
LOG_LINES_PER_RUN = 10


def _entry(run_id: str, dagster_event: DagsterEvent | None, message: str = "") -> EventLogEntry:
    return EventLogEntry(error_info=None, level="DEBUG", user_message=message, run_id=run_id,
                         timestamp=time.time(), dagster_event=dagster_event)


def run_events(run_id: str, keys: list[str], partitions_def) -> tuple[list, EventLogEntry]:
    """A range run's writes, in order (each a batch or one event), and its closing status event."""
    planned = DagsterEvent(
        DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value, JOB,
        event_specific_data=AssetMaterializationPlannedData(
            ASSET, partitions_subset=partitions_def.subset_with_partition_keys(keys)
        ),
    )
    writes: list = [[_entry(run_id, planned)]]
    for start in range(0, len(keys), BATCH):
        writes.append([
            _entry(run_id, DagsterEvent(
                DagsterEventType.ASSET_MATERIALIZATION.value, JOB, step_key="bars_m15",
                event_specific_data=StepMaterializationData(dg.AssetMaterialization(ASSET, partition=key)),
            ))
            for key in keys[start:start + BATCH]
        ])
    writes += [_entry(run_id, None, f"log line {n}") for n in range(LOG_LINES_PER_RUN)]
    return writes, _entry(run_id, DagsterEvent(DagsterEventType.RUN_SUCCESS.value, JOB))


def worker(instance_ref, ordered: bool, runs: int, partitions: int, work_ms: float, go, results) -> None:
    from backfill_dagster.instance.event_log import BulkPostgresEventLogStorage

    BulkPostgresEventLogStorage.commit_in_id_order = ordered
    instance = dg.DagsterInstance.from_ref(instance_ref)
    storage = instance.event_log_storage
    keys = [f"k{n:06d}" for n in range(partitions)]
    partitions_def = dg.StaticPartitionsDefinition(keys)
    prepared = []
    for _ in range(runs):
        run_id = str(uuid.uuid4())
        prepared.append((_entry(run_id, DagsterEvent(DagsterEventType.RUN_START.value, JOB)),
                         *run_events(run_id, keys, partitions_def)))
    warm_up = str(uuid.uuid4())  # connections and schema facts, as a worker has them after its first events
    storage.store_event(_entry(warm_up, DagsterEvent(DagsterEventType.RUN_START.value, JOB)))
    storage.store_event_batch(run_events(warm_up, keys[:2], partitions_def)[0][1])
    storage.store_event(_entry(warm_up, DagsterEvent(DagsterEventType.RUN_SUCCESS.value, JOB)))
    waited = [0.0, 0]  # seconds in the lock statement, transactions that took it

    @sa.event.listens_for(storage._engine, "before_cursor_execute")
    def statement_began(conn, cursor, statement, *_):
        conn.info["began"] = time.perf_counter()

    @sa.event.listens_for(storage._engine, "after_cursor_execute")
    def statement_ended(conn, cursor, statement, *_):
        if "pg_advisory_xact_lock" in statement:
            waited[0] += time.perf_counter() - conn.info["began"]
            waited[1] += 1

    go.wait()
    waited[:] = [0.0, 0]
    began = time.perf_counter()
    for start, writes, success in prepared:
        storage.store_event(start)
        for write in writes:
            if isinstance(write, list):
                if work_ms and len(write) > 1:
                    time.sleep(work_ms / 1000)
                storage.store_event_batch(write)
            else:
                storage.store_event(write)
        storage.store_event(success)
    results.put((began, time.perf_counter(), *waited))
    instance.dispose()


def measure(instance_ref, ordered: bool, workers: int, args) -> float:
    context = multiprocessing.get_context("spawn")
    go, results = context.Event(), context.Queue()
    procs = [
        context.Process(target=worker, args=(instance_ref, ordered, args.runs, args.partitions, args.work_ms, go, results))
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    time.sleep(5)  # every worker imported, prepared and warmed up (a spawned one takes ~2-3 s)
    go.set()
    spans = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0, proc.exitcode
    wall = max(span[1] for span in spans) - min(span[0] for span in spans)
    return wall, sum(span[2] for span in spans), sum(span[3] for span in spans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,4,8")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=2520)
    parser.add_argument("--work-ms", type=float, default=0.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        instance = pg_instance(Path(home) / "dagster_home")
        ref = instance.get_ref()
        per_run = 1 + args.partitions * 2 + LOG_LINES_PER_RUN + 1  # start, planned rows, materializations, logs, end
        print(f"{args.runs} run(s) per worker, {args.partitions} partitions a run ({per_run} events), "
              f"work between batches {args.work_ms:g} ms, best of {args.repeat}")
        print(f"{'workers':>7} | {'in id order':>22} | {'unordered':>22} | ratio | lock statement (best wall's)")
        for workers in [int(w) for w in args.workers.split(",")]:
            best = {True: (float("inf"), 0.0, 0), False: (float("inf"), 0.0, 0)}
            for _ in range(args.repeat):
                for ordered in (True, False):
                    best[ordered] = min(best[ordered], measure(ref, ordered, workers, args))
            events = workers * args.runs * per_run

            def shown(wall: float) -> str:
                return f"{wall:6.2f} s {events / wall:9,.0f} ev/s"

            (ordered_wall, lock_s, taken), (unordered_wall, _, _) = best[True], best[False]
            print(f"{workers:>7} | {shown(ordered_wall):>22} | {shown(unordered_wall):>22} | "
                  f"{ordered_wall / unordered_wall:.2f}x | {taken} transactions, {lock_s * 1000 / max(taken, 1):.1f} ms each, "
                  f"{lock_s / workers / ordered_wall:.0%} of a worker's wall")
        instance.dispose()


if __name__ == "__main__":
    main()

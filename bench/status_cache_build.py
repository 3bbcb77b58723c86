"""What building an asset's partition status cache from nothing costs at whole-market scale (the
first asset page, or the `partition_status_cache` sensor's first tick, after a history written with
no daemon running): Dagster's build with its own query for the partitions planned but not
materialized, against the same build with the bulk event log's one query, same deployment, same run.

    python bench/scale_ui.py --keep ...        # first: the populated deployment (252,000 per asset)
    python bench/status_cache_build.py [--symbols 500] [--sessions 504] [--rounds 3] [--assets bars_m15]

Each round builds each asset's value from nothing both ways (Dagster's `_build_status_cache` with
no stored row; nothing is written), alternating which goes first. Both must give the same subsets.
Prints the build's median seconds each way, the query's own share, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_deploy import alternating_rounds, load_average, populated_bulk_deployment, print_sides  # noqa: E402

warnings.filterwarnings("ignore", message=".*is currently in (beta|preview).*")
warnings.filterwarnings("ignore", category=DeprecationWarning)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=504)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--assets", default="bars_m15", help="comma list of assets the deployment materialized")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_scale_ui"))
    args = parser.parse_args()

    import dagster as dg
    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.storage import partition_status_cache
    from dagster_postgres.event_log import PostgresEventLogStorage

    from backfill_dagster.instance.event_log import BulkPostgresEventLogStorage

    instance, _, defs = populated_bulk_deployment(args.symbols, args.sessions, args.workdir)
    wanted = [(dg.AssetKey(a), defs.resolve_assets_def(a).partitions_def) for a in args.assets.split(",")]
    attempts = "get_latest_asset_partition_materialization_attempts_without_materializations"
    ours = getattr(BulkPostgresEventLogStorage, attempts)
    dagsters = getattr(PostgresEventLogStorage, attempts)
    query_s: dict[str, list[float]] = {"Dagster's query": [], "one query": []}

    def build(label, method):
        def timed(self, *a, **k):
            began = time.perf_counter()
            try:
                return method(self, *a, **k)
            finally:
                query_s[label].append(time.perf_counter() - began)

        setattr(BulkPostgresEventLogStorage, attempts, timed)
        try:
            values = []
            for key, pdef in wanted:
                record = next(iter(instance.get_asset_records([key])))
                with partition_loading_context(None, instance):
                    values.append(partition_status_cache._build_status_cache(instance, key, pdef, None, record))
            return values
        finally:
            setattr(BulkPostgresEventLogStorage, attempts, ours)

    def subsets(values):
        return [(v.latest_storage_id, v.serialized_materialized_partition_subset,
                 v.serialized_failed_partition_subset, v.serialized_in_progress_partition_subset) for v in values]

    sides = {"Dagster's query": lambda: build("Dagster's query", dagsters), "one query": lambda: build("one query", ours)}
    seconds, _ = alternating_rounds(sides, args.rounds, subsets)
    print(f"status cache built from nothing for {args.assets} ({args.symbols} x {args.sessions} partitions each), "
          f"{args.rounds} rounds; load {load_average()}")
    print_sides(seconds, {label: f"; the query itself median {statistics.median(q):6.2f} s" for label, q in query_s.items()})

if __name__ == "__main__":
    main()

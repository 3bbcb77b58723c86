"""What an asset page pays for the partition status of the bar assets, at whole-market scale:
Dagster's update of each asset's status cache row against the stored row read as it is
(instance/cached_status.py), on the same deployment, in the same run.

    python bench/scale_ui.py --keep ...        # first: the populated deployment (252,000 per asset)
    python bench/status_cache_read.py [--symbols 500] [--sessions 504] [--rounds 5]

Each round reads all four assets' values once each way, every read in a fresh loading context
(as a GraphQL request has), in alternating order so that neither side always runs on a warm cache
of the database. Nothing is materialized meanwhile, so the rows are current: the situation of a
user opening pages after a backfill. Both sides must give the same subsets (checked every round).
Prints each side's median seconds per read of the four assets and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_deploy import alternating_rounds, load_average, populated_bulk_deployment, print_sides  # noqa: E402

warnings.filterwarnings("ignore", message=".*is currently in (beta|preview).*")
warnings.filterwarnings("ignore", category=DeprecationWarning)
ASSETS = ["bars_m15", "bars_h1", "bars_h4", "bars_d1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=504)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_scale_ui"))
    args = parser.parse_args()

    import dagster as dg
    from dagster._core.loader import LoadingContextForTest

    from backfill_dagster.instance.event_log import BulkPostgresEventLogStorage

    instance, storage, defs = populated_bulk_deployment(args.symbols, args.sessions, args.workdir)
    wanted = [(dg.AssetKey(a), defs.resolve_assets_def(a).partitions_def) for a in ASSETS]

    def stored_as_is():
        return storage.get_asset_status_cache_values(wanted, LoadingContextForTest(instance))

    def dagsters_update():
        return super(BulkPostgresEventLogStorage, storage).get_asset_status_cache_values(
            wanted, LoadingContextForTest(instance))

    def subsets(values):
        return [
            (v.latest_storage_id, v.deserialize_materialized_partition_subsets(pd).get_partition_keys(),
             v.deserialize_failed_partition_subsets(pd).get_partition_keys())
            for v, (_, pd) in zip(values, wanted)
        ]

    missing = [key.to_user_string() for (key, _), v in zip(wanted, dagsters_update()) if v is None]
    if missing:  # the update above also brought the rows up to date once, so both sides read current rows
        raise SystemExit(f"nothing materialized for {', '.join(missing)}: run `python bench/scale_ui.py --keep` "
                         "with every asset first")
    sides = {"Dagster's update": dagsters_update, "stored row as it is": stored_as_is}
    seconds, got = alternating_rounds(sides, args.rounds, subsets)
    partitions = sum(len(m) for _, m, _ in got)
    print(f"status cache read of {', '.join(ASSETS)} ({partitions:,} materialized partitions in all), "
          f"{args.rounds} rounds; load {load_average()}")
    print_sides(seconds)

if __name__ == "__main__":
    main()

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
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_deploy import Deployment, history_for, load_average  # noqa: E402

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

    name = f"bench_scale_ui_{args.symbols}x{args.sessions}"
    history_start, _ = history_for(args.sessions)
    dep = Deployment(name, args.workdir / name, history_start)
    if not dep.exists():
        raise SystemExit(f"no deployment {name}: run `python bench/scale_ui.py --keep` with the same sizes first")

    import dagster as dg
    from dagster._core.loader import LoadingContextForTest

    from backfill_dagster.definitions import build_definitions
    from backfill_dagster.instance.event_log import BulkPostgresEventLogStorage
    from backfill_dagster.settings import Settings

    instance = dep.instance()
    storage = instance.event_log_storage
    if not isinstance(storage, BulkPostgresEventLogStorage):
        raise SystemExit(f"the deployment's event log is {type(storage).__name__}, not the bulk storage")
    defs = build_definitions(Settings.from_env(), env_has_database_url=True)
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

    dagsters_update()  # bring the rows up to date once, so both sides read current rows
    sides = {"Dagster's update": dagsters_update, "stored row as it is": stored_as_is}
    seconds: dict[str, list[float]] = {label: [] for label in sides}
    partitions = None
    for round_ in range(args.rounds):
        answers = {}
        order = list(sides.items()) if round_ % 2 == 0 else list(sides.items())[::-1]
        for label, read in order:
            began = time.perf_counter()
            answers[label] = read()
            seconds[label].append(time.perf_counter() - began)
        got = [subsets(v) for v in answers.values()]
        if got[0] != got[1]:
            raise SystemExit(f"round {round_}: the two sides disagree")
        partitions = sum(len(m) for _, m, _ in got[0])
    base, ours = (statistics.median(seconds[label]) for label in sides)
    print(f"status cache read of {', '.join(ASSETS)} ({partitions:,} materialized partitions in all), "
          f"{args.rounds} rounds; load {load_average()}")
    for label in sides:
        print(f"  {label:<22} median {statistics.median(seconds[label]):6.3f} s   "
              f"min {min(seconds[label]):6.3f}   max {max(seconds[label]):6.3f}")
    print(f"  ratio (stored row / Dagster's update): {ours / base:.3f}  ({base / ours:.1f}x faster)")


if __name__ == "__main__":
    main()

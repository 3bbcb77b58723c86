"""Asset checks with a true status per partition, in single-partition and range runs alike.

A plain `AssetCheckResult` in a range run is stored with no partition, and every partition's check
stays PLANNED in the UI (DESIGN §8). So each check yields one `AssetCheckEvaluation` per partition,
linked to that partition's latest materialization, from one batched read of the store: the rules
themselves are the pure functions in `backfill_dagster.quality`.
"""


import warnings
from collections.abc import Iterator, Sequence

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluation,
    AssetCheckEvaluationTargetMaterializationData,
)

from backfill_dagster import quality
from backfill_dagster.calendar import xnys
from backfill_dagster.orchestration.bookkeeping import hold_event_log_connection
from backfill_dagster.orchestration.partitions import multi_partition_key, parse_partition_keys
from backfill_dagster.orchestration.resources import StoreResource
from backfill_dagster.timeframes import Timeframe

# One query per this many partitions when looking up the materializations the results belong to.
_LOOKUP_CHUNK = 1000

COMPLETENESS = "m15_completeness"
MATCHES_M15 = "matches_m15_resampled"
BOUNDS_M15 = "bounds_m15"


def latest_materializations(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, keys: Sequence[str]
) -> dict[str, AssetCheckEvaluationTargetMaterializationData]:
    """The newest materialization of each partition key, as a check result's target."""
    out: dict[str, AssetCheckEvaluationTargetMaterializationData] = {}
    for i in range(0, len(keys), _LOOKUP_CHUNK):
        chunk = list(keys[i : i + _LOOKUP_CHUNK])
        # Newest first; the run being checked just wrote one per key, so 2x covers reruns in between.
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=chunk), limit=2 * len(chunk)
        )
        for record in result.records:
            key = record.partition_key
            if key is not None and key not in out:
                out[key] = AssetCheckEvaluationTargetMaterializationData(
                    storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
                )
    return out


def evaluations(
    context: dg.AssetCheckExecutionContext,
    asset_key: dg.AssetKey,
    check_name: str,
    verdicts: Sequence[quality.Verdict],
) -> Iterator[AssetCheckEvaluation]:
    hold_event_log_connection(context.instance)
    keys = [str(multi_partition_key(*v.partition)) for v in verdicts]
    targets = latest_materializations(context.instance, asset_key, keys)
    failed = 0
    for key, verdict in zip(keys, verdicts):
        failed += not verdict.passed
        yield AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=check_name,
            passed=verdict.passed,
            partition=key,
            severity=dg.AssetCheckSeverity(verdict.severity.value),
            description=verdict.description,
            metadata=dict(verdict.metadata),
            target_materialization_data=targets.get(key),
        )
    context.log.info(f"{check_name} on {asset_key.to_user_string()}: {failed} of {len(verdicts)} partition(s) failed")


def _spec(name: str, asset: dg.AssetsDefinition, partitions_def, description: str) -> dg.AssetCheckSpec:
    # Partitioned check specs are Preview in Dagster 1.13 and say so on every load; they are the
    # only way to a per-partition status in the UI, a deliberate choice (DESIGN §8), so keep quiet.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=asset, partitions_def=partitions_def, description=description)


def completeness_check(
    m15: dg.AssetsDefinition, partitions_def: dg.PartitionsDefinition, warn_below: float
) -> dg.AssetChecksDefinition:
    description = (
        f"m15 bars of a closed session against its bar grid, from the coverage ledger: warns below "
        f"{warn_below:.0%} (no-trade intervals are normal for illiquid symbols, so never an error)."
    )

    @dg.multi_asset_check(
        specs=[_spec(COMPLETENESS, m15, partitions_def, description)], can_subset=True,
        name=f"{m15.key.to_python_identifier()}_{COMPLETENESS}",
    )
    def _completeness(context: dg.AssetCheckExecutionContext, store: StoreResource) -> Iterator[AssetCheckEvaluation]:
        calendar = xnys()
        partitions = parse_partition_keys(context.partition_keys, calendar)
        ledger = store.bar_store(calendar).coverage(Timeframe.M15, sorted({s for s, _ in partitions}))
        yield from evaluations(context, m15.key, COMPLETENESS, quality.completeness(ledger, partitions, warn_below=warn_below))

    return _completeness


def consistency_check(
    derived: dg.AssetsDefinition, timeframe: Timeframe, partitions_def: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    description = (
        f"Stored {timeframe.value} bars equal the stored m15 bars resampled now, bar for bar "
        "(they disagree only if m15 changed without a re-derive, or the table was edited)."
    )

    @dg.multi_asset_check(
        specs=[_spec(MATCHES_M15, derived, partitions_def, description)], can_subset=True,
        name=f"{derived.key.to_python_identifier()}_{MATCHES_M15}",
    )
    def _consistency(context: dg.AssetCheckExecutionContext, store: StoreResource) -> Iterator[AssetCheckEvaluation]:
        calendar = xnys()
        partitions = parse_partition_keys(context.partition_keys, calendar)
        bars = store.bar_store(calendar)
        verdicts = quality.derived_consistency(
            bars.read_bars(Timeframe.M15, partitions), bars.read_bars(timeframe, partitions),
            timeframe, partitions, calendar, extended=store.extended_hours,
        )
        yield from evaluations(context, derived.key, MATCHES_M15, verdicts)

    return _consistency


def daily_check(d1: dg.AssetsDefinition, partitions_def: dg.PartitionsDefinition) -> dg.AssetChecksDefinition:
    description = (
        "The d1 bar bounds the session's regular-hours m15 bars: high >= their max, low <= their "
        "min, volume >= their sum. A warning: daily and minute feeds can differ slightly."
    )

    @dg.multi_asset_check(
        specs=[_spec(BOUNDS_M15, d1, partitions_def, description)], can_subset=True,
        name=f"{d1.key.to_python_identifier()}_{BOUNDS_M15}",
    )
    def _daily(context: dg.AssetCheckExecutionContext, store: StoreResource) -> Iterator[AssetCheckEvaluation]:
        calendar = xnys()
        partitions = parse_partition_keys(context.partition_keys, calendar)
        bars = store.bar_store(calendar)
        verdicts = quality.daily_agreement(
            bars.read_bars(Timeframe.M15, partitions), bars.read_bars(Timeframe.D1, partitions), partitions, calendar
        )
        yield from evaluations(context, d1.key, BOUNDS_M15, verdicts)

    return _daily


def bar_checks(
    assets: dict[Timeframe, dg.AssetsDefinition], partitions_def: dg.PartitionsDefinition, warn_below: float
) -> list[dg.AssetChecksDefinition]:
    return [
        completeness_check(assets[Timeframe.M15], partitions_def, warn_below),
        consistency_check(assets[Timeframe.H1], Timeframe.H1, partitions_def),
        consistency_check(assets[Timeframe.H4], Timeframe.H4, partitions_def),
        daily_check(assets[Timeframe.D1], partitions_def),
    ]

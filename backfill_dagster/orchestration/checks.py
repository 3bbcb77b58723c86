"""Asset checks that summarise a run: one result per check and run, whatever its size.

Each check judges every partition of its run with the pure rules of `backfill_dagster.domain.quality`
and reports one unpartitioned result: passed only if every partition passed, the rule's severity,
counts and the worst partitions by name in its metadata. Per-partition check results do not scale
(docs/design.md, "Checks at scale"): each is its own event-log transaction, and the UI resolves every checked partition
on every asset-page request. The per-partition truth stays in the coverage ledger, in failed
materializations (the partitions view shows them red) and in `sql/queries/check_verdicts.sql`.
"""

from collections.abc import Iterator, Sequence

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluation,
    AssetCheckEvaluationTargetMaterializationData,
)

from backfill_dagster.domain import quality
from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.ledger import Partition
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.instance.event_log_tuning import hold_event_log_connection
from backfill_dagster.orchestration.partitions import partition_key, run_partitions as run_box
from backfill_dagster.orchestration.resources import StoreResource

# Partition keys per query when looking for the newest materialization among a run's partitions.
_LOOKUP_CHUNK = 1000
# Partitions whose bars a check reads and compares at a time: a verdict is about one partition, so
# the box is judged in consecutive chunks and only a chunk's bars are held (a box's m15 bars whole,
# ~300,000 at 11,592 partitions, and their copies in the comparison were most of these steps' peaks).
CHECK_PARTITIONS_PER_CHUNK = 2_000

# A key's "|" in a markdown table cell, escaped so it does not split the cell.
_ESCAPED_BAR = "\\|"

COMPLETENESS = "m15_completeness"
MATCHES_M15 = "matches_m15_resampled"
BOUNDS_M15 = "bounds_m15"


def nothing_to_check(what: str) -> str:
    """Why a check run without partitions judged nothing, and how to launch one that does."""
    return (
        f"skipped, nothing to check: this check judges the {what} partitions of its run, and this run has "
        "none (a check executed on its own, e.g. Execute in the UI). To check stored data, launch it with "
        "the asset over a partition or a range (UI: Materialize, or a backfill; CLI: --partition or "
        "--partition-range), or alone with the partition or range tags"
    )


def skip_without_partitions(
    context: dg.AssetCheckExecutionContext, asset_key: dg.AssetKey, check_name: str, what: str = "asset's"
) -> Iterator[dg.Output]:
    """A check asked without partitions is skipped, not failed: asking must not turn it red. The
    run succeeds with no evaluation, which Dagster shows as the check skipped; the log says why."""
    context.log.warning(f"{check_name} on {asset_key.to_user_string()}: {nothing_to_check(what)}")
    yield dg.Output(None, output_name=dg.AssetCheckSpec(check_name, asset=asset_key).get_python_identifier())


def run_partitions(context: dg.AssetCheckExecutionContext) -> list[Partition] | None:
    """The (symbol, session) partitions of the run: one key, or a range's box; None without any."""
    if not context.has_partition_key_range and not context.has_partition_key:
        return None
    return run_box(context, xnys())


def newest_materialization(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, keys: Sequence[str]
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The newest materialization among the checked partitions: what the result is about.

    The UI counts a result as current while no partition of the asset has been materialized after
    its target. Usually that is the asset's latest materialization (one lookup); otherwise, e.g. in a
    check-only run, a lookup per chunk of keys.
    """
    record = instance.get_asset_records([asset_key])
    latest = record[0].asset_entry.last_materialization_record if record else None
    wanted = set(keys)
    if latest is not None and latest.partition_key in wanted:
        return _target(latest)
    newest = None
    for i in range(0, len(keys), _LOOKUP_CHUNK):
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=list(keys[i : i + _LOOKUP_CHUNK])), limit=1
        ).records
        if found and (newest is None or found[0].storage_id > newest.storage_id):
            newest = found[0]
    return _target(newest) if newest is not None else None


def latest_materialization(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """The asset's latest materialization, if any: the target Dagster gives an AssetCheckResult of
    an unpartitioned check on a partitioned asset (its input asset version info: the asset record's
    last materialization; none when the record holds only an observation)."""
    record = instance.get_asset_records([asset_key])
    latest = record[0].asset_entry.last_materialization_record if record else None
    return _target(latest) if latest is not None else None


def _target(record: dg.EventLogRecord) -> AssetCheckEvaluationTargetMaterializationData:
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
    )


def partition_chunks(partitions: Sequence[Partition], size: int | None = None) -> list[list[Partition]]:
    """The distinct partitions in order (symbol, then session), in consecutive chunks of at most
    `size` (CHECK_PARTITIONS_PER_CHUNK): judged chunk by chunk, their verdicts come in the order
    the rules give them for the whole box."""
    size = size or CHECK_PARTITIONS_PER_CHUNK
    ordered = sorted(set(partitions))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def summary_metadata(summary: quality.Summary, partitions: Sequence[Partition]) -> dict[str, object]:
    """What the UI shows beside the verdict: counts, the box, and the worst partitions by name."""
    sessions = sorted({d for _, d in partitions})
    metadata: dict[str, object] = {
        "partitions_checked": summary.checked,
        "partitions_passed": summary.checked - summary.failed,
        "partitions_failed": summary.failed,
        "symbols": len({s for s, _ in partitions}),
        "first_session": sessions[0].isoformat() if sessions else "",
        "last_session": sessions[-1].isoformat() if sessions else "",
    }
    if summary.worst:
        rows = "\n".join(
            f"| {quality.partition_name(v.partition).replace('|', _ESCAPED_BAR)} | {v.description.replace('|', '/')} |"
            for v in summary.worst
        )
        more = summary.failed - len(summary.worst)
        tail = f"\n\n{more:,} more: sql/queries/check_verdicts.sql or `backfill-dagster coverage --detail`" if more else ""
        metadata["worst_partitions"] = dg.MetadataValue.md(f"| partition | why |\n|---|---|\n{rows}{tail}")
    return metadata


def summary_events(
    context: dg.AssetCheckExecutionContext,
    asset_key: dg.AssetKey,
    check_name: str,
    rule_severity: quality.Severity,
    verdicts: Sequence[quality.Verdict],
    partitions: Sequence[Partition],
    extra_metadata: dict[str, object] | None = None,
) -> Iterator[dg.Output | AssetCheckEvaluation]:
    """The run's one result for this check, linked to the newest materialization it judged (and the
    check's output, as Dagster yields it for an `AssetCheckResult`)."""
    hold_event_log_connection(context.instance)
    summary = quality.summarize(verdicts, rule_severity)
    keys = [partition_key(*p) for p in partitions]
    context.log.info(f"{check_name} on {asset_key.to_user_string()}: {summary.description}")
    yield dg.Output(None, output_name=dg.AssetCheckSpec(check_name, asset=asset_key).get_python_identifier())
    yield AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=check_name,
        passed=summary.passed,
        severity=dg.AssetCheckSeverity(summary.severity.value),
        description=summary.description,
        metadata={**summary_metadata(summary, partitions), **(extra_metadata or {})},
        target_materialization_data=newest_materialization(context.instance, asset_key, keys),
    )


def completeness_figures(ledger, partitions: Sequence[Partition]) -> dict[str, object]:
    """The run's m15 figures from the ledger: bars vs expected, statuses, providers."""
    wanted = set(partitions)
    rows = ledger[[(s, d) in wanted for s, d in zip(ledger["symbol"], ledger["session"])]] if len(ledger) else ledger
    if not len(rows):
        return {}
    bars, expected = int(rows["bars"].sum()), int(rows["expected"].sum())
    return {
        "bars": bars,
        "bars_expected": expected,
        "completeness": round(bars / expected, 4) if expected else 1.0,
        "statuses": dg.MetadataValue.json({str(k): int(v) for k, v in rows["status"].value_counts().items()}),
        "served_by": dg.MetadataValue.json(
            {str(k): int(v) for k, v in rows["provider"].fillna("").value_counts().items() if k}
        ),
    }


def _spec(name: str, asset: dg.AssetsDefinition, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=asset, description=description)


def completeness_check(m15: dg.AssetsDefinition, warn_below: float) -> dg.AssetChecksDefinition:
    description = (
        f"m15 bars of each closed session of the run against its bar grid, from the coverage ledger: "
        f"warns if any is below {warn_below:.0%} (no-trade intervals are normal for illiquid symbols, "
        "so never an error). One result per run, naming the worst partitions."
    )

    @dg.multi_asset_check(
        specs=[_spec(COMPLETENESS, m15, description)], can_subset=True,
        name=f"{m15.key.to_python_identifier()}_{COMPLETENESS}",
    )
    def _completeness(context: dg.AssetCheckExecutionContext, store: StoreResource) -> Iterator[dg.Output | AssetCheckEvaluation]:
        partitions = run_partitions(context)
        if partitions is None:
            yield from skip_without_partitions(context, m15.key, COMPLETENESS)
            return
        sessions = [d for _, d in partitions]
        ledger = store.bar_store(xnys()).coverage(  # the box's rows, not the symbols' whole history
            Timeframe.M15, sorted({s for s, _ in partitions}), sessions=(min(sessions), max(sessions))
        )
        verdicts = quality.completeness(ledger, partitions, warn_below=warn_below)
        yield from summary_events(
            context, m15.key, COMPLETENESS, quality.Severity.WARN, verdicts, partitions,
            completeness_figures(ledger, partitions),
        )

    return _completeness


def consistency_check(derived: dg.AssetsDefinition, timeframe: Timeframe) -> dg.AssetChecksDefinition:
    description = (
        f"Stored {timeframe.value} bars equal the stored m15 bars resampled now, bar for bar, in every "
        "partition of the run (they disagree only if m15 changed without a re-derive, or the table was "
        "edited). One result per run, naming the partitions that disagree."
    )

    @dg.multi_asset_check(
        specs=[_spec(MATCHES_M15, derived, description)], can_subset=True,
        name=f"{derived.key.to_python_identifier()}_{MATCHES_M15}",
    )
    def _consistency(context: dg.AssetCheckExecutionContext, store: StoreResource) -> Iterator[dg.Output | AssetCheckEvaluation]:
        partitions = run_partitions(context)
        if partitions is None:
            yield from skip_without_partitions(context, derived.key, MATCHES_M15)
            return
        calendar = xnys()
        bars = store.bar_store(calendar)
        verdicts = [
            verdict
            for chunk in partition_chunks(partitions)
            for verdict in quality.derived_consistency(
                bars.read_bars(Timeframe.M15, chunk), bars.read_bars(timeframe, chunk),
                timeframe, chunk, calendar, extended=store.extended_hours,
            )
        ]
        yield from summary_events(context, derived.key, MATCHES_M15, quality.Severity.ERROR, verdicts, partitions)

    return _consistency


def daily_check(d1: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    description = (
        "The d1 bar bounds the session's regular-hours m15 bars: high >= their max, low <= their "
        "min, volume >= their sum, in every partition of the run. A warning: daily and minute feeds "
        "can differ slightly. One result per run, naming the partitions that disagree."
    )

    @dg.multi_asset_check(
        specs=[_spec(BOUNDS_M15, d1, description)], can_subset=True,
        name=f"{d1.key.to_python_identifier()}_{BOUNDS_M15}",
    )
    def _daily(context: dg.AssetCheckExecutionContext, store: StoreResource) -> Iterator[dg.Output | AssetCheckEvaluation]:
        partitions = run_partitions(context)
        if partitions is None:
            yield from skip_without_partitions(context, d1.key, BOUNDS_M15)
            return
        calendar = xnys()
        bars = store.bar_store(calendar)
        verdicts = [
            verdict
            for chunk in partition_chunks(partitions)
            for verdict in quality.daily_agreement(
                bars.read_bars(Timeframe.M15, chunk), bars.read_bars(Timeframe.D1, chunk), chunk, calendar
            )
        ]
        yield from summary_events(context, d1.key, BOUNDS_M15, quality.Severity.WARN, verdicts, partitions)

    return _daily


def bar_checks(assets: dict[Timeframe, dg.AssetsDefinition], warn_below: float) -> list[dg.AssetChecksDefinition]:
    return [
        completeness_check(assets[Timeframe.M15], warn_below),
        consistency_check(assets[Timeframe.H1], Timeframe.H1),
        consistency_check(assets[Timeframe.H4], Timeframe.H4),
        daily_check(assets[Timeframe.D1]),
    ]

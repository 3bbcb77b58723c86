"""The bar assets: one per timeframe, each partitioned by session x symbol.

All four share one partitions definition and `BackfillPolicy.single_run()` (which `dagster asset
materialize --partition-range` requires), so a UI backfill of them shares its runs: boxes of many
symbols x many sessions (instance/backfill_runs.py), and a run over a box makes few provider calls (the planner) and one
atomic write per request. Per-partition accounting lives in the coverage ledger, not in Dagster
metadata, whose per-partition calls cost O(n) each (docs/design.md).
"""

import warnings
from collections.abc import Iterator, Sequence
from fractions import Fraction

import dagster as dg

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.ledger import REPLACE_FEWER_TAG, REWRITE_REASON_TAG, SPLIT_RATIO_TAG
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.ingest import IngestReport, derive_partitions, fetch_partitions
from backfill_dagster.instance.event_log_tuning import hold_event_log_connection
from backfill_dagster.orchestration.attempts import earlier_attempts
from backfill_dagster.orchestration.partitions import multi_partition_key, run_partitions
from backfill_dagster.orchestration.resources import ProvidersResource, StoreResource

GROUP = "bars"

DESCRIPTIONS = {
    Timeframe.M15: (
        "15-minute OHLCV bars of each watchlist symbol and NYSE session, fetched from the configured "
        "providers (session-anchored, bar start in UTC)."
    ),
    Timeframe.D1: (
        "Daily OHLCV bars of each watchlist symbol and NYSE session, fetched from the configured "
        "providers (labelled 00:00 America/New_York)."
    ),
    Timeframe.H1: (
        "Hourly bars resampled from the session's m15 bars: 09:30, 10:30 ... 15:30 (the last one "
        "30 minutes), early closes respected."
    ),
    Timeframe.H4: (
        "Four-hour bars resampled from the session's m15 bars: 09:30-13:30 and 13:30-16:00, one "
        "09:30-13:00 bar on early closes."
    ),
}


def run_figures(report: IngestReport) -> dict[str, object]:
    """What a step did, about the whole run: written once per run, never into each partition."""
    return {
        "partitions_in_run": report.partitions,
        "partitions_written": len(report.written),
        "partitions_failed": len(report.failures),
        "bars_written": report.bars_written,
        "bars_expected": report.bars_expected,
        "completeness": round(report.bars_written / report.bars_expected, 4) if report.bars_expected else 1.0,
        "api_calls": sum(report.api_calls.values()),
        "api_calls_by_provider": dict(sorted(report.api_calls.items())),
        "served_by": dict(sorted(report.served_by.items())),
        "rejected_bars": report.rejected_bars,
        "outside_hours": report.outside_hours,
        # committed by an earlier attempt of the run (a retry), not fetched or derived again
        "partitions_carried": len(report.carried),
    }


def report_events(
    context: dg.AssetExecutionContext, report: IngestReport
) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
    """Turn a step's report into Dagster events with a per-partition status that tells the truth.

    Success: one MaterializeResult; Dagster records it for every partition of the run. Partial
    failure: the partitions that were written (or carried from an earlier attempt of the run) get
    their own materialization, then the step fails naming the others, so the UI shows exactly those
    as failed. The run's figures go into one log
    line (and the failure), not into every partition's event: Dagster copies a range result's
    metadata into each of them (~1.3 KB and ~0.15 ms per partition, bench/bookkeeping.py).
    """
    figures = run_figures(report)
    context.log.info(
        f"{report.timeframe.asset_name} run figures: "
        + ", ".join(f"{k}={v}" for k, v in figures.items())
    )
    if report.ok:
        yield dg.MaterializeResult()
        return
    for symbol, session in [*report.carried, *report.written]:
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=multi_partition_key(symbol, session))
    raise dg.Failure(
        description=(
            f"{len(report.failures)} of {report.partitions} partition(s) of "
            f"{report.timeframe.asset_name} failed ({len(report.written)} were written):\n"
            f"{report.failure_summary()}"
        ),
        metadata={
            **{k: dg.MetadataValue.json(v) if isinstance(v, dict) else v for k, v in figures.items()},
            "failed_partitions": dg.MetadataValue.json(
                sorted(f"{d.isoformat()}|{s}" for s, d in report.failures)[:1000]
            ),
        },
    )


def fetched_bars_asset(
    timeframe: Timeframe, partitions_def: dg.PartitionsDefinition, pool: str | None = None
) -> dg.AssetsDefinition:
    @dg.asset(
        pool=pool,
        name=timeframe.asset_name,
        description=DESCRIPTIONS[timeframe],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GROUP,
        kinds={"python", "sql"},
        tags={"timeframe": timeframe.value},
    )
    def _fetched(
        context: dg.AssetExecutionContext, store: StoreResource, providers: ProvidersResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
        hold_event_log_connection(context.instance)
        calendar = xnys()
        partitions = run_partitions(context, calendar)
        router = providers.router(store, calendar)
        bar_store = store.bar_store(calendar)
        try:
            report = fetch_partitions(
                partitions, timeframe, router, bar_store,
                run_id=context.run.run_id, log=context.log.info,
                allow_fewer=store.replace_fewer_bars or replace_fewer_requested(context.run.tags),
                rewrite_reason=context.run.tags.get(REWRITE_REASON_TAG),
                split_ratio=split_ratio(context.run.tags),
                committed=committed_earlier(context, bar_store, timeframe, partitions),
            )
        finally:
            router.close()
        if timeframe is Timeframe.M15 and not report.ok:
            yield from derive_what_was_written(context, report, store, calendar)
        yield from report_events(context, report)

    return _fetched


def derive_what_was_written(
    context: dg.AssetExecutionContext, report: IngestReport, store: StoreResource, calendar
) -> Iterator[dg.AssetMaterialization]:
    """h1/h4 of the partitions an m15 step did write, when others of its run failed.

    The m15 step then fails (naming the failed partitions), and Dagster skips the run's h1/h4 steps
    whole: a run over a box of 23 symbols would show every h1/h4 partition of the box failed for
    one symbol's bad session. So the m15 step derives the run's h1/h4 for the partitions it wrote
    and reports those materializations itself; only the failed partitions' h1/h4 stay failed, as
    the partitions view must show.
    """
    stored = sorted({*report.written, *report.carried})  # carried: committed by an earlier attempt
    if not stored:
        return
    # The run's assets: its job's selection (the run's asset_selection is empty for a whole job
    # executed in process, e.g. `materialize` in a test or script).
    selection = context.job_def.asset_layer.selected_asset_keys
    bar_store = store.bar_store(calendar)
    for timeframe in (Timeframe.H1, Timeframe.H4):
        key = dg.AssetKey(timeframe.asset_name)
        if key not in selection:
            continue
        derived = derive_partitions(
            stored, timeframe, bar_store,
            extended=store.extended_hours, run_id=context.run.run_id, log=context.log.info,
            rewrite_reason=context.run.tags.get(REWRITE_REASON_TAG),
            committed=committed_earlier(context, bar_store, timeframe, stored),
        )
        context.log.info(
            f"{timeframe.asset_name}: derived {len(derived.written)} of the {len(stored)} m15 "
            "partition(s) this run holds (the run's own h1/h4 step is skipped after the m15 failure)"
        )
        for symbol, session in sorted({*derived.written, *derived.carried}):
            yield dg.AssetMaterialization(asset_key=key, partition=multi_partition_key(symbol, session))


def derived_bars_asset(
    timeframe: Timeframe, source: dg.AssetsDefinition, partitions_def: dg.PartitionsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        name=timeframe.asset_name,
        description=DESCRIPTIONS[timeframe],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GROUP,
        kinds={"python", "sql"},
        tags={"timeframe": timeframe.value},
        deps=[source],
    )
    def _derived(
        context: dg.AssetExecutionContext, store: StoreResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
        hold_event_log_connection(context.instance)
        calendar = xnys()
        partitions = run_partitions(context, calendar)
        bar_store = store.bar_store(calendar)
        report = derive_partitions(
            partitions, timeframe, bar_store,
            extended=store.extended_hours, run_id=context.run.run_id, log=context.log.info,
            rewrite_reason=context.run.tags.get(REWRITE_REASON_TAG),
            committed=committed_earlier(context, bar_store, timeframe, partitions),
        )
        yield from report_events(context, report)

    return _derived


def committed_earlier(context: dg.AssetExecutionContext, bar_store, timeframe: Timeframe, partitions) -> set:
    """The run's partitions an earlier attempt of it (a retry, a re-execution) committed complete."""
    attempts = earlier_attempts(context.instance, context.run)
    return bar_store.committed_by(timeframe, partitions, attempts) if attempts else set()


def replace_fewer_requested(tags) -> bool:
    """Whether the run asks that final answers with fewer bars replace final stored ones (the tag
    `backfill/replace_fewer_bars=true`, e.g. on a UI backfill re-pulling history after a split)."""
    return str(tags.get(REPLACE_FEWER_TAG, "")).strip().lower() in ("1", "true", "yes")


def split_ratio(tags) -> Fraction | None:
    """The split a repair run re-fetches for (the tag `backfill/split_ratio`, new:old as "1:10"):
    fewer bars than stored are then accepted only where its new share basis explains them."""
    text = tags.get(SPLIT_RATIO_TAG)
    if text is None:
        return None
    new, sep, old = str(text).partition(":")
    try:
        ratio = Fraction(int(new), int(old)) if sep else None
    except (ValueError, ZeroDivisionError):
        ratio = None
    if ratio is None or ratio <= 0:
        raise dg.Failure(description=f"run tag {SPLIT_RATIO_TAG}={text!r} is not a split ratio: use NEW:OLD, e.g. 4:1 or 1:10")
    return ratio


def provider_pool(providers: Sequence[str]) -> str | None:
    """The Dagster pool of steps that call providers: named after the preferred provider, whose
    rate limit the steps mostly spend (limits per pool in dagster.yaml). None for the demo."""
    primary = providers[0] if providers else "demo"
    return None if primary == "demo" else f"provider_{primary}"


def bar_assets(
    partitions_def: dg.PartitionsDefinition, providers: Sequence[str] = ("demo",)
) -> dict[Timeframe, dg.AssetsDefinition]:
    pool = provider_pool(providers)
    # `backfill_policy` is a beta parameter of `dg.asset`; the single-run policy is what makes a UI
    # backfill one run per box, chosen knowingly. Its warning would print once per asset on every
    # `dagster` command, so it is silenced here, for this parameter only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*`backfill_policy`.*", category=dg.BetaWarning)
        m15 = fetched_bars_asset(Timeframe.M15, partitions_def, pool)
        return {
            Timeframe.M15: m15,
            Timeframe.H1: derived_bars_asset(Timeframe.H1, m15, partitions_def),
            Timeframe.H4: derived_bars_asset(Timeframe.H4, m15, partitions_def),
            Timeframe.D1: fetched_bars_asset(Timeframe.D1, partitions_def, pool),
        }


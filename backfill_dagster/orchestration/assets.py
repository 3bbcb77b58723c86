"""The bar assets: one per timeframe, each partitioned by session x symbol.

All four share one partitions definition and `BackfillPolicy.single_run()`, so a UI backfill of
them shares its runs, and a run over a box of partitions makes few provider calls (the planner) and
one atomic write per request. Per-partition accounting lives in the coverage ledger, not in Dagster
metadata, whose per-partition calls cost O(n) each (DESIGN §4).
"""

import warnings
from collections.abc import Iterator, Sequence

import dagster as dg

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.ledger import REPLACE_FEWER_TAG, REWRITE_REASON_TAG
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.ingest import IngestReport, derive_partitions, fetch_partitions
from backfill_dagster.instance.event_log_tuning import hold_event_log_connection
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
    }


def report_events(
    context: dg.AssetExecutionContext, report: IngestReport
) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
    """Turn a step's report into Dagster events with a per-partition status that tells the truth.

    Success: one MaterializeResult; Dagster records it for every partition of the run. Partial
    failure: the partitions that were written get their own materialization, then the step fails
    naming the others, so the UI shows exactly those as failed. The run's figures go into one log
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
    for symbol, session in report.written:
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
        try:
            report = fetch_partitions(
                partitions, timeframe, router, store.bar_store(calendar),
                run_id=context.run.run_id, log=context.log.info,
                allow_fewer=store.replace_fewer_bars or replace_fewer_requested(context.run.tags),
                rewrite_reason=context.run.tags.get(REWRITE_REASON_TAG),
            )
        finally:
            router.close()
        yield from report_events(context, report)

    return _fetched


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
        report = derive_partitions(
            partitions, timeframe, store.bar_store(calendar),
            extended=store.extended_hours, run_id=context.run.run_id, log=context.log.info,
            rewrite_reason=context.run.tags.get(REWRITE_REASON_TAG),
        )
        yield from report_events(context, report)

    return _derived


def replace_fewer_requested(tags) -> bool:
    """Whether the run asks that final answers with fewer bars replace final stored ones (the tag
    `backfill/replace_fewer_bars=true`, e.g. on a UI backfill re-pulling history after a split)."""
    return str(tags.get(REPLACE_FEWER_TAG, "")).strip().lower() in ("1", "true", "yes")


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


"""The `corporate_actions` asset, its job and its schedule, and its checks.

Unpartitioned on purpose: a refresh asks Alpaca and Polygon about the whole watchlist in a few
multi-symbol calls (a symbol-partitioned asset would cost a run and a call per symbol per provider
every day), and the table it keeps is small. Its run config names symbols to refresh only those: the
watchlist_sync sensor asks for symbols no provider has been asked about yet (a new symbol).

| schedule            | when                                                                        |
|---------------------|-----------------------------------------------------------------------------|
| corporate_actions   | 08:00 New York on each NYSE session: before the open, so hours before the   |
|                     | end_of_day finalize (whatever BACKFILL_EOD_DELAY_MINUTES says), a split that |
|                     | takes effect today is known before today's bars are finalized               |
"""


from collections.abc import Sequence

import dagster as dg
import pandas as pd

from backfill_dagster.action_refresh import refresh_actions, refresh_window
from backfill_dagster.domain.calendar import NEW_YORK, NotASessionError, SessionCalendar, xnys
from backfill_dagster.domain.clock import Clock, utcnow
from backfill_dagster.domain.corporate_actions import RepairState, disagreements
from backfill_dagster.domain.symbols import InvalidSymbolError, normalize_symbols
from backfill_dagster.orchestration.resources import ProvidersResource, StoreResource
from backfill_dagster.orchestration.tags import SESSION_TAG

ASSET = "corporate_actions"
GROUP = "corporate_actions"
JOB = "corporate_actions_job"
SCHEDULE = "corporate_actions_daily"
SCHEDULE_CRON = "0 8 * * 1-5"
PROVIDERS_AGREE = "providers_agree"
SPLITS_REPAIRED = "splits_repaired"
WORST_NAMED = 20  # items a check names in its metadata; the rest are counted


class RefreshConfig(dg.Config):
    """Which symbols to refresh: none named means every active watchlist symbol."""

    symbols: list[str] = []


def _table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...], more: int) -> dg.MetadataValue:
    text = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    text += "\n".join("| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows)
    if more:
        text += f"\n\n{more:,} more: backfill-dagster corporate-actions SYMBOL"
    return dg.MetadataValue.md(text)


def agreement_check(store: StoreResource, symbols: Sequence[str]) -> dg.AssetCheckResult:
    """Providers that report an action of these symbols with different figures (or one split on
    nearby dates): a warning naming them, worst first."""
    found = disagreements(store.actions().reports(symbols))
    metadata: dict = {"symbols_checked": len(symbols), "disagreements": len(found)}
    if found:
        metadata["worst"] = _table([(d.symbol, d.kind.value, d.ex_date.isoformat(), d.detail) for d in found[:WORST_NAMED]],
                                   ("symbol", "kind", "ex-date", "providers say"), max(0, len(found) - WORST_NAMED))
        first = found[0]
        description = (f"{len(found)} action(s) reported differently; first: {first.symbol} {first.kind.value} "
                       f"ex {first.ex_date}: {first.detail}")
    else:
        description = f"every provider agrees on the actions of {len(symbols)} symbol(s)"
    return dg.AssetCheckResult(check_name=PROVIDERS_AGREE, passed=not found, severity=dg.AssetCheckSeverity.WARN,
                               description=description, metadata=metadata)


def repair_check(store: StoreResource) -> dg.AssetCheckResult:
    """Splits whose repair failed (partitions left on the old share basis), and those under way."""
    actions = store.actions()
    failed = actions.splits(states=[RepairState.FAILED])
    open_ = actions.splits()
    metadata: dict = {"repairs_failed": len(failed), "repairs_open": len(open_)}
    if failed:
        metadata["failed"] = _table([(s.describe(), s.attempts, s.note or "") for s in failed[:WORST_NAMED]],
                                    ("split", "backfills", "left"), max(0, len(failed) - WORST_NAMED))
    if open_:
        metadata["open"] = _table([(s.describe(), s.state.value, s.note or "") for s in open_[:WORST_NAMED]],
                                  ("split", "state", "note"), max(0, len(open_) - WORST_NAMED))
    if failed:
        description = f"{len(failed)} split(s) left history on the old share basis; first: {failed[0].describe()}: {failed[0].note}"
    else:
        description = f"no failed split repair; {len(open_)} under way or waiting for their ex-date"
    return dg.AssetCheckResult(check_name=SPLITS_REPAIRED, passed=not failed, severity=dg.AssetCheckSeverity.WARN,
                               description=description, metadata=metadata)


def build_corporate_actions_asset(history_start, *, clock: Clock = utcnow) -> dg.AssetsDefinition:
    @dg.asset(
        name=ASSET,
        group_name=GROUP,
        kinds={"python", "sql"},
        description=(
            "Splits and cash dividends of the watchlist as each provider reports them (Alpaca, "
            "Polygon/Massive, Yahoo; Tradier publishes none), deduplicated by symbol and ex-date. A new "
            "split makes the split_repair sensor re-fetch the history stored on the old share basis."
        ),
        check_specs=[
            dg.AssetCheckSpec(PROVIDERS_AGREE, asset=ASSET, description=(
                "Warns when two providers report one action differently (a split's ratio, a dividend's "
                "amount, or one split on two dates within a week), naming the worst.")),
            dg.AssetCheckSpec(SPLITS_REPAIRED, asset=ASSET, description=(
                "Warns when a split's repair gave up with partitions still on the old share basis.")),
        ],
    )
    def corporate_actions(
        context: dg.AssetExecutionContext, config: RefreshConfig, store: StoreResource, providers: ProvidersResource
    ) -> dg.MaterializeResult:
        try:
            symbols = normalize_symbols(config.symbols) if config.symbols else store.watchlist().active()
        except InvalidSymbolError as exc:
            raise dg.Failure(f"run config symbols: {exc}") from None
        now = clock()
        first, last = refresh_window(history_start, now)
        sources = providers.action_sources(store)
        try:
            publishing = [p.name for p in sources if p.publishes_corporate_actions]
            if not symbols or not publishing:
                why = "no active symbol" if not symbols else (
                    f"no configured provider publishes corporate actions (BACKFILL_PROVIDERS="
                    f"{','.join(providers.names)}; alpaca, polygon and yahoo do)")
                context.log.info(f"nothing refreshed: {why}")
                return dg.MaterializeResult(
                    metadata={"symbols": len(symbols), "note": why},
                    check_results=[agreement_check(store, symbols), repair_check(store)],
                )
            report = refresh_actions(symbols, sources, store.actions(), first=first, last=last, now=now,
                                     log=context.log.info)
        finally:
            for provider in sources:
                provider.close()
        metadata = {
            "symbols": len(symbols),
            "ex_dates": f"{first.isoformat()}..{last.isoformat()}",
            "providers": ", ".join(report.providers),
            "api_calls": sum(report.api_calls.values()),
            "api_calls_by_provider": dg.MetadataValue.json(dict(report.api_calls)),
            "reports_by_provider": dg.MetadataValue.json(dict(report.reports)),
            "new_actions": len(report.new),
            "new_splits": dg.MetadataValue.json(
                [f"{s} {k.value} {d.isoformat()}" for s, k, d in report.new if k.value == "split"][:100]),
        }
        if not report.ok:
            # What every provider answered is recorded; the failures fail the step, naming them.
            raise dg.Failure(
                description=f"{len(report.failed)} provider x symbol request(s) failed:\n{report.failure_summary()}",
                metadata=metadata,
            )
        return dg.MaterializeResult(
            metadata=metadata, check_results=[agreement_check(store, symbols), repair_check(store)]
        )

    return corporate_actions


corporate_actions_job = dg.define_asset_job(
    JOB, selection=dg.AssetSelection.groups(GROUP),
    description="Refresh the corporate actions of the watchlist (or of the symbols in the run config).",
)


def refresh_run_config(symbols: Sequence[str]) -> dict:
    return {"ops": {ASSET: {"config": {"symbols": list(symbols)}}}}


def build_corporate_actions_schedule(
    *, calendar: SessionCalendar | None = None, clock: Clock = utcnow
) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=SCHEDULE,
        cron_schedule=SCHEDULE_CRON,
        execution_timezone=str(NEW_YORK),
        job_name=JOB,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "08:00 New York on each NYSE session (holidays skipped): refreshes the corporate actions of "
            "every active symbol, hours before end_of_day finalizes the session."
        ),
    )
    def corporate_actions_daily(context: dg.ScheduleEvaluationContext, store: StoreResource):
        cal = calendar or xnys()
        tick = pd.Timestamp(context.scheduled_execution_time or clock())
        tick = tick.tz_localize(NEW_YORK) if tick.tzinfo is None else tick
        today = tick.tz_convert(NEW_YORK).date()
        try:
            cal.require_session(today)
        except NotASessionError as exc:
            return dg.SkipReason(f"{exc}: corporate actions are refreshed on sessions")
        if not store.watchlist().active():
            return dg.SkipReason("the watchlist has no active symbols")
        return dg.RunRequest(run_key=f"{SCHEDULE}:{today.isoformat()}", tags={SESSION_TAG: today.isoformat()})

    return corporate_actions_daily

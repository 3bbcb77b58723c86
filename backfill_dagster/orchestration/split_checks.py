"""`bars_d1:no_unrecorded_split`: a d1 price jump at a session boundary that a split ratio explains,
where no provider reported a split — detection without the corporate-actions endpoints (Tradier
alone, or a split the feeds missed).

One result per run, whatever its size (the per-run summary shape every check here takes): it judges
every session of the run against the stored session before it (a run of one session compares with
the day before), and names the worst suspects by symbol, session and suspected ratio. A warning: the
rule is in backfill_dagster/domain/split_jumps.py.
"""


from datetime import date

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluation

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.corporate_actions import ratio_text
from backfill_dagster.domain.split_jumps import SPLIT_RATIOS, TOLERANCE, suspected_splits
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.orchestration.checks import latest_materialization, skip_without_partitions
from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME, parse_partition_key
from backfill_dagster.orchestration.resources import StoreResource

CHECK = "no_unrecorded_split"
WORST_NAMED = 20


def run_box(context: dg.AssetCheckExecutionContext) -> tuple[list[str], date, date] | None:
    """The run's symbols (in the partitions' order) and first and last session, from its key range;
    None for a run without partitions."""
    calendar = xnys()
    if not context.has_partition_key_range and not context.has_partition_key:
        return None
    key_range = context.op_execution_context.partition_key_range
    (first_symbol, first), (last_symbol, last) = (parse_partition_key(k, calendar) for k in (key_range.start, key_range.end))
    if first_symbol == last_symbol:
        return [first_symbol], first, last
    order = list(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    return order[order.index(first_symbol) : order.index(last_symbol) + 1], first, last


def suspected_split_check(d1: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    watched = ", ".join(ratio_text(r) for r in SPLIT_RATIOS)

    spec = dg.AssetCheckSpec(CHECK, asset=d1, description=(
        f"Warns when a session's open is the previous close divided by a split ratio ({watched}, within "
        f"{TOLERANCE:.0%}) and no provider reported a split that day: history on two share bases. "
        "One result per run, naming symbol, session and ratio."))

    @dg.multi_asset_check(
        specs=[spec],
        can_subset=True,
        name=f"{d1.key.to_python_identifier()}_{CHECK}",
    )
    def _no_unrecorded_split(context: dg.AssetCheckExecutionContext, store: StoreResource):
        calendar = xnys()
        box = run_box(context)
        if box is None:
            yield from skip_without_partitions(context, d1.key, CHECK, "d1")
            return
        symbols, first, last = box
        before = calendar.previous_session(first)
        bars = store.bar_store(calendar).read_bars(
            Timeframe.D1, [(s, d) for s in symbols for d in calendar.sessions(before, last)])
        suspects = suspected_splits(bars, calendar, store.actions().recorded_splits(symbols),
                                    sessions=set(calendar.sessions(first, last)))
        metadata: dict = {"symbols": len(symbols), "first_session": first.isoformat(), "last_session": last.isoformat(),
                          "suspected_splits": len(suspects)}
        if suspects:
            rows = "\n".join(f"| {s.symbol} | {s.session} | {ratio_text(s.ratio)} | {s.previous_close:g} -> {s.open:g} |"
                             for s in suspects[:WORST_NAMED])
            more = len(suspects) - WORST_NAMED
            metadata["suspects"] = dg.MetadataValue.md(
                "| symbol | session | split? | close -> open |\n|---|---|---|---|\n" + rows
                + (f"\n\n{more} more" if more > 0 else ""))
            description = f"{len(suspects)} jump(s) like an unrecorded split; first: {suspects[0].describe()}"
        else:
            description = f"no jump like a split without a recorded split ({len(symbols)} symbol(s), {first}..{last})"
        # What Dagster makes of an AssetCheckResult (the check's output, then its evaluation about the
        # asset's latest materialization), built here: for that target Dagster lists every key of
        # the partitions (all symbols x all sessions, ~250,000 MultiPartitionKeys at 500 symbols,
        # ~180 MB) and keeps the list for the worker's life.
        yield dg.Output(None, output_name=spec.get_python_identifier())
        yield AssetCheckEvaluation(
            asset_key=d1.key, check_name=CHECK, passed=not suspects, severity=dg.AssetCheckSeverity.WARN,
            description=description, metadata=metadata, blocking=spec.blocking,
            target_materialization_data=latest_materialization(context.instance, d1.key),
        )

    return _no_unrecorded_split

"""The `split_repair` sensor: re-fetch the history a split left on the old share basis, as one
Dagster backfill per split (Runs > Backfills in the UI), and follow it to the end.

Each tick reads the splits whose repair is open (pending or repairing), weighs what the stored bars
show at each ex-date against when they were fetched (`backfill_dagster.domain.split_basis.assess`:
a jump by the ratio means the history before it is on the old basis, whatever the timestamps say)
and applies `backfill_dagster.domain.split_repair.decide`. A backfill covers exactly the stale partitions, per asset
(m15 and d1 from the providers, h1/h4 derived in the same runs), and carries the tags
`backfill/split_ratio` (a final answer with fewer bars than stored replaces them only when the
split's new share basis explains every missing bar; any other partial answer fails the partition and
the stored bars stay) and `backfill/rewrite_reason` (written into the ledger's rewrite_reason). Its id is written
on the split's row *before* the backfill is added, so no tick, even one that dies halfway, launches
a second backfill for a split while the first is known. The gap sensor leaves alone every timeframe
an unfinished backfill covers, so the two never fetch the same partitions. A raw store needs no
repair: a split never changes raw bars.
"""


import time
from datetime import date

import dagster as dg
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from backfill_dagster.domain.calendar import SessionCalendar, xnys
from backfill_dagster.domain.clock import Clock, utcnow
from backfill_dagster.domain.corporate_actions import RepairState, ratio_text, repair_reason
from backfill_dagster.domain.ledger import REWRITE_REASON_TAG, SPLIT_RATIO_TAG
from backfill_dagster.domain.split_basis import Assessment, Evidence, assess, evidence
from backfill_dagster.domain.split_repair import BackfillState, RecordedSplit, Step, decide
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.orchestration.backfills import FINISHED
from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME, partition_key
from backfill_dagster.orchestration.resources import StoreResource
from backfill_dagster.orchestration.tags import REQUESTED_BY_TAG, SPLIT_TAG
from backfill_dagster.providers.base import Adjustment

SENSOR = "split_repair"


def backfill_state(instance: dg.DagsterInstance, backfill_id: str | None) -> BackfillState:
    backfill = instance.get_backfill(backfill_id) if backfill_id else None
    if backfill is None:
        return BackfillState.MISSING
    return BackfillState.FINISHED if backfill.status in FINISHED else BackfillState.RUNNING


def assess_split(store: StoreResource, split: RecordedSplit, calendar: SessionCalendar, history_start: date) -> Assessment:
    """The split's stale partitions from the session history_start on, judged by the ledger's
    timestamps and by the stored bars on both sides of the ex-date."""
    history = store.actions().history(split)
    around = [(split.symbol, calendar.previous_session(split.ex_date)), (split.symbol, split.ex_date)]
    bars = store.bar_store(calendar)
    seen: dict[Timeframe, Evidence] = {t: evidence(split, bars.read_bars(t, around), calendar) for t in history}
    found = assess(split, history, seen)
    stale = {t: [d for d in days if d >= history_start] for t, days in found.stale.items()}
    return Assessment(found.basis_since, {t: days for t, days in stale.items() if days}, found.why)


def launch_repair(
    instance: dg.DagsterInstance, asset_graph, split: RecordedSplit, stale: dict[Timeframe, list[date]],
    backfill_id: str, note: str,
) -> None:
    """Add the backfill of exactly these partitions of these assets, tagged with why."""
    wanted = {
        AssetKeyPartitionKey(dg.AssetKey(timeframe.asset_name), partition_key(split.symbol, session))
        for timeframe, sessions in stale.items()
        for session in sessions
    }
    subset = AssetGraphSubset.from_asset_partition_set(wanted, asset_graph)
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=backfill_id,
        backfill_timestamp=time.time(),
        tags={
            SPLIT_RATIO_TAG: ratio_text(split.ratio),
            REWRITE_REASON_TAG: repair_reason(split.symbol, split.ex_date, split.ratio),
            SPLIT_TAG: split.describe(),
            REQUESTED_BY_TAG: SENSOR,
        },
        dynamic_partitions_store=instance,
        asset_graph_subset=subset,
        title=f"split repair {split.describe()}",
        description=f"Re-fetch the history stored on the old share basis: {note}",
        run_config=None,
    )
    instance.add_backfill(backfill)


def build_split_repair_sensor(
    history_start: date, *, clock: Clock = utcnow, minimum_interval_seconds: int = 60
) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "For each split the corporate_actions table holds, re-fetches the stored partitions of its "
            "symbol before the ex-date that were fetched on the old share basis, as one backfill per "
            "split (its ratio and the reason in its tags), and marks the split repaired "
            "once the ledger shows none left."
        ),
    )
    def split_repair(context: dg.SensorEvaluationContext, store: StoreResource):
        if Adjustment.parse(store.adjustment) is Adjustment.RAW:
            return dg.SkipReason("the store keeps raw bars (BACKFILL_ADJUSTMENT=raw): a split never changes them")
        actions = store.actions()
        splits = actions.splits()
        if not splits:
            return dg.SkipReason("no split waits for a repair")
        now = clock().to_pydatetime()
        partitions = set(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
        calendar = xnys()
        lines = []
        for split in splits:
            found = assess_split(store, split, calendar, history_start) if now >= split.basis_since else None
            if found is not None and found.basis_since != split.basis_since:
                # The bars refuted the basis assumed for a split listed in the first answers: kept,
                # so partitions left after a repair stay stale even once the jump is gone.
                actions.set_basis_since(split.symbol, split.ex_date, found.basis_since, now=now)
                context.log.info(f"{split.describe()}: basis since {found.basis_since.isoformat()}: {found.why}")
            stale = found.stale if found is not None else {}
            state = backfill_state(context.instance, split.backfill_id) if split.state is RepairState.REPAIRING else None
            decision = decide(split, now=now, stale=stale, history_before=actions.history_before(split.symbol, split.ex_date),
                              backfill=state, shown=found.why if found is not None else "")
            note = decision.note
            if decision.step is Step.LAUNCH:
                if split.symbol not in partitions:
                    lines.append(f"{split.describe()}: waits for its symbol partition (is it on the watchlist?)")
                    continue
                backfill_id = make_new_backfill_id()
                # Recorded first: a tick that dies after this line never leads to a second launch.
                actions.set_repair(split.symbol, split.ex_date, RepairState.REPAIRING, now=now, note=note,
                                   backfill_id=backfill_id, attempts=split.attempts + 1)
                launch_repair(context.instance, context.repository_def.asset_graph, split, stale, backfill_id, note)
                note = f"launched backfill {backfill_id}: {note}"
            elif decision.step in (Step.WAIT, Step.FOLLOW):
                if note != split.note:
                    actions.set_repair(split.symbol, split.ex_date, split.state, now=now, note=note)
            else:
                final = {Step.REPAIRED: RepairState.REPAIRED, Step.NOT_NEEDED: RepairState.NOT_NEEDED,
                         Step.GIVE_UP: RepairState.FAILED}[decision.step]
                actions.set_repair(split.symbol, split.ex_date, final, now=now, note=note)
            lines.append(f"{split.describe()}: {note}")
            context.log.info(f"{split.describe()}: {decision.step.value}: {note}")
        return dg.SkipReason("; ".join(lines))

    return split_repair

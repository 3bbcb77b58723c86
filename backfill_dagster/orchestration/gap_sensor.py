"""The gap sensor: request range runs for every partition the coverage ledger says is missing,
partial-and-now-closed or failed, inside each timeframe's history horizon (backfill_dagster.domain.gap_planning).

Nobody has to launch anything: a symbol added to the watchlist becomes a partition (watchlist_sync)
and then a gap here, filled newest sessions first, a few runs per tick. Work is never requested
twice: partitions that any unfinished run will write are skipped, and each run's key is derived
from its box and the ledger state that made it a gap, so Dagster refuses a repeated request. A run
whose worker is gone (killed: instance/run_worker.py) writes nothing more, so it holds nothing:
its partitions are requested again while run monitoring fails the run.
"""

from datetime import date
from typing import NamedTuple

import dagster as dg

# Not exported by dagster: the statuses of backfills (UI "Materialize partitions").
from dagster._core.execution.backfill import BulkActionStatus

from backfill_dagster.domain.calendar import SessionCalendar, xnys
from backfill_dagster.domain.clock import Clock, utcnow
from backfill_dagster.domain.gap_planning import GapBox, InFlight, plan_gap_runs
from backfill_dagster.domain.gap_policy import GapPolicy, horizons, ledger_horizons, settled_sessions
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.instance.backfill_selection import BackfillSelection, backfill_selections
from backfill_dagster.instance.run_worker import worker_gone
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import (
    PartitionKeyError,
    active_partition_symbols,
    parse_partition_key,
    range_tags,
)
from backfill_dagster.orchestration.resources import StoreResource
from backfill_dagster.orchestration.tags import (
    GAPS_TAG,
    GAP_KIND_TAG,
    PARTITION_TAG,
    PRIORITY_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    REQUESTED_BY_TAG,
)
from backfill_dagster.store.gaps import find_gaps

GAP_SENSOR_NAME = "coverage_gaps"

# CANCELING too: a run being cancelled may still be writing its partitions.
IN_FLIGHT_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
IN_FLIGHT_LIMIT = 1000  # unfinished runs read per evaluation
UNFINISHED_BACKFILLS = [BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING, BulkActionStatus.FAILING]
UNFINISHED_BACKFILL_LIMIT = 100  # unfinished backfills read per evaluation

_TIMEFRAME_OF_ASSET = {dg.AssetKey(t.asset_name): t for t in Timeframe}


class Unfinished(NamedTuple):
    busy: InFlight  # what unfinished work will write
    own: int  # unfinished runs this sensor requested
    backfills: list[str]  # unfinished backfills' ids
    abandoned: dict[str, str]  # run id -> why it writes nothing more (its worker is gone)


def in_flight_partitions(
    instance: dg.DagsterInstance, partition_order: list[str], calendar: SessionCalendar, *, gone=worker_gone
) -> Unfinished:
    """What unfinished work will write: the boxes of unfinished runs (of any job, sensor, schedule
    or backfill; a run without an asset selection counts for every timeframe), and the whole of
    each timeframe an unfinished backfill covers, since its later runs do not exist yet. Also how
    many of the runs this sensor requested, the unfinished backfills' ids, and the unfinished runs
    that hold nothing because their worker is gone (`gone(tags)`: why, or None)."""
    position = {s: i for i, s in enumerate(partition_order)}
    busy = InFlight()
    backfills = []
    for backfill in unfinished_backfills(instance):
        if backfill.is_asset_backfill:
            timeframes = [_TIMEFRAME_OF_ASSET[k] for k in backfill.asset_selection or () if k in _TIMEFRAME_OF_ASSET]
        else:
            timeframes = list(Timeframe)  # a job backfill: perhaps of all_bars
        if timeframes:
            busy.hold(timeframes)
            backfills.append(backfill.backfill_id)
    own = 0
    abandoned = {}
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT_STATUSES), limit=IN_FLIGHT_LIMIT):
        tags = run.tags
        why = gone(tags)
        if why is not None:
            abandoned[run.run_id] = why
            continue
        if tags.get(REQUESTED_BY_TAG) == GAP_SENSOR_NAME:
            own += 1
        box = _run_box(tags, position, partition_order, calendar)
        if box is None:
            continue
        if run.asset_selection:
            timeframes = [_TIMEFRAME_OF_ASSET[k] for k in run.asset_selection if k in _TIMEFRAME_OF_ASSET]
        else:
            timeframes = list(Timeframe)
        busy.add(timeframes, *box)
    return Unfinished(busy, own, backfills, abandoned)


def unfinished_backfills(instance: dg.DagsterInstance) -> list[BackfillSelection]:
    """The unfinished backfills' ids and asset selections, newest first, without their partitions
    (instance/backfill_selection.py: a whole-market backfill's row is hundreds of MB deserialized)."""
    return backfill_selections(instance, UNFINISHED_BACKFILLS, UNFINISHED_BACKFILL_LIMIT)


def _run_box(tags, position, order, calendar):
    """(symbols, first session, last session) of a run's partition tags, or None."""
    try:
        if RANGE_START_TAG in tags and RANGE_END_TAG in tags:
            first = parse_partition_key(tags[RANGE_START_TAG], calendar)
            last = parse_partition_key(tags[RANGE_END_TAG], calendar)
        elif PARTITION_TAG in tags:
            first = last = parse_partition_key(tags[PARTITION_TAG], calendar)
        else:
            return None
    except PartitionKeyError:
        return None  # some other partitioning: not ours
    lo, hi = position.get(first[0]), position.get(last[0])
    if lo is None or hi is None or hi < lo or last[1] < first[1]:
        return None  # a reversed or stale range selects nothing
    return order[lo : hi + 1], first[1], last[1]


def gap_run_request(box: GapBox) -> dg.RunRequest:
    described = box.describe()
    return dg.RunRequest(
        run_key=box.run_key,
        job_name=ALL_BARS_JOB,
        asset_selection=[dg.AssetKey(t.asset_name) for t in box.kind.timeframes],
        tags={
            **range_tags(box.first, box.last),
            REQUESTED_BY_TAG: GAP_SENSOR_NAME,
            GAP_KIND_TAG: box.kind.value,
            GAPS_TAG: described[:250],
            # Recent sessions first in the run queue, after the schedules' runs (priority > 0).
            PRIORITY_TAG: str(-min(box.age, 1000)),
        },
    )


def build_gap_sensor(
    history_start: date,
    policy: GapPolicy | None = None,
    *,
    clock: Clock = utcnow,
    calendar: SessionCalendar | None = None,
    # Every 30 s: each tick requests at most the policy's asset partitions per tick (the daemon
    # creates the runs inside the tick), so a large gap is requested over several short ticks.
    minimum_interval_seconds: int = 30,
) -> dg.SensorDefinition:
    """The `coverage_gaps` sensor over sessions from `history_start` (the partitions' start)."""
    policy = policy or GapPolicy()

    @dg.sensor(
        name=GAP_SENSOR_NAME,
        job_name=ALL_BARS_JOB,
        description=(
            "Finds partitions the coverage ledger says are missing, fetched before their session "
            "closed, or failed, within each timeframe's history horizon (m15 "
            f"{policy.history_days[Timeframe.M15]} days, h1/h4 {policy.history_days[Timeframe.H1]}/"
            f"{policy.history_days[Timeframe.H4]}, d1 {policy.history_days[Timeframe.D1]}), and "
            "requests range runs for them, newest sessions first, never for partitions an "
            "unfinished run is filling."
        ),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def coverage_gaps(context: dg.SensorEvaluationContext, store: StoreResource):
        cal = calendar or xnys()
        now = clock()
        found = active_partition_symbols(context.instance, store.watchlist().active(), "cover")
        if isinstance(found, dg.SkipReason):
            return found
        symbols, order, pending = found.symbols, found.order, found.waiting
        wanted = horizons(policy, cal, now, history_start, extended=store.extended_hours)
        if not any(wanted.values()):
            return dg.SkipReason(f"no session has settled since the history start {history_start.isoformat()}")
        # h1/h4 follow stored m15 over the whole history, not only their horizon: a run that wrote
        # m15 alone (a CLI --select bars_m15, a UI backfill of m15) is derived here, without a fetch.
        settled = settled_sessions(cal, history_start, now, settle=policy.settle, extended=store.extended_hours)
        # Unfinished work first, the ledger after: a run that finishes between the two reads has
        # committed its partitions before it stopped being unfinished, so the ledger read sees them.
        # (The other order sees them missing, then the run gone: derived twice.)
        busy, own, backfills, abandoned = in_flight_partitions(context.instance, order, cal)
        gaps = find_gaps(store.bar_store(cal).engine, symbols, ledger_horizons(wanted), (settled[0], settled[-1]))
        wanted = {**wanted, **{t: settled for t in Timeframe if not t.is_fetched}}
        plan = plan_gap_runs(gaps, wanted, order, policy=policy, now=now, in_flight=busy, own_runs_in_flight=own)
        note = f"; {pending} active symbol(s) wait for their partition" if pending else ""
        if backfills:
            note += f"; backfill(s) {', '.join(backfills)} in progress: their timeframes wait for them"
        for run_id, why in abandoned.items():
            note += f"; run {run_id} holds none of its partitions, {why} (run monitoring fails it)"
        if not plan.boxes:
            if plan.later:
                return dg.SkipReason(
                    f"{plan.summary()}; {own} run(s) of this sensor unfinished, the limit is "
                    f"{policy.max_runs_in_flight}{note}"
                )
            return dg.SkipReason(f"{len(symbols)} symbol(s): {plan.summary()}{note}")
        context.log.info(f"{len(symbols)} symbol(s): {plan.summary()}{note}")
        for box in plan.boxes:
            context.log.info(f"requesting {box.describe()}")
        return [gap_run_request(box) for box in plan.boxes]

    return coverage_gaps

"""Coverage gaps: which partitions still need a run, and the fewest range runs that fill them.

Pure planning over plain values (the calendar, ledger facts, the symbol partitions' order); how far
back and how much at once is the policy (domain/gap_policy.py), the ledger queries live in
store/gaps.py and the Dagster sensor in orchestration/gap_sensor.py.

A partition (symbol x session x timeframe) inside its timeframe's history horizon is a *gap* when:
- it was never covered (no ledger row);
- it was fetched while its session was still open, and the session has since closed (partial);
- its last fetch failed;
- every provider answered without bars for the closed session (empty): re-checked a bounded number
  of times (a halted or delisted symbol really has none), spaced by `retry_empty_after`;
- (h1/h4) its m15 was fetched again after it was derived (stale).
A session fetched successfully after its close is covered, however few bars it holds: providers
omit intervals without trades, and chasing them would fetch the same bars forever (docs/design.md, "The ledger's promise").
Today's session belongs to the schedules until it has closed and settled (`GapPolicy.settle`).
Which gaps are asked for now is one rule, `select_gaps`, for the sensor and `ensure-coverage`
alike; only the policy differs, by name: an operator's request (`GapPolicy.on_request()`) asks
again at once, with no retry delay and no settle time.

Gaps become *boxes*: one contiguous range of sessions x symbols contiguous in the symbol
partitions' order, each one range run (domain/boxes.py). h1/h4 are derived from m15, so their gaps ride
in an m15 run (or, when m15 is already covered, a derive-only run that calls no provider).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

import pandas as pd

from backfill_dagster.domain.boxes import cover_with_boxes
from backfill_dagster.domain.calendar import NEW_YORK
from backfill_dagster.domain.clock import as_utc
from backfill_dagster.domain.gap_policy import GapPolicy
from backfill_dagster.domain.ledger import Partition
from backfill_dagster.domain.timeframes import Timeframe


# ---------------------------------------------------------------------------------- gaps
class GapReason(StrEnum):
    MISSING = "missing"  # never covered
    PARTIAL = "partial"  # fetched while the session was open; it has closed since
    EMPTY = "empty"  # every provider answered without bars for the closed session
    FAILED = "failed"  # the last fetch failed
    STALE = "stale"  # h1/h4 derived from an m15 fetch that has been replaced since


@dataclass(frozen=True)
class Gap:
    reason: GapReason
    stamp: datetime | None = None  # when its ledger row was last written; None when there is none
    attempts: int = 0  # consecutive attempts that ended in this status


# Module constants: attribute lookups on enums are slow in hot loops.
_FAILED, _EMPTY = GapReason.FAILED, GapReason.EMPTY
NEVER_COVERED = Gap(GapReason.MISSING)  # shared: most gaps of a new symbol are this one value

LedgerGaps = Mapping[Timeframe, Mapping[Partition, Gap]]


class RunKind(StrEnum):
    """What a gap run materializes."""

    INTRADAY = "intraday"  # fetch m15 and derive h1/h4 from it, in one run
    DERIVED = "derived"  # m15 is covered: derive h1/h4 only, no provider call
    DAILY = "daily"  # fetch d1

    @property
    def timeframes(self) -> tuple[Timeframe, ...]:
        return _KIND_TIMEFRAMES[self]


_KIND_TIMEFRAMES = {
    RunKind.INTRADAY: (Timeframe.M15, Timeframe.H1, Timeframe.H4),
    RunKind.DERIVED: (Timeframe.H1, Timeframe.H4),
    RunKind.DAILY: (Timeframe.D1,),
}
_KIND_ORDER = {kind: i for i, kind in enumerate(RunKind)}


class InFlight:
    """Partitions that unfinished work will write, per timeframe: a run's box is kept as session
    intervals per symbol, so a run over thousands of partitions costs a few entries; a timeframe
    can also be held whole (a backfill whose runs are not all launched yet)."""

    def __init__(self) -> None:
        self._boxes: dict[Timeframe, dict[str, list[tuple[date, date]]]] = defaultdict(lambda: defaultdict(list))
        self._whole: set[Timeframe] = set()

    def hold(self, timeframes: Iterable[Timeframe]) -> None:
        """Treat every partition of these timeframes as in flight."""
        self._whole.update(timeframes)

    def holds(self, timeframe: Timeframe) -> bool:
        return timeframe in self._whole

    def add(self, timeframes: Iterable[Timeframe], symbols: Iterable[str], first: date, last: date) -> None:
        symbols = list(symbols)
        for timeframe in timeframes:
            for symbol in symbols:
                self._boxes[timeframe][symbol].append((first, last))

    def covers(self, timeframe: Timeframe, partition: Partition) -> bool:
        if timeframe in self._whole:
            return True
        return self.in_box(timeframe, partition)

    def in_box(self, timeframe: Timeframe, partition: Partition) -> bool:
        """Whether an unfinished run's box holds the partition (a held timeframe aside)."""
        symbol, session = partition
        return any(lo <= session <= hi for lo, hi in self._boxes.get(timeframe, {}).get(symbol, ()))

    def symbols(self, timeframe: Timeframe) -> set[str]:
        """Symbols with any partition of this timeframe in flight."""
        return set(self._boxes.get(timeframe, {}))


@dataclass(frozen=True)
class GapBox:
    """One range run: sessions x symbols (contiguous in the partitions' order) of one kind."""

    kind: RunKind
    symbols: tuple[str, ...]
    sessions: tuple[date, ...]
    digest: str  # the ledger state that made these partitions gaps
    age: int  # sessions between this box's newest session and the newest settled one
    reasons: Mapping[str, int]  # "m15 missing" -> partitions

    @property
    def first(self) -> Partition:
        return self.symbols[0], self.sessions[0]

    @property
    def last(self) -> Partition:
        return self.symbols[-1], self.sessions[-1]

    @property
    def size(self) -> int:
        return len(self.symbols) * len(self.sessions)

    @property
    def run_key(self) -> str:
        """Deterministic: the same box with the same ledger state always gets the same key."""
        return (
            f"gaps:{self.kind.value}:{self.sessions[0].isoformat()}..{self.sessions[-1].isoformat()}:"
            f"{self.symbols[0]}..{self.symbols[-1]}:{self.digest}"
        )

    def describe(self) -> str:
        what = ", ".join(f"{n} {r}" for r, n in sorted(self.reasons.items()))
        return (
            f"{self.kind.value} {self.symbols[0]}..{self.symbols[-1]} ({len(self.symbols)}) x "
            f"{self.sessions[0].isoformat()}..{self.sessions[-1].isoformat()} ({len(self.sessions)}): {what}"
        )


@dataclass(frozen=True)
class GapPlan:
    boxes: list[GapBox]  # to request now, newest sessions first
    later: int  # boxes left for later evaluations (the per-tick and in-flight caps)
    gaps: Mapping[Timeframe, Mapping[GapReason, int]]  # every gap found, per timeframe and reason
    in_flight: int  # gaps an unfinished run is already filling
    held: int  # failed or empty partitions waiting for their retry delay
    waiting_for_m15: int  # h1/h4 gaps whose m15 is in flight or held
    exhausted: int = 0  # empty partitions re-checked `empty_attempts` times: left alone
    behind_backfills: int = 0  # gaps no run is filling, in a timeframe an unfinished backfill holds

    @property
    def total_gaps(self) -> int:
        return sum(sum(r.values()) for r in self.gaps.values())

    def summary(self) -> str:
        if not self.total_gaps:
            return "no gaps: every partition in the horizon is covered"
        found = "; ".join(
            f"{t.value} " + ", ".join(f"{n} {r.value}" for r, n in sorted(reasons.items()))
            for t, reasons in self.gaps.items()
            if reasons
        )
        parts = [f"{self.total_gaps} gap(s) ({found})"]
        if self.boxes:
            parts.append(f"requesting {len(self.boxes)} run(s)")
        if self.later:
            parts.append(f"{self.later} more run(s) left for later ticks")
        if self.in_flight:
            parts.append(f"{self.in_flight} already being filled by unfinished runs")
        if self.behind_backfills:
            parts.append(f"{self.behind_backfills} in timeframes an unfinished backfill holds: left until it ends")
        if self.held:
            parts.append(f"{self.held} failed or empty partition(s) waiting for their retry delay")
        if self.exhausted:
            parts.append(f"{self.exhausted} empty partition(s) left alone after every provider answered "
                         "without bars each time (halted or delisted?)")
        if self.waiting_for_m15:
            parts.append(f"{self.waiting_for_m15} h1/h4 gap(s) waiting for their m15")
        return "; ".join(parts)


@dataclass(frozen=True)
class GapSelection:
    """The gaps to ask for now, by the kind of run that fills them, and why the others wait."""

    intraday: set[Partition]  # fetch m15 (and derive h1/h4 from it, in the same run)
    derived: set[Partition]  # m15 is covered: derive h1/h4 only
    daily: set[Partition]  # fetch d1
    gaps: Mapping[Timeframe, Mapping[GapReason, int]]  # every gap found, per timeframe and reason
    in_flight: int  # gaps an unfinished run is already filling
    held: int  # failed or empty partitions waiting for their retry delay
    waiting_for_m15: int  # h1/h4 gaps whose m15 is in flight or held
    exhausted: int  # empty partitions re-checked `empty_attempts` times: left alone
    behind_backfills: int = 0  # gaps no run is filling, in a timeframe an unfinished backfill holds

    @property
    def partitions(self) -> set[Partition]:
        """Every partition asked for, whatever its run kind."""
        return self.intraday | self.derived | self.daily

    def of(self, kind: RunKind) -> set[Partition]:
        return {RunKind.INTRADAY: self.intraday, RunKind.DERIVED: self.derived, RunKind.DAILY: self.daily}[kind]


def select_gaps(
    gaps: LedgerGaps,
    wanted: Mapping[Timeframe, Sequence[date]],
    *,
    policy: GapPolicy,
    now: pd.Timestamp,
    in_flight: InFlight | None = None,
) -> GapSelection:
    """THE rule for which gaps are asked for now, shared by the gap sensor and `ensure-coverage`
    (`GapPolicy.on_request()`): what differs between them is only the policy's waits.

    Of the gaps in `wanted` (per timeframe, the sessions asked for): empty partitions re-checked
    `policy.empty_attempts` times are left alone, and so are empty ones until `retry_empty_after` has
    passed since the last answer; h1/h4 rows empty because their m15 is empty follow it (stale when
    it changes); gaps that unfinished work covers wait for it; failed partitions wait
    `retry_failed_after`. An h1/h4 gap whose m15 is a gap too is filled in one run with it, when
    that m15 gap may be asked for now.
    """
    now = as_utc(now)
    in_flight = in_flight or InFlight()
    horizon = {t: set(wanted.get(t, ())) for t in Timeframe}
    counts: dict[Timeframe, dict[GapReason, int]] = {t: defaultdict(int) for t in Timeframe}
    busy = held = exhausted = behind = 0

    retry_before = (now - pd.Timedelta(policy.retry_failed_after)).to_pydatetime()
    empty_before = (now - pd.Timedelta(policy.retry_empty_after)).to_pydatetime()

    def gaps_to_request(timeframe: Timeframe) -> dict[Partition, Gap]:
        # Called on every gap of the horizon (a million for 500 new symbols): keep it lean.
        nonlocal busy, held, exhausted, behind
        out = {}
        days = horizon[timeframe]
        if not days:
            return out
        held_whole = in_flight.holds(timeframe)
        busy_symbols = in_flight.symbols(timeframe)
        tally = counts[timeframe]
        derived = not timeframe.is_fetched
        for partition, gap in gaps.get(timeframe, {}).items():
            if partition[1] not in days:
                continue
            tally[gap.reason] += 1
            if gap.reason is _EMPTY:
                # h1/h4 are empty because their m15 is: they follow it (stale) when it changes.
                if derived or gap.attempts >= policy.empty_attempts:
                    exhausted += not derived
                    continue
                if gap.stamp is not None and gap.stamp > empty_before:
                    held += 1
                    continue
            if partition[0] in busy_symbols and in_flight.in_box(timeframe, partition):
                busy += 1
            elif held_whole:
                # A backfill holds the whole timeframe (its later runs do not exist yet), but only
                # the partitions of its runs are being filled: the others only wait for it to end.
                behind += 1
            elif gap.stamp is not None and gap.reason is _FAILED and gap.stamp > retry_before:
                held += 1
            else:
                out[partition] = gap
        return out

    m15 = gaps_to_request(Timeframe.M15)
    derived_needs = set(gaps_to_request(Timeframe.H1)) | set(gaps_to_request(Timeframe.H4))
    m15_gaps = gaps.get(Timeframe.M15, {})
    intraday = set(m15)
    derived: set[Partition] = set()
    waiting = 0
    for partition in derived_needs:
        gap = m15_gaps.get(partition)
        if gap is None:
            derived.add(partition)  # m15 is covered: derive only
        elif _m15_ready(partition, gap, in_flight, policy, now):
            intraday.add(partition)  # m15 must be fetched first, in the same run
        else:
            waiting += 1
    return GapSelection(
        intraday=intraday,
        derived=derived,
        daily=set(gaps_to_request(Timeframe.D1)),
        gaps={t: dict(c) for t, c in counts.items()},
        in_flight=busy,
        held=held,
        waiting_for_m15=waiting,
        exhausted=exhausted,
        behind_backfills=behind,
    )


def plan_gap_runs(
    gaps: LedgerGaps,
    wanted: Mapping[Timeframe, Sequence[date]],
    partition_order: Sequence[str],
    *,
    policy: GapPolicy,
    now: pd.Timestamp,
    in_flight: InFlight | None = None,
    own_runs_in_flight: int = 0,
) -> GapPlan:
    """Turn ledger gaps into the range runs to request now, newest sessions first.

    `gaps` must hold the ledger's gaps over `ledger_horizons(wanted)`: m15 is read over the h1/h4
    horizons too, because an h1/h4 gap whose m15 is missing needs m15 fetched in the same run (m15
    gaps beyond m15's own horizon are fetched only for that). Which gaps are asked for now is
    `select_gaps`.
    """
    chosen = select_gaps(gaps, wanted, policy=policy, now=now, in_flight=in_flight)
    sessions = sorted(set().union(*(set(wanted.get(t, ())) for t in Timeframe)))
    index = {d: i for i, d in enumerate(sessions)}
    position = {s: i for i, s in enumerate(partition_order)}
    newest = len(sessions) - 1
    planned = [
        (newest - hi, _KIND_ORDER[kind], position[symbols[0]], kind, symbols, lo, hi)
        for kind in RunKind
        for symbols, lo, hi in _boxes(chosen.of(kind), index, position, policy)
    ]
    planned.sort(key=lambda p: p[:3])
    slots = max(0, min(policy.max_runs_per_tick, policy.max_runs_in_flight - own_runs_in_flight))
    now_boxes = _within_budget(planned[:slots], policy.max_asset_partitions_per_tick)
    return GapPlan(
        # Only the boxes requested now get their key computed: it reads every partition's state.
        boxes=[_box(kind, symbols, tuple(sessions[lo : hi + 1]), age, gaps, now)
               for age, _, _, kind, symbols, lo, hi in now_boxes],
        later=len(planned) - len(now_boxes),
        gaps=chosen.gaps,
        in_flight=chosen.in_flight,
        held=chosen.held,
        waiting_for_m15=chosen.waiting_for_m15,
        exhausted=chosen.exhausted,
        behind_backfills=chosen.behind_backfills,
    )


def _within_budget(planned: list, budget: int) -> list:
    """The leading boxes whose asset partitions (symbols x sessions x the kind's assets) fit in
    `budget`, newest first as planned; the first box always goes, however large."""
    taken, used = [], 0
    for entry in planned:
        kind, symbols, lo, hi = entry[3:]
        size = len(symbols) * (hi - lo + 1) * len(kind.timeframes)
        if taken and used + size > budget:
            break
        taken.append(entry)
        used += size
    return taken


def _m15_ready(partition: Partition, gap: Gap, in_flight: InFlight, policy: GapPolicy, now) -> bool:
    """Whether an h1/h4 gap may fetch its m15 gap in the same run now."""
    if in_flight.covers(Timeframe.M15, partition):
        return False
    if gap.reason is GapReason.EMPTY:
        if gap.attempts >= policy.empty_attempts:
            return False
        return not (gap.stamp and now - as_utc(gap.stamp) < policy.retry_empty_after)
    return not (gap.reason is GapReason.FAILED and gap.stamp and now - as_utc(gap.stamp) < policy.retry_failed_after)


def _boxes(
    parts: Iterable[Partition], index: Mapping[date, int], position: Mapping[str, int], policy: GapPolicy
) -> list[tuple[list[str], int, int]]:
    """Cover partitions exactly with boxes (boxes.cover_with_boxes): chunks of at most
    max_sessions_per_run sessions, up to max_partitions_per_run partitions a box."""
    by_symbol: dict[int, list[int]] = defaultdict(list)
    for symbol, session in parts:
        by_symbol[position[symbol]].append(index[session])
    order = sorted(position, key=position.__getitem__)
    return [
        (order[first : last + 1], lo, hi)
        for first, last, lo, hi in cover_with_boxes(
            by_symbol, max_cells=policy.max_partitions_per_run, max_columns=policy.max_sessions_per_run
        )
    ]


def _box(kind: RunKind, symbols: list[str], days: tuple[date, ...], age: int, gaps: LedgerGaps, now) -> GapBox:
    # The key hashes the gaps' state, and the day: a box whose run died without writing anything
    # keeps its state, and Dagster refuses a run key it has seen, so such a box is retried once a
    # day at most (instance run_retries handle crashed runs sooner).
    state = [as_utc(now).tz_convert(NEW_YORK).date().isoformat()]
    reasons: dict[str, int] = defaultdict(int)
    for timeframe in kind.timeframes:
        table = gaps.get(timeframe, {})
        for symbol in symbols:
            for day in days:
                gap = table.get((symbol, day))
                if gap is not None:
                    reasons[f"{timeframe} {gap.reason}"] += 1
                    state.append(f"{timeframe}|{symbol}|{day}|{gap.reason}|{gap.stamp}")
    digest = hashlib.sha1(";".join(state).encode()).hexdigest()[:16]
    return GapBox(kind, tuple(symbols), days, digest, age, dict(reasons))

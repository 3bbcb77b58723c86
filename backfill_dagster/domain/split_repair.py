"""What the split repair does next for one recorded split (pure; the sensor in
orchestration/split_repair.py applies it).

The store stays split-adjusted, so a split makes every stored partition of its symbol before the
ex-date stale that was fetched before providers re-based that history (`basis_since`). Those
partitions, and only those, are fetched again — m15 and d1 from the providers, h1/h4 derived in the
same runs — as one Dagster backfill per split. The split is repaired when that backfill has
finished and the ledger shows no stale partition left; a backfill that ends with some left is
followed by another over what is left, up to `MAX_ATTEMPTS`, then the split is `failed` with them
named (e.g. sessions no configured provider serves any more).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from fractions import Fraction

from backfill_dagster.domain.corporate_actions import RepairState, ratio_text
from backfill_dagster.domain.timeframes import Timeframe

MAX_ATTEMPTS = 3  # backfills launched for one split before it is left `failed`


@dataclass(frozen=True)
class RecordedSplit:
    """A split as the corporate_actions table holds it."""

    symbol: str
    ex_date: date
    split_from: int
    split_to: int
    source: str
    first_seen: datetime
    basis_since: datetime
    state: RepairState
    backfill_id: str | None = None
    attempts: int = 0
    note: str | None = None

    @property
    def ratio(self) -> Fraction:
        return Fraction(self.split_to, self.split_from)

    def describe(self) -> str:
        return f"{self.symbol} {ratio_text(self.ratio)} ex {self.ex_date.isoformat()}"


class BackfillState(StrEnum):
    MISSING = "missing"  # no such backfill in the instance (never added, or deleted)
    RUNNING = "running"
    FINISHED = "finished"  # completed, failed or canceled: the ledger tells what it did


class Step(StrEnum):
    WAIT = "wait"  # nothing to do yet
    LAUNCH = "launch"  # a backfill of the stale partitions
    FOLLOW = "follow"  # its backfill runs
    REPAIRED = "repaired"
    NOT_NEEDED = "not_needed"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Decision:
    step: Step
    note: str


def stale_summary(stale: dict[Timeframe, list[date]]) -> str:
    parts = [f"{t.value} {len(days)} ({days[0].isoformat()}..{days[-1].isoformat()})"
             for t, days in sorted(stale.items(), key=lambda kv: list(Timeframe).index(kv[0])) if days]
    return ", ".join(parts) if parts else "none"


def decide(
    split: RecordedSplit,
    *,
    now: datetime,
    stale: dict[Timeframe, list[date]],
    history_before: int,
    backfill: BackfillState | None,
    max_attempts: int = MAX_ATTEMPTS,
    shown: str = "",
) -> Decision:
    """The next step for a split in state pending or repairing. `stale`: its stale partitions now;
    `history_before`: ledger rows with bars before its ex-date (any basis); `backfill`: the state of
    the backfill on its row, if any; `shown`: what the stored bars show at the ex-date
    (domain/split_basis.py), said in the note."""
    count = sum(len(days) for days in stale.values())
    because = f" ({shown})" if shown else ""
    if split.state is RepairState.PENDING:
        if now < split.basis_since:
            return Decision(Step.WAIT, f"effective {split.ex_date.isoformat()}: providers re-base the history "
                                       "on its ex-date, the repair starts then")
        if not count:
            if not history_before:
                return Decision(Step.NOT_NEEDED, "no history stored before the ex-date")
            return Decision(Step.NOT_NEEDED, f"the {history_before} partition(s) before the ex-date were fetched "
                                             f"after the providers re-based them{because}")
        return Decision(Step.LAUNCH, f"{count} stale partition(s): {stale_summary(stale)}{because}")
    if split.state is not RepairState.REPAIRING:
        raise ValueError(f"split {split.describe()} is {split.state.value}: nothing to decide")
    if backfill is BackfillState.RUNNING:
        return Decision(Step.FOLLOW, f"backfill {split.backfill_id} re-fetches {count} partition(s)")
    if not count:
        return Decision(Step.REPAIRED, f"backfill {split.backfill_id} finished; no partition left on the old basis{because}")
    if split.attempts >= max_attempts:
        return Decision(Step.GIVE_UP, f"{count} partition(s) still on the old basis after {split.attempts} "
                                      f"backfill(s): {stale_summary(stale)}{because}")
    why = "was not found" if backfill is BackfillState.MISSING else "finished"
    return Decision(Step.LAUNCH, f"backfill {split.backfill_id} {why} with {count} partition(s) left: "
                                 f"{stale_summary(stale)}{because}")

"""The split repair's decisions: wait for the ex-date, launch over what is stale, follow the
backfill, finish when nothing is stale, try again a bounded number of times."""

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from backfill_dagster.domain.corporate_actions import RepairState, ex_date_start
from backfill_dagster.domain.split_repair import BackfillState, RecordedSplit, Step, decide
from backfill_dagster.domain.timeframes import Timeframe

EX = date(2024, 6, 10)
SEEN = datetime(2024, 5, 22, 12, tzinfo=UTC)
SPLIT = RecordedSplit("NVDA", EX, 1, 10, "alpaca", SEEN, ex_date_start(EX), RepairState.PENDING)
STALE = {Timeframe.M15: [date(2024, 6, 6), date(2024, 6, 7)], Timeframe.D1: [date(2024, 6, 7)]}


def test_a_split_seen_before_its_ex_date_waits_for_it():
    decision = decide(SPLIT, now=SEEN + timedelta(days=1), stale=STALE, history_before=3, backfill=None)
    assert decision.step is Step.WAIT and "effective 2024-06-10" in decision.note


def test_on_its_ex_date_the_stale_partitions_are_launched():
    decision = decide(SPLIT, now=ex_date_start(EX), stale=STALE, history_before=3, backfill=None)
    assert (decision.step, decision.note) == (Step.LAUNCH, "3 stale partition(s): m15 2 (2024-06-06..2024-06-07), d1 1 (2024-06-07..2024-06-07)")


@pytest.mark.parametrize("history, note", [(0, "no history stored before the ex-date"),
                                          (7, "the 7 partition(s) before the ex-date were fetched after the providers re-based them")])
def test_nothing_stale_is_no_work(history, note):
    decision = decide(SPLIT, now=ex_date_start(EX), stale={}, history_before=history, backfill=None)
    assert (decision.step, decision.note) == (Step.NOT_NEEDED, note)


def test_a_running_backfill_is_followed_and_a_finished_one_judged_by_the_ledger():
    repairing = replace(SPLIT, state=RepairState.REPAIRING, backfill_id="bf1", attempts=1)
    now = ex_date_start(EX) + timedelta(hours=1)
    assert decide(repairing, now=now, stale=STALE, history_before=3, backfill=BackfillState.RUNNING).step is Step.FOLLOW
    assert decide(repairing, now=now, stale={}, history_before=3, backfill=BackfillState.FINISHED).step is Step.REPAIRED
    again = decide(repairing, now=now, stale=STALE, history_before=3, backfill=BackfillState.FINISHED)
    assert again.step is Step.LAUNCH and again.note.startswith("backfill bf1 finished with 3 partition(s) left")
    lost = decide(repairing, now=now, stale=STALE, history_before=3, backfill=BackfillState.MISSING)
    assert lost.step is Step.LAUNCH and "was not found" in lost.note
    spent = decide(replace(repairing, attempts=3), now=now, stale=STALE, history_before=3, backfill=BackfillState.FINISHED)
    assert spent.step is Step.GIVE_UP and spent.note.startswith("3 partition(s) still on the old basis after 3 backfill(s)")


def test_a_finished_repair_is_not_decided_again():
    with pytest.raises(ValueError, match="NVDA 10:1 ex 2024-06-10 is repaired"):
        decide(replace(SPLIT, state=RepairState.REPAIRED), now=SEEN, stale={}, history_before=0, backfill=None)

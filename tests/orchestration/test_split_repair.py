"""The split_repair sensor on a real instance and store: one backfill per split over exactly its
stale partitions, tagged with the override and the reason; followed, never launched twice;
finished when the ledger shows nothing stale; no work without history; a raw store left alone."""

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from dagster._core.execution.backfill import BulkActionStatus

from backfill_dagster.domain.corporate_actions import RepairState, split_record
from backfill_dagster.domain.ledger import REPLACE_FEWER_TAG, REWRITE_REASON_TAG
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.orchestration.resources import StoreResource
from backfill_dagster.orchestration.split_repair import build_split_repair_sensor
from backfill_dagster.orchestration.tags import SPLIT_TAG
from backfill_dagster.store import BarStore, shared_engine
from backfill_dagster.store.actions import ActionStore
from backfill_dagster.store.schema import bar_coverage
from tests.orchestration.conftest import add_symbols

EX = date(2024, 11, 27)
SEEN = datetime(2024, 12, 3, 12, tzinfo=UTC)  # the split shows up after its ex-date
NOW = pd.Timestamp("2024-12-03 13:00", tz="UTC")
HISTORY_START = date(2024, 1, 1)


def ledger(url, symbol, rows):
    """(timeframe, session, fetched_at) rows with bars."""
    with shared_engine(url).begin() as conn:
        conn.execute(sa.insert(bar_coverage), [
            {"symbol": symbol, "timeframe": tf, "session": d, "status": "complete", "bars": 26, "expected": 26,
             "provider": "alpaca:sip", "fetched_at": at, "session_closed": True, "attempts": 1, "updated_at": at}
            for tf, d, at in rows])


def announce(url, symbol="AAPL", ex=EX, old=1, new=4):
    store = ActionStore(shared_engine(url))
    store.record("alpaca", [symbol], [], checked_from=HISTORY_START, checked_through=date(2025, 3, 1),
                 now=SEEN - timedelta(days=30), preference=["alpaca"])
    store.record("alpaca", [symbol], [split_record(symbol, ex, "alpaca", old, new)], checked_from=HISTORY_START,
                 checked_through=date(2025, 3, 1), now=SEEN, preference=["alpaca"])
    return store


def tick(defs, instance, url, now=NOW, **store):
    sensor = build_split_repair_sensor(HISTORY_START, clock=lambda: now)
    context = dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def(),
                                      resources={"store": StoreResource(database_url=url, **store)})
    return sensor(context)


def test_a_split_launches_one_backfill_of_exactly_its_stale_partitions_and_is_followed_to_the_end(
    defs, instance, store_url
):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    before, after = SEEN - timedelta(days=5), SEEN + timedelta(minutes=5)
    ledger(store_url, "AAPL", [("m15", date(2024, 11, 25), before), ("m15", date(2024, 11, 26), before),
                               ("d1", date(2024, 11, 26), before), ("d1", date(2024, 11, 25), after),
                               ("m15", EX, before), ("d1", date(2023, 12, 29), before)])  # before the partitions
    ledger(store_url, "MSFT", [("m15", date(2024, 11, 26), before)])
    actions = announce(store_url)

    first = tick(defs, instance, store_url)
    (backfill,) = instance.get_backfills()
    (split,) = actions.splits()
    assert split.state is RepairState.REPAIRING and split.backfill_id == backfill.backfill_id and split.attempts == 1
    assert f"launched backfill {backfill.backfill_id}: 3 stale partition(s): m15 2 (2024-11-25..2024-11-26), " \
           "d1 1 (2024-11-26..2024-11-26)" in first.skip_message
    target = backfill.asset_backfill_data.target_subset
    assert {(k.asset_key.to_user_string(), k.partition_key) for k in target.iterate_asset_partitions()} == {
        ("bars_m15", "2024-11-25|AAPL"), ("bars_m15", "2024-11-26|AAPL"), ("bars_d1", "2024-11-26|AAPL")}
    assert backfill.tags[REPLACE_FEWER_TAG] == "true" and backfill.tags[SPLIT_TAG] == "AAPL 4:1 ex 2024-11-27"
    assert backfill.tags[REWRITE_REASON_TAG] == "split 4:1 of AAPL ex 2024-11-27: re-fetched on the new share basis"
    assert backfill.title == "split repair AAPL 4:1 ex 2024-11-27"

    # Unfinished: followed, not launched again, tick after tick.
    for _ in range(2):
        assert "re-fetches 3 partition(s)" in tick(defs, instance, store_url).skip_message
    assert len(instance.get_backfills()) == 1

    # Finished, but the ledger still shows stale partitions (they failed): launched once more.
    instance.update_backfill(backfill.with_status(BulkActionStatus.COMPLETED_FAILED))
    tick(defs, instance, store_url)
    assert len(instance.get_backfills()) == 2 and actions.splits()[0].attempts == 2
    # The second one re-fetched them: repaired.
    with shared_engine(store_url).begin() as conn:
        conn.execute(sa.update(bar_coverage).where(bar_coverage.c.symbol == "AAPL").values(fetched_at=after))
    latest = instance.get_backfill(actions.splits()[0].backfill_id)
    instance.update_backfill(latest.with_status(BulkActionStatus.COMPLETED_SUCCESS))
    assert "no partition left on the old basis" in tick(defs, instance, store_url).skip_message
    (done,) = actions.splits(states=[RepairState.REPAIRED])
    assert done.attempts == 2 and isinstance(tick(defs, instance, store_url), dg.SkipReason)
    assert len(instance.get_backfills()) == 2


def test_a_repair_that_keeps_failing_gives_up_naming_what_is_left(defs, instance, store_url):
    add_symbols(instance, store_url, ["AAPL"])
    ledger(store_url, "AAPL", [("d1", date(2024, 11, 26), SEEN - timedelta(days=5))])
    actions = announce(store_url)
    for _ in range(3):
        tick(defs, instance, store_url)
        backfill = instance.get_backfill(actions.splits()[0].backfill_id)
        instance.update_backfill(backfill.with_status(BulkActionStatus.COMPLETED_FAILED))
    tick(defs, instance, store_url)
    (failed,) = actions.splits(states=[RepairState.FAILED])
    assert failed.note == "1 partition(s) still on the old basis after 3 backfill(s): d1 1 (2024-11-26..2024-11-26)"
    assert len(instance.get_backfills()) == 3


def test_no_history_before_the_ex_date_is_no_work(defs, instance, store_url):
    add_symbols(instance, store_url, ["AAPL"])
    ledger(store_url, "AAPL", [("m15", EX, SEEN - timedelta(days=5)), ("d1", date(2024, 11, 29), SEEN)])
    actions = announce(store_url)
    assert "no history stored before the ex-date" in tick(defs, instance, store_url).skip_message
    assert instance.get_backfills() == [] and actions.splits(states=[RepairState.NOT_NEEDED])


def test_a_split_seen_before_its_ex_date_waits_for_it(defs, instance, store_url):
    add_symbols(instance, store_url, ["AAPL"])
    ledger(store_url, "AAPL", [("d1", date(2024, 11, 26), SEEN - timedelta(days=5))])
    announce(store_url, ex=date(2024, 12, 10))
    assert "effective 2024-12-10" in tick(defs, instance, store_url).skip_message
    assert instance.get_backfills() == []
    tick(defs, instance, store_url, now=pd.Timestamp("2024-12-10 05:00", tz="UTC"))  # 00:00 New York
    assert len(instance.get_backfills()) == 1


def test_a_symbol_off_the_watchlist_waits_and_a_raw_store_needs_nothing(defs, instance, store_url):
    ledger(store_url, "AAPL", [("d1", date(2024, 11, 26), SEEN - timedelta(days=5))])
    announce(store_url)
    assert "waits for its symbol partition" in tick(defs, instance, store_url).skip_message
    raw = tick(defs, instance, store_url, adjustment="raw")
    assert "raw bars" in raw.skip_message and instance.get_backfills() == []


def test_a_run_tagged_with_a_reason_records_it_for_every_timeframe(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL"])
    days = calendar.sessions("2024-11-25", "2024-11-26")
    reason = "split 4:1 of AAPL ex 2024-11-27: re-fetched on the new share basis"
    result = defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
        instance=instance, tags={**range_tags(("AAPL", days[0]), ("AAPL", days[-1])), REWRITE_REASON_TAG: reason})
    assert result.success
    ledger_rows = BarStore(shared_engine(store_url)).coverage(symbols=["AAPL"])
    assert len(ledger_rows) == 8 and set(ledger_rows.rewrite_reason) == {reason}


def test_the_gap_sensor_leaves_a_repair_in_flight_alone(defs, instance, store_url, calendar):
    """While a repair's backfill is unfinished, the gap sensor counts every timeframe it covers as
    in flight (its later runs do not exist yet), so it never fetches those partitions too."""
    from backfill_dagster.orchestration.gap_sensor import in_flight_partitions

    add_symbols(instance, store_url, ["AAPL"])
    ledger(store_url, "AAPL", [("m15", date(2024, 11, 26), SEEN - timedelta(days=5)),
                               ("d1", date(2024, 11, 26), SEEN - timedelta(days=5))])
    announce(store_url)
    tick(defs, instance, store_url)
    busy, _, backfills, _ = in_flight_partitions(instance, ["AAPL"], calendar)
    assert backfills == [ActionStore(shared_engine(store_url)).splits()[0].backfill_id]
    assert all(busy.covers(t, ("AAPL", date(2024, 11, 26))) for t in (Timeframe.M15, Timeframe.D1))

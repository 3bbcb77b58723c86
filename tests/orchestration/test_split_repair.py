"""The split_repair sensor on a real instance and store: one backfill per split over exactly its
stale partitions, tagged with the override and the reason; followed, never launched twice;
finished when the ledger shows nothing stale; no work without history; a raw store left alone."""

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pandas as pd
import sqlalchemy as sa
from dagster._core.execution.backfill import BulkActionStatus

from backfill_dagster.domain.corporate_actions import RepairState, split_record
from backfill_dagster.domain.ledger import REPLACE_FEWER_TAG, REWRITE_REASON_TAG, SPLIT_RATIO_TAG
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.orchestration.resources import StoreResource
from backfill_dagster.orchestration.split_repair import build_split_repair_sensor
from backfill_dagster.orchestration.tags import SPLIT_TAG
from backfill_dagster.store import BarStore, shared_engine
from backfill_dagster.store.bars import CoverageEntry
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


def daily_bars(url, symbol, closes: dict, fetched_at):
    """Stored d1 bars (open = close), fetched at `fetched_at`, with their ledger rows."""
    bars = pd.DataFrame({"symbol": symbol, "ts": [pd.Timestamp(d).tz_localize("America/New_York").tz_convert("UTC")
                                                  for d in closes],
                         "open": list(closes.values()), "high": list(closes.values()), "low": list(closes.values()),
                         "close": list(closes.values()), "volume": 1e6})
    BarStore(shared_engine(url)).replace_partitions(
        Timeframe.D1, bars, [CoverageEntry(symbol, d, 1, 1, True) for d in closes],
        provider="alpaca:sip", adjustment="split", fetched_at=pd.Timestamp(fetched_at))


def announce_first(url, symbol="AAPL", ex=EX, old=1, new=4):
    """The split in the first answers ever given about the symbol: history, as far as dates go."""
    store = ActionStore(shared_engine(url))
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
    assert backfill.tags[SPLIT_RATIO_TAG] == "4:1" and backfill.tags[SPLIT_TAG] == "AAPL 4:1 ex 2024-11-27"
    assert REPLACE_FEWER_TAG not in backfill.tags  # never "any answer": only what the new basis explains
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
    busy, _, backfills = in_flight_partitions(instance, ["AAPL"], calendar)
    assert backfills == [ActionStore(shared_engine(store_url)).splits()[0].backfill_id]
    assert all(busy.covers(t, ("AAPL", date(2024, 11, 26))) for t in (Timeframe.M15, Timeframe.D1))


def test_a_split_in_the_first_answers_is_repaired_when_the_stored_bars_jump_at_its_ex_date(defs, instance, store_url):
    """Bars stored after the ex-date but before any provider was asked about the symbol's actions:
    by the dates alone they are on the new basis, but they jump by the ratio at the ex-date, so the
    history before it is stale and is re-fetched, and the split is never marked not_needed."""
    add_symbols(instance, store_url, ["AAPL"])
    after_ex = SEEN - timedelta(days=2)  # the ex-date had passed; the provider had not re-based yet
    daily_bars(store_url, "AAPL", {date(2024, 11, 25): 400.0, date(2024, 11, 26): 404.0, EX: 101.5,
                                   date(2024, 11, 29): 102.0}, after_ex)
    actions = announce_first(store_url)
    (split,) = actions.splits()
    assert split.basis_since < after_ex  # what the dates alone say: fetched on the new basis

    message = tick(defs, instance, store_url).skip_message
    (backfill,) = instance.get_backfills()
    (split,) = actions.splits()
    assert split.state is RepairState.REPAIRING and split.basis_since == SEEN
    assert "2 stale partition(s): d1 2 (2024-11-25..2024-11-26)" in message
    assert "the stored d1 bars jump at the ex-date (close 404 on 2024-11-26 -> open 101.5, 4:1)" in message
    assert {k.partition_key for k in backfill.asset_backfill_data.target_subset.iterate_asset_partitions()} == {
        "2024-11-25|AAPL", "2024-11-26|AAPL"}

    # Re-fetched on the new basis (no jump left): repaired.
    daily_bars(store_url, "AAPL", {date(2024, 11, 25): 100.0, date(2024, 11, 26): 101.0}, NOW + timedelta(minutes=1))
    instance.update_backfill(backfill.with_status(BulkActionStatus.COMPLETED_SUCCESS))
    later = NOW + timedelta(minutes=5)
    assert "no partition left on the old basis (the stored d1 bars run on across the ex-date)" in tick(
        defs, instance, store_url, now=later).skip_message
    assert actions.splits(states=[RepairState.REPAIRED])


def test_a_split_in_the_first_answers_over_bars_that_run_on_is_not_needed_and_says_why(defs, instance, store_url):
    add_symbols(instance, store_url, ["AAPL"])
    daily_bars(store_url, "AAPL", {date(2024, 11, 26): 101.0, EX: 101.5}, SEEN - timedelta(days=2))
    actions = announce_first(store_url)
    message = tick(defs, instance, store_url).skip_message
    assert ("the 1 partition(s) before the ex-date were fetched after the providers re-based them "
            "(the stored d1 bars run on across the ex-date)") in message
    assert instance.get_backfills() == [] and actions.splits(states=[RepairState.NOT_NEEDED])


def _partial_provider_factory(served: int):
    """A provider re-based for the split (prices a quarter, volume four times) that answers only the
    first `served` bars of each session: a partial answer."""
    from backfill_dagster.providers.base import FetchResult
    from backfill_dagster.providers.demo import DemoProvider

    class Partial(DemoProvider):
        name = "partial"
        provenance = "partial"

        def fetch(self, request):
            bars = super().fetch(request).bars
            bars = bars.assign(**{c: bars[c] / 4 for c in ("open", "high", "low", "close", "vwap")}, volume=bars.volume * 4)
            day = bars.ts.dt.tz_convert("America/New_York").dt.date
            return FetchResult(bars=bars[bars.groupby(day).cumcount() < served].reset_index(drop=True), api_calls=1)

    return lambda _config, calendar, clock, _budget, _policy=None: Partial(calendar, clock)


def test_a_partial_answer_in_a_split_repair_fails_the_partition_and_keeps_the_stored_bars(
    tmp_path, defs, instance, store_url, monkeypatch
):
    """The repair backfill's runs take fewer bars than stored only where the split explains them: 10
    of 26 after a 4-for-1 split is a partial answer, so the step fails naming it, the 26 stored bars
    and their ledger row stay, and the partition is still stale for the repair's next attempt."""
    from backfill_dagster.definitions import build_definitions
    from backfill_dagster.providers import registry
    from backfill_dagster.settings import Settings

    add_symbols(instance, store_url, ["AAPL"])
    day, key = date(2024, 11, 26), "2024-11-26|AAPL"
    m15 = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey("bars_m15")})
    assert m15.execute_in_process(instance=instance, partition_key=key).success
    store = BarStore(shared_engine(store_url))
    (fetched,) = store.coverage(Timeframe.M15, ["AAPL"]).fetched_at
    seen = pd.Timestamp(fetched).to_pydatetime() + timedelta(minutes=1)
    actions = ActionStore(shared_engine(store_url))
    for at, found in ((seen - timedelta(days=30), []), (seen, [split_record("AAPL", EX, "alpaca", 1, 4)])):
        actions.record("alpaca", ["AAPL"], found, checked_from=HISTORY_START, checked_through=date(2025, 3, 1),
                       now=at, preference=["alpaca"])
    tick(defs, instance, store_url, now=pd.Timestamp(seen) + timedelta(minutes=1))
    (backfill,) = instance.get_backfills()

    monkeypatch.setitem(registry.FACTORIES, "partial", _partial_provider_factory(10))
    partial = build_definitions(Settings(data_dir=tmp_path, database_url=store_url, providers=("partial",)))
    job = partial.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey("bars_m15")})
    result = job.execute_in_process(instance=instance, partition_key=key, tags=backfill.tags, raise_on_error=False)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert ("AAPL 2024-11-26 m15: partial answered 10 bar(s), fewer than the 26 stored from an earlier final answer, "
            "and the split 4:1 explains 0 of the 16 missing (only a bar under one share on the new basis may drop "
            "out): kept them") in message
    assert len(store.read_bars(Timeframe.M15, [("AAPL", day)])) == 26
    (row,) = store.coverage(Timeframe.M15, ["AAPL"]).itertuples()
    assert (row.status, row.bars, row.fetched_at) == ("complete", 26, fetched) and "partial answered 10" in row.error
    assert actions.stale_partitions(actions.splits()[0]) == {Timeframe.M15: [day]}

    # A full answer on the new basis replaces them.
    monkeypatch.setitem(registry.FACTORIES, "partial", _partial_provider_factory(26))
    assert job.execute_in_process(instance=instance, partition_key=key, tags=backfill.tags).success
    rebased = store.read_bars(Timeframe.M15, [("AAPL", day)])
    assert len(rebased) == 26 and store.coverage(Timeframe.M15, ["AAPL"]).rewrite_reason.iloc[0].startswith("split 4:1")

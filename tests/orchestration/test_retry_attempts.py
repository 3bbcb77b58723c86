"""A retried or re-executed run (Dagster's root/parent run tags) skips the partitions its earlier
attempts committed complete, and still materializes them — in real in-process Dagster runs, on both
store backends. h1/h4 are carried only while derived from the m15 fetch stored now."""

from datetime import date

import dagster as dg
import pytest
from dagster._core.storage.tags import PARENT_RUN_ID_TAG, RETRY_NUMBER_TAG, ROOT_RUN_ID_TAG

from backfill_dagster.definitions import build_definitions
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.providers import registry
from backfill_dagster.providers.base import FetchResult
from backfill_dagster.providers.demo import DemoProvider
from backfill_dagster.settings import Settings
from backfill_dagster.store import BarStore, shared_engine
from tests.orchestration.conftest import add_symbols

BAD = date(2024, 11, 26)
SYMBOLS = ("AAPL", "MSFT")


class Recorded:
    """The partitions each fetch asked for, and whether MSFT's BAD session is answered invalid."""

    def __init__(self):
        self.asked: list[tuple[str, date]] = []
        self.broken = True


def _factory(recorded: Recorded):
    class Counting(DemoProvider):
        name = "counting"

        def fetch(self, request):
            recorded.asked.extend(request.partitions)
            bars = super().fetch(request).bars
            if recorded.broken:
                day = bars.ts.dt.tz_convert("America/New_York").dt.date == BAD
                bars.loc[bars.index[day & (bars.symbol == "MSFT")], "volume"] = -1.0
            return FetchResult(bars=bars, api_calls=1)

    return lambda _config, calendar, clock, _budget, _policy=None: Counting(calendar, clock)


@pytest.fixture
def recorded(monkeypatch):
    recorded = Recorded()
    monkeypatch.setitem(registry.FACTORIES, "counting", _factory(recorded))
    return recorded


def attempt_of(root: str | None, number: int) -> dict[str, str]:
    return {} if root is None else {ROOT_RUN_ID_TAG: root, PARENT_RUN_ID_TAG: root, RETRY_NUMBER_TAG: str(number)}


def test_a_retry_fetches_and_derives_only_what_earlier_attempts_did_not_commit(
    tmp_path, instance, store_url, calendar, recorded
):
    defs = build_definitions(Settings(data_dir=tmp_path, database_url=store_url, providers=("counting",)))
    add_symbols(instance, store_url, SYMBOLS)
    sessions = calendar.sessions("2024-11-22", "2024-11-27")
    box = range_tags((SYMBOLS[0], sessions[0]), (SYMBOLS[-1], sessions[-1]))
    everything = {(s, d) for s in SYMBOLS for d in sessions}
    keys = {f"{d.isoformat()}|{s}" for s, d in everything}
    job = defs.resolve_implicit_global_asset_job_def()
    m15_h1 = job.get_subset(asset_selection={dg.AssetKey("bars_m15"), dg.AssetKey("bars_h1")})
    store = BarStore(shared_engine(store_url), calendar)

    def run(selection, root=None, number=0):
        recorded.asked.clear()
        result = selection.execute_in_process(
            instance=instance, tags={**box, **attempt_of(root, number)}, raise_on_error=False
        )
        said = " ".join(e.user_message for e in instance.all_logs(result.run_id))
        return result, said

    def writers(timeframe):
        ledger = store.coverage(timeframe=None)
        ledger = ledger[ledger.timeframe == timeframe]
        return {(r.symbol, r.session if isinstance(r.session, date) else r.session.date()): (r.status, r.run_id)
                for r in ledger.itertuples()}

    first, _ = run(m15_h1)
    assert not first.success  # MSFT's BAD session answered invalid: failed, the other 7 committed
    root = first.run_id

    # A retry that fails again on BAD still materializes the 7 it carried, and fetches only BAD.
    second, said = run(m15_h1, root, 1)
    assert not second.success
    assert recorded.asked == [("MSFT", BAD)]
    assert "7 partition(s) of m15 were committed complete by an earlier attempt of this run: not fetched again" in said
    carried = {m.partition for m in second.asset_materializations_for_node("bars_m15")}
    assert carried == keys - {f"{BAD.isoformat()}|MSFT"}

    # The next one succeeds: BAD alone is fetched, and derived with whatever h1 no attempt derived.
    recorded.broken = False
    third, said = run(m15_h1, root, 2)
    assert third.success
    assert recorded.asked == [("MSFT", BAD)]
    m15 = writers("m15")
    assert {p for p, (status, _) in m15.items() if status == "complete"} == everything
    assert {p: run_id for p, (_, run_id) in m15.items() if run_id != root} == {("MSFT", BAD): third.run_id}
    h1 = writers("h1")
    assert {p for p, (status, _) in h1.items() if status == "complete"} == everything
    assert h1[("MSFT", BAD)][1] == third.run_id and {run_id for _, run_id in h1.values()} <= {root, third.run_id}
    assert instance.get_materialized_partitions(dg.AssetKey("bars_m15")) == keys
    assert instance.get_materialized_partitions(dg.AssetKey("bars_h1")) == keys

    # m15 of one partition fetched again by a run of another group: a retry of the first group
    # fetches it again (not theirs any more) and derives its h1 again (from an older m15 fetch).
    aapl = (SYMBOLS[0], sessions[0])
    other = job.get_subset(asset_selection={dg.AssetKey("bars_m15")}).execute_in_process(
        instance=instance, partition_key=f"{sessions[0].isoformat()}|AAPL"
    )
    assert other.success
    fourth, said = run(m15_h1, root, 3)
    assert fourth.success
    assert recorded.asked == [aapl]
    assert "7 partition(s) of m15 were committed complete" in said and "7 partition(s) of h1 were committed complete" in said
    assert writers("h1")[aapl] == ("complete", fourth.run_id)


def test_a_first_attempt_skips_nothing(tmp_path, instance, store_url, calendar, recorded):
    """Without root run tags a run is a first attempt: a complete partition is fetched again as asked
    (a split repair, a user re-pulling history)."""
    recorded.broken = False
    defs = build_definitions(Settings(data_dir=tmp_path, database_url=store_url, providers=("counting",)))
    add_symbols(instance, store_url, SYMBOLS)
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey("bars_m15")})
    for _ in range(2):
        recorded.asked.clear()
        assert job.execute_in_process(instance=instance, partition_key="2024-11-22|AAPL").success
        assert recorded.asked == [("AAPL", date(2024, 11, 22))]

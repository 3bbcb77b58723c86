"""Asset checks in real Dagster runs: one summary per check and run, and what the UI makes of it."""

import asyncio
from datetime import date

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa
from dagster._core.loader import LoadingContextForTest
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionResolvedStatus,
)

from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.store import shared_engine
from backfill_dagster.store.schema import bar_coverage, ohlc_bars
from tests.orchestration.conftest import add_symbols

CHECKS = [
    dg.AssetCheckKey(dg.AssetKey("bars_m15"), "m15_completeness"),
    dg.AssetCheckKey(dg.AssetKey("bars_h1"), "matches_m15_resampled"),
    dg.AssetCheckKey(dg.AssetKey("bars_h4"), "matches_m15_resampled"),
    dg.AssetCheckKey(dg.AssetKey("bars_d1"), "bounds_m15"),
]
Resolved = AssetCheckExecutionResolvedStatus


def shown(instance, check_key):
    """What the asset page shows for a check: the latest execution's status and result, or None when
    that execution is not about the asset's latest materialization (the GraphQL resolver of
    `executionForLatestMaterialization`, which is all the UI reads for an unpartitioned check)."""

    async def read():
        context = LoadingContextForTest(instance)
        record = await AssetCheckExecutionRecord.gen(context, check_key)
        if record is None or not await record.targets_latest_materialization(context):
            return None
        return await record.resolve_status(context), record.evaluation

    return asyncio.run(read())


def run_box(defs, instance, symbols, sessions, **kwargs):
    return defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
        instance=instance, tags=range_tags((symbols[0], sessions[0]), (symbols[-1], sessions[-1])), **kwargs
    )


def check_only(defs, check):
    return defs.resolve_implicit_global_asset_job_def().get_subset(asset_check_selection={check}, asset_selection=set())


def corrupt_bars(conn, changes) -> None:
    """Edit stored bars in place, one (timeframe, symbol, UTC bar start, column changes) each."""
    for timeframe, symbol, ts, change in changes:
        changed = conn.execute(
            sa.update(ohlc_bars)
            .where(ohlc_bars.c.symbol == symbol, ohlc_bars.c.timeframe == timeframe,
                   ohlc_bars.c.ts == sa.bindparam("bar_start", type_=ohlc_bars.c.ts.type))
            .values(change),
            {"bar_start": pd.Timestamp(ts, tz="UTC").to_pydatetime()},
        ).rowcount
        assert changed == 1, (timeframe, ts)


def test_a_range_run_records_one_summary_per_check_and_the_ui_shows_it(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    sessions = calendar.sessions("2024-11-18", "2024-12-02")  # includes the early close of 11-29
    assert len(sessions) == 10
    result = run_box(defs, instance, ["AAPL", "MSFT"], sessions)
    assert result.success

    every = result.get_asset_check_evaluations()
    evaluations = {e.asset_check_key: e for e in every if e.asset_check_key in CHECKS}
    assert len(every) == len({e.asset_check_key for e in every})  # one per check, not one per partition
    assert set(evaluations) == set(CHECKS)  # the d1 run also carries the suspected-split check
    for check in CHECKS:
        evaluation = evaluations[check]
        assert evaluation.passed and evaluation.partition is None, check
        assert evaluation.description == "all 20 partition(s) passed"
        meta = {k: v.value for k, v in evaluation.metadata.items()}
        assert meta["partitions_checked"] == 20 and meta["partitions_failed"] == 0 and meta["symbols"] == 2
        assert (meta["first_session"], meta["last_session"]) == ("2024-11-18", "2024-12-02")
        # the asset page: passed, and about the latest materialization
        status, _ = shown(instance, check)
        assert status == Resolved.SUCCEEDED, check
        # nothing per partition for the UI to resolve on every request (docs/design.md)
        assert [i.partition_key for i in instance.event_log_storage.get_asset_check_partition_info([check])] == [None]
    completeness = {k: v.value for k, v in evaluations[CHECKS[0]].metadata.items()}
    assert completeness["bars"] == completeness["bars_expected"] == 2 * (9 * 26 + 14)
    assert completeness["served_by"] == {"demo:synthetic": 20} and completeness["statuses"] == {"complete": 20}


def test_a_corrupted_h1_bar_fails_the_summary_naming_its_partition(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    sessions = calendar.sessions("2024-11-18", "2024-12-02")
    assert run_box(defs, instance, ["AAPL", "MSFT"], sessions).success

    # Behind the system's back: one h1 bar of MSFT on 2024-11-21 gets a wrong high.
    engine = shared_engine(store_url)
    with engine.begin() as conn:
        changed = conn.execute(
            sa.update(ohlc_bars)
            .where(ohlc_bars.c.symbol == "MSFT", ohlc_bars.c.timeframe == "h1",
                   ohlc_bars.c.ts == sa.bindparam("bar_start", type_=ohlc_bars.c.ts.type))
            .values(high=ohlc_bars.c.high + 1.0),
            {"bar_start": pd.Timestamp("2024-11-21 16:30", tz="UTC").to_pydatetime()},  # the 11:30 ET bar
        ).rowcount
    assert changed == 1

    h1_check = CHECKS[1]
    result = check_only(defs, h1_check).execute_in_process(
        instance=instance, tags=range_tags(("AAPL", sessions[0]), ("MSFT", sessions[-1]))
    )
    assert result.success  # a failed check is a finding, not a crashed run
    (bad,) = result.get_asset_check_evaluations()
    assert not bad.passed and bad.severity == dg.AssetCheckSeverity.ERROR
    assert bad.description.startswith("1 of 20 partition(s) failed; worst: 2024-11-21|MSFT: ")
    assert "2024-11-21T16:30:00+00:00" in bad.description and "differs" in bad.description
    assert bad.metadata["partitions_failed"].value == 1 and bad.metadata["partitions_passed"].value == 19
    assert "| 2024-11-21\\|MSFT |" in bad.metadata["worst_partitions"].value
    # The asset page shows the failure: the check-only run judged the latest materialization.
    status, evaluation = shown(instance, h1_check)
    assert status == Resolved.FAILED and evaluation.severity == dg.AssetCheckSeverity.ERROR
    # the other checks were not touched by this run and still say SUCCEEDED
    assert shown(instance, CHECKS[2])[0] == Resolved.SUCCEEDED


def test_low_completeness_warns_with_the_worst_partition_first(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL"])
    sessions = calendar.sessions("2024-11-18", "2024-11-20")
    assert run_box(defs, instance, ["AAPL"], sessions).success
    engine = shared_engine(store_url)
    with engine.begin() as conn:  # two illiquid days: 20 and 5 of 26 bars traded
        for day, bars in ((date(2024, 11, 18), 20), (date(2024, 11, 19), 5)):
            conn.execute(
                sa.update(bar_coverage)
                .where(bar_coverage.c.symbol == "AAPL", bar_coverage.c.timeframe == "m15", bar_coverage.c.session == day)
                .values(bars=bars)
            )
    check = CHECKS[0]
    result = check_only(defs, check).execute_in_process(
        instance=instance, tags=range_tags(("AAPL", sessions[0]), ("AAPL", sessions[-1]))
    )
    assert result.success
    (low,) = result.get_asset_check_evaluations()
    assert not low.passed and low.severity == dg.AssetCheckSeverity.WARN  # never an error
    assert low.description == (
        "2 of 3 partition(s) failed; worst: 2024-11-19|AAPL: 5 of 26 bars (19%, below 90%); "
        "no-trade intervals or a provider gap"
    )
    table = low.metadata["worst_partitions"].value
    assert table.index("2024-11-19\\|AAPL") < table.index("2024-11-18\\|AAPL") and "2024-11-20" not in table
    assert low.metadata["bars"].value == 26 + 20 + 5 and low.metadata["bars_expected"].value == 78


def test_single_partition_runs_and_backfill_runs_each_show_their_own_summary(defs, instance, store_url, calendar):
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    sessions = calendar.sessions("2024-11-18", "2024-11-22")
    check = CHECKS[0]
    # As a UI backfill makes them: one range run per symbol, one after the other.
    for symbol in ("AAPL", "MSFT"):
        result = run_box(defs, instance, [symbol], sessions)
        status, evaluation = shown(instance, check)
        assert status == Resolved.SUCCEEDED and evaluation.metadata["partitions_checked"].value == 5
        assert evaluation.target_materialization_data.run_id == result.run_id
    # One partition, materialized and checked in one run.
    single = defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(instance=instance, partition_key="2024-11-20|AAPL")
    status, evaluation = shown(instance, check)
    assert status == Resolved.SUCCEEDED and evaluation.metadata["partitions_checked"].value == 1
    assert evaluation.target_materialization_data.run_id == single.run_id
    # A later materialization that was not checked: the last summary is no longer about the latest
    # data, so the asset page shows no current result (not a stale green).
    m15_only = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={check.asset_key}, asset_check_selection=set()
    )
    assert m15_only.execute_in_process(instance=instance, partition_key="2024-11-21|MSFT").success
    assert shown(instance, check) is None


def latest_status(instance, check_key):
    async def read():
        context = LoadingContextForTest(instance)
        record = await AssetCheckExecutionRecord.gen(context, check_key)
        return None if record is None else await record.resolve_status(context)

    return asyncio.run(read())


@pytest.mark.parametrize("check", [*CHECKS, dg.AssetCheckKey(dg.AssetKey("bars_d1"), "no_unrecorded_split")],
                         ids=lambda k: k.to_user_string())
def test_a_check_executed_alone_without_partitions_is_skipped_not_red(defs, instance, store_url, check):
    """The UI's Execute on a check launches it without partitions: it has nothing to judge, so the run
    succeeds, the check shows skipped (never failed), and the run's log says how to check data."""
    add_symbols(instance, store_url, ["AAPL"])
    checked = defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(instance=instance, partition_key="2024-11-20|AAPL")
    assert latest_status(instance, check) == Resolved.SUCCEEDED
    result = check_only(defs, check).execute_in_process(instance=instance, raise_on_error=False)
    assert result.success
    assert result.get_asset_check_evaluations() == []
    assert latest_status(instance, check) == Resolved.SKIPPED
    logged = [e.message for e in instance.all_logs(result.run_id) if e.level == 30]  # WARNING
    assert any(f"{check.name} on {check.asset_key.to_user_string()}: skipped, nothing to check" in m
               and "--partition-range" in m for m in logged), logged
    assert checked.success


@pytest.mark.parametrize("first, last", [
    (("AAPL", "2024-11-18"), ("MSFT", "2024-11-22")),
    (("MSFT", "2024-11-18"), ("NVDA", "2024-11-29")),  # a box inside the symbol order
    (("NVDA", "2024-11-20"), ("AAPL", "2024-11-21")),  # reversed symbols: Dagster selects nothing
    (("AAPL", "2024-11-22"), ("AAPL", "2024-11-22")),
])
def test_run_partitions_are_the_keys_dagster_names(defs, instance, store_url, calendar, first, last):
    """The steps compute a run's box themselves (partitions.run_partitions), without Dagster's
    object per key: it must be exactly `context.partition_keys`, in its order."""
    from backfill_dagster.orchestration.partitions import run_partitions
    from backfill_dagster.orchestration.partitions import parse_partition_key

    add_symbols(instance, store_url, ["AAPL", "MSFT", "NVDA"])
    seen = {}

    @dg.asset(partitions_def=defs.resolve_assets_def("bars_m15").partitions_def)
    def probe(context: dg.AssetExecutionContext) -> None:
        seen["dagster"] = [parse_partition_key(k, calendar) for k in context.partition_keys]
        seen["ours"] = run_partitions(context, calendar)

    tags = range_tags((first[0], date.fromisoformat(first[1])), (last[0], date.fromisoformat(last[1])))
    assert dg.materialize([probe], instance=instance, tags=tags).success
    assert seen["ours"] == seen["dagster"]


@pytest.mark.postgres
def test_the_per_partition_query_names_the_partitions_the_checks_fail(tmp_path, instance, pg_url, calendar):
    """sql/queries/check_verdicts.sql is the per-partition detail behind the summaries: on a store
    with one fault of each kind, it names exactly the partitions the checks count as failed."""
    import shutil
    import subprocess
    from pathlib import Path

    from backfill_dagster.definitions import build_definitions
    from backfill_dagster.settings import Settings

    if not shutil.which("psql"):
        pytest.fail("psql is needed to run the operator queries (it ships with PostgreSQL)")
    defs = build_definitions(Settings(data_dir=tmp_path, database_url=pg_url))
    add_symbols(instance, pg_url, ["AAPL", "MSFT"])
    sessions = calendar.sessions("2024-11-25", "2024-12-02")  # with the early close of 11-29
    assert run_box(defs, instance, ["AAPL", "MSFT"], sessions).success
    engine = shared_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.update(bar_coverage).where(  # an illiquid day
            bar_coverage.c.symbol == "AAPL", bar_coverage.c.timeframe == "m15",
            bar_coverage.c.session == date(2024, 11, 25)).values(bars=5))
        corrupt_bars(conn, (("h1", "MSFT", "2024-11-26 16:30", {"high": ohlc_bars.c.high + 1}),
                                              ("h4", "AAPL", "2024-11-29 14:30", {"low": ohlc_bars.c.low - 0.5}),
                                              ("d1", "AAPL", "2024-11-27 05:00", {"volume": 1.0})))

    failing_by_checks = set()
    for check in CHECKS:
        result = check_only(defs, check).execute_in_process(
            instance=instance, tags=range_tags(("AAPL", sessions[0]), ("MSFT", sessions[-1]))
        )
        (evaluation,) = result.get_asset_check_evaluations()
        table = evaluation.metadata["worst_partitions"].value if "worst_partitions" in evaluation.metadata else ""
        failing_by_checks |= {(check.asset_key.to_user_string(), line[2:].split(" | ")[0].replace("\\|", "|"))
                              for line in table.splitlines() if line.startswith("| 20")}
        assert evaluation.metadata["partitions_failed"].value == sum(
            1 for a, _ in failing_by_checks if a == check.asset_key.to_user_string())

    query = Path(__file__).parents[2] / "sql" / "queries" / "check_verdicts.sql"
    out = subprocess.run(["psql", pg_url, "-v", "ON_ERROR_STOP=1", "-A", "-t", "-F", "\t", "-f", str(query)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.splitlines() if line.strip()]
    failing_by_query = {(asset, f"{session}|{symbol}") for asset, _check, symbol, session, _why in rows}
    assert failing_by_query == failing_by_checks == {
        ("bars_m15", "2024-11-25|AAPL"), ("bars_h1", "2024-11-26|MSFT"),
        ("bars_h4", "2024-11-29|AAPL"), ("bars_d1", "2024-11-27|AAPL"),
    }


def test_a_box_judged_in_chunks_gets_the_summaries_judged_whole(defs, instance, store_url, calendar, monkeypatch):
    """The checks read and compare a box's bars a chunk of partitions at a time (memory follows the
    chunk): with chunks of 3 partitions, every summary (verdicts, worst partitions, figures) is the
    one the whole box judged at once gives, faults in several chunks included; and the completeness
    check reads only the box's ledger rows, whatever else is stored for its symbols."""
    from backfill_dagster.orchestration import checks

    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    sessions = calendar.sessions("2024-11-18", "2024-12-02")
    assert run_box(defs, instance, ["AAPL", "MSFT"], sessions).success
    engine = shared_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.update(bar_coverage).where(
            bar_coverage.c.symbol == "AAPL", bar_coverage.c.timeframe == "m15",
            bar_coverage.c.session == date(2024, 11, 19)).values(bars=5))
        corrupt_bars(conn, (("h1", "MSFT", "2024-11-21 16:30", {"high": ohlc_bars.c.high + 1}),
                                              ("h1", "AAPL", "2024-11-26 16:30", {"low": ohlc_bars.c.low - 0.5}),
                                              ("h4", "AAPL", "2024-11-29 14:30", {"low": ohlc_bars.c.low - 0.5}),
                                              ("d1", "AAPL", "2024-11-27 05:00", {"volume": 1.0}),
                                              ("d1", "MSFT", "2024-11-19 05:00", {"volume": 1.0})))

    def summaries(first, last):
        out = {}
        for check in CHECKS:
            result = check_only(defs, check).execute_in_process(instance=instance, tags=range_tags(first, last))
            (evaluation,) = result.get_asset_check_evaluations()
            out[check] = (evaluation.passed, evaluation.severity, evaluation.description,
                          {k: v.value for k, v in evaluation.metadata.items()})
        return out

    inner = (("AAPL", sessions[1]), ("MSFT", sessions[-2]))  # ledger rows on both sides of the box
    whole = {box: summaries(*box) for box in [(("AAPL", sessions[0]), ("MSFT", sessions[-1])), inner]}
    monkeypatch.setattr(checks, "CHECK_PARTITIONS_PER_CHUNK", 3)
    assert [len(c) for c in checks.partition_chunks([(s, d) for d in sessions for s in ("MSFT", "AAPL")])] == [3] * 6 + [2]
    chunked = {box: summaries(*box) for box in whole}
    assert chunked == whole
    judged = whole[inner]
    assert [judged[c][0] for c in CHECKS] == [False, False, False, False]
    assert judged[CHECKS[0]][3]["partitions_checked"] == 16 and judged[CHECKS[0]][3]["bars_expected"] == 2 * (7 * 26 + 14)
    assert judged[CHECKS[1]][2].startswith("2 of 16 partition(s) failed")


def test_the_split_check_evaluation_is_the_one_dagster_makes_of_an_asset_check_result(defs, instance, store_url, calendar):
    """bars_d1:no_unrecorded_split builds its evaluation itself: the same as Dagster's from an
    AssetCheckResult (target: the asset's latest materialization; not blocking; no partition), and
    without Dagster's list of every key of the partitions (all symbols x all sessions), which it
    keeps for the worker's life."""
    from dagster._core.definitions.partitions.definition.multi import MultiPartitionsDefinition
    from dagster_shared.record import as_dict

    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    sessions = calendar.sessions("2024-11-18", "2024-11-22")
    tags = range_tags(("AAPL", sessions[0]), ("MSFT", sessions[-1]))
    assert run_box(defs, instance, ["AAPL", "MSFT"], sessions).success
    assert defs.resolve_implicit_global_asset_job_def().get_subset(  # a later materialization, one partition
        asset_selection={dg.AssetKey("bars_d1")}, asset_check_selection=set()
    ).execute_in_process(instance=instance, partition_key="2024-11-20|AAPL").success
    latest = instance.get_latest_materialization_event(dg.AssetKey("bars_d1"))

    split_check = dg.AssetCheckKey(dg.AssetKey("bars_d1"), "no_unrecorded_split")
    all_keys = MultiPartitionsDefinition._get_partition_keys
    all_keys.cache_clear()
    ours = check_only(defs, split_check).execute_in_process(instance=instance, tags=tags)
    (evaluation,) = ours.get_asset_check_evaluations()
    assert all_keys.cache_info().misses == 0  # no list of every key was made
    assert evaluation.target_materialization_data.run_id == latest.run_id
    assert shown(instance, split_check)[0] == Resolved.SUCCEEDED  # about the latest materialization

    # Dagster's own way: the same result yielded as an AssetCheckResult by a twin of the check.
    twin_spec = dg.AssetCheckSpec("twin", asset="bars_d1")

    @dg.multi_asset_check(specs=[twin_spec], can_subset=True)
    def twin(context):
        yield dg.AssetCheckResult(asset_key="bars_d1", check_name="twin", passed=evaluation.passed,
                                  severity=evaluation.severity, description=evaluation.description,
                                  metadata=evaluation.metadata)

    d1_spec = dg.AssetSpec("bars_d1", partitions_def=defs.resolve_assets_def("bars_d1").partitions_def)
    stock = dg.Definitions(assets=[d1_spec], asset_checks=[twin]).resolve_implicit_global_asset_job_def().get_subset(
        asset_check_selection={twin_spec.key}, asset_selection=set()
    ).execute_in_process(instance=instance, tags=tags)
    (theirs,) = stock.get_asset_check_evaluations()
    assert all_keys.cache_info().misses == 1  # Dagster's way lists them
    assert as_dict(theirs) == {**as_dict(evaluation), "check_name": "twin"}
    assert evaluation.blocking is False and evaluation.partition is None
    assert len(ours.get_step_success_events()) == len(stock.get_step_success_events()) == 1

"""The corporate_actions asset in real Dagster runs against the fakes (tables filled from every
provider that publishes, providers disagreeing warn, a failing provider fails the run naming it
and loses nothing), its schedule on the calendar, and the d1 check that suspects unrecorded splits."""

from datetime import date

import dagster as dg
import pandas as pd
import pytest

from backfill_dagster.definitions import build_definitions
from backfill_dagster.domain.calendar import xnys
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.fakes.actions import CashDividend, CorporateActions, PriceGap, Split
from backfill_dagster.orchestration.corporate_actions import (
    JOB,
    build_corporate_actions_schedule,
    refresh_run_config,
)
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.orchestration.resources import StoreResource
from backfill_dagster.settings import Settings
from backfill_dagster.store import shared_engine
from backfill_dagster.store.actions import ActionStore
from tests.orchestration.conftest import add_symbols

NOW = pd.Timestamp("2025-03-03 15:00", tz="UTC")
NY = "America/New_York"


def registry(**extra):
    return CorporateActions(
        splits=[Split("NVDA", date(2024, 6, 10), 10, 1, date(2024, 5, 22))],
        dividends=[CashDividend("AAPL", date(2024, 8, 12), 0.25, date(2024, 8, 1))],
        default_dividends=False, **extra)


@pytest.fixture
def fakes(monkeypatch):
    with FakeProviders(FakeConfig(now=lambda: NOW, corporate_actions=registry())) as running:
        for name, value in running.env().items():
            monkeypatch.setenv(name, value)
        yield running


def provider_defs(tmp_path, store_url, providers):
    return build_definitions(Settings(data_dir=tmp_path, database_url=store_url, history_start=date(2024, 1, 1),
                                      providers=tuple(providers), rate_limits={}, http_backoff_s=0.01))


def refresh(defs, instance, symbols=None):
    job = defs.resolve_job_def(JOB)
    config = refresh_run_config(symbols) if symbols else None
    return job.execute_in_process(instance=instance, run_config=config, raise_on_error=False)


def checks_of(result):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_a_refresh_records_every_providers_report_and_the_checks_pass(fakes, tmp_path, store_url, instance):
    defs = provider_defs(tmp_path, store_url, ["alpaca", "polygon", "tradier", "yahoo"])
    add_symbols(instance, store_url, ["AAPL", "NVDA", "MSFT"])
    result = refresh(defs, instance)
    assert result.success
    store = ActionStore(shared_engine(store_url))
    actions = store.actions()
    assert [(a.symbol, a.kind, str(a.ex_date), a.source) for a in actions.itertuples()] == [
        ("AAPL", "cash_dividend", "2024-08-12", "alpaca"), ("NVDA", "split", "2024-06-10", "alpaca")]
    assert set(store.sources().provider) == {"alpaca", "polygon", "yahoo"}  # Tradier publishes none
    assert len(store.checks()) == 3 * 3  # every symbol asked of each publishing provider
    (materialization,) = result.asset_materializations_for_node("corporate_actions")
    meta = materialization.metadata
    assert meta["providers"].value == "alpaca, polygon, yahoo" and meta["new_actions"].value == 2
    assert meta["api_calls_by_provider"].value == {"alpaca": 1, "polygon": 2, "yahoo": 3}
    checks = checks_of(result)
    assert checks["providers_agree"].passed and checks["splits_repaired"].passed
    # NVDA's split is history to every provider: it re-bases nothing fetched after its ex-date.
    (split,) = store.splits()
    assert split.basis_since == pd.Timestamp("2024-06-10", tz=NY).tz_convert("UTC")


def test_providers_disagreeing_on_a_ratio_warn_naming_them(fakes, tmp_path, store_url, instance):
    add_symbols(instance, store_url, ["NVDA"])
    assert refresh(provider_defs(tmp_path, store_url, ["polygon", "alpaca"]), instance).success
    # Alpaca corrects its record to 5:1; Polygon is not asked again (here: no longer configured).
    fakes.config.corporate_actions = CorporateActions(splits=[Split("NVDA", date(2024, 6, 10), 5, 1, date(2024, 5, 22))],
                                                      default_dividends=False)
    result = refresh(provider_defs(tmp_path, store_url, ["alpaca"]), instance)
    assert result.success  # the refresh itself worked
    check = checks_of(result)["providers_agree"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.description == "1 action(s) reported differently; first: NVDA split ex 2024-06-10: alpaca 5:1, polygon 10:1"
    assert "| NVDA | split | 2024-06-10 | alpaca 5:1, polygon 10:1 |" in check.metadata["worst"].value
    store = ActionStore(shared_engine(store_url))
    assert sorted(zip(store.sources().provider, store.sources().split_to)) == [("alpaca", 5), ("polygon", 10)]
    # The action's figures are those of the provider preferred now (alpaca, the only one configured).
    assert store.actions().iloc[0].split_to == 5 and store.actions().iloc[0].source == "alpaca"


def test_a_failing_provider_fails_the_run_naming_it_and_keeps_the_others_answers(fakes, tmp_path, store_url, instance):
    fakes.config.unknown_symbols = frozenset({"MSFT"})
    defs = provider_defs(tmp_path, store_url, ["alpaca", "yahoo"])
    add_symbols(instance, store_url, ["NVDA", "MSFT"])
    result = refresh(defs, instance)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "1 provider x symbol request(s) failed" in message and "yahoo MSFT" in message and "404" in message
    checks = ActionStore(shared_engine(store_url)).checks()
    assert sorted(zip(checks.symbol, checks.provider)) == [("MSFT", "alpaca"), ("NVDA", "alpaca"), ("NVDA", "yahoo")]


def test_without_a_publishing_provider_a_refresh_says_so(tmp_path, store_url, instance):
    defs = provider_defs(tmp_path, store_url, ["demo"])
    add_symbols(instance, store_url, ["AAPL"])
    result = refresh(defs, instance)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("corporate_actions")
    assert "no configured provider publishes corporate actions (BACKFILL_PROVIDERS=demo" in materialization.metadata["note"].value


@pytest.mark.parametrize("when, expected", [
    ("2024-12-04 08:00", "corporate_actions_daily:2024-12-04"),
    ("2024-11-28 08:00", "2024-11-28 is not an NYSE trading session (NYSE holiday: Thanksgiving)"),
    ("2025-01-09 08:00", "2025-01-09 is not an NYSE trading session (NYSE closed (ad-hoc closure))"),
])
def test_the_schedule_refreshes_once_on_each_session(instance, store_url, when, expected):
    add_symbols(instance, store_url, ["AAPL"])
    schedule = build_corporate_actions_schedule()
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=pd.Timestamp(when, tz=NY).to_pydatetime(),
                                   resources={"store": StoreResource(database_url=store_url)}) as context:
        data = schedule.evaluate_tick(context)
    if data.run_requests:
        assert [r.run_key for r in data.run_requests] == [expected]
    else:
        assert expected in data.skip_message


def test_the_schedule_runs_hours_before_end_of_day(tmp_path):
    from dagster._utils.schedules import cron_string_iterator

    defs = build_definitions(Settings(data_dir=tmp_path))
    actions = defs.resolve_schedule_def("corporate_actions_daily")
    eod = defs.resolve_schedule_def("end_of_day")
    start = pd.Timestamp("2024-11-29 00:00", tz=NY).timestamp()  # an early close
    first_actions = next(cron_string_iterator(start, actions.cron_schedule, NY))
    first_eod = next(cron_string_iterator(start, eod.cron_schedule, NY))
    assert first_actions.hour == 8 and first_eod.hour >= 13 and first_actions < first_eod


# ---------------------------------------------------------------------------- the d1 check
SESSIONS = xnys().sessions("2025-02-03", "2025-02-14")
JUMP = date(2025, 2, 4)  # the model moves 0.0% overnight into it (its gaps are often above 2%)


@pytest.mark.parametrize("move, fires", [
    (Split("AAPL", JUMP, 4, 1, date(2025, 12, 1)), "AAPL 2025-02-04:"),  # an unannounced 4:1 split
    (Split("AAPL", JUMP, 1, 10, date(2025, 12, 1)), "a 1:10 split?"),  # an unannounced reverse split
    (PriceGap("AAPL", JUMP, 1.3), None),  # a 30% earnings gap
])
def test_the_d1_check_suspects_an_unrecorded_split_and_not_an_earnings_gap(
    fakes, tmp_path, store_url, instance, move, fires
):
    kind = "splits" if isinstance(move, Split) else "gaps"
    fakes.config.corporate_actions = CorporateActions(default_dividends=False, **{kind: [move]})
    defs = provider_defs(tmp_path, store_url, ["alpaca"])
    add_symbols(instance, store_url, ["AAPL", "MSFT"])
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_d1")})
    result = job.execute_in_process(instance=instance, tags=range_tags(("AAPL", SESSIONS[0]), ("MSFT", SESSIONS[-1])))
    assert result.success
    check = checks_of(result)["no_unrecorded_split"]
    assert check.severity == dg.AssetCheckSeverity.WARN and check.metadata["symbols"].value == 2
    if fires:
        assert not check.passed and fires in check.description
        assert "| AAPL | 2025-02-04 |" in check.metadata["suspects"].value
    else:
        assert check.passed, check.description
    # One session the day after: judged against the stored session before it.
    one = job.execute_in_process(instance=instance, tags=range_tags(("AAPL", JUMP), ("AAPL", JUMP)))
    assert checks_of(one)["no_unrecorded_split"].passed is (fires is None)


def test_a_recorded_split_explains_its_jump(fakes, tmp_path, store_url, instance):
    fakes.config.corporate_actions = CorporateActions(splits=[Split("AAPL", JUMP, 4, 1, date(2025, 2, 20))],
                                                      default_dividends=False)
    defs = provider_defs(tmp_path, store_url, ["alpaca"])
    add_symbols(instance, store_url, ["AAPL"])
    refresh(defs, instance)  # the split is listed (announced Feb 20; now is March 3)...
    old_basis = CorporateActions(splits=[Split("AAPL", JUMP, 4, 1, date(2025, 12, 1))], default_dividends=False)
    fakes.config.corporate_actions = old_basis  # ...but these bars are still served on the old basis
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_d1")})
    result = job.execute_in_process(instance=instance, tags=range_tags(("AAPL", SESSIONS[0]), ("AAPL", SESSIONS[-1])))
    assert checks_of(result)["no_unrecorded_split"].passed


def test_a_bad_symbol_in_the_run_config_is_refused_naming_it(tmp_path, store_url, instance):
    result = refresh(provider_defs(tmp_path, store_url, ["demo"]), instance, ["AA|PL"])
    assert not result.success
    assert "symbol 'AA|PL' is not a valid ticker" in result.get_step_failure_events()[0].step_failure_data.error.message

"""Real provider clients inside Dagster runs, against the fake servers on loopback: a backfill under
injected faults completes with exactly the provider's bars, the shared budget holds the provider's
rate limit across concurrent clients (measured at the fake), a provider that keeps failing fails
its partitions with a message naming it, and keys never reach Dagster's event log."""

import threading
import time
from datetime import date

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from backfill_dagster.definitions import build_definitions
from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.providers.alpaca import AlpacaProvider
from backfill_dagster.providers.base import FetchRequest
from backfill_dagster.providers.ratelimit import RateLimit
from backfill_dagster.settings import Settings
from backfill_dagster.store import BarStore, create_engine, shared_engine
from backfill_dagster.store.budget import SharedBudget
from tests.orchestration.conftest import add_symbols

NOW = pd.Timestamp("2025-03-03 15:00", tz="UTC")
SESSIONS = xnys().sessions("2025-02-03", "2025-02-14")
SYMBOLS = ["AAPL", "MSFT", "NVDA"]


@pytest.fixture
def fakes(monkeypatch):
    with FakeProviders(FakeConfig(now=lambda: NOW, timeout_sleep_s=0.2, seed=3)) as fakes:
        for name, value in fakes.env().items():
            monkeypatch.setenv(name, value)
        yield fakes


def provider_defs(tmp_path, store_url, providers, **settings):
    return build_definitions(
        # Short back-offs: the retry logic is the same, the test does not wait seconds per fault.
        Settings(data_dir=tmp_path, database_url=store_url, history_start=date(2024, 1, 1),
                 providers=tuple(providers), rate_limits={}, http_attempts=6, http_backoff_s=0.02,
                 **settings)  # the fakes are unmetered
    )


def run_box(defs, instance, selection=None):
    job = defs.resolve_job_def(ALL_BARS_JOB)
    if selection:
        job = job.get_subset(asset_selection={dg.AssetKey(a) for a in selection})
    return job.execute_in_process(
        instance=instance, tags=range_tags((SYMBOLS[0], SESSIONS[0]), (SYMBOLS[-1], SESSIONS[-1])),
        raise_on_error=False,
    )


def regular(bars: pd.DataFrame, day) -> pd.DataFrame:
    lo, hi = xnys().window(day)
    return bars[(bars.ts >= lo) & (bars.ts < hi)]


@pytest.mark.parametrize("provider", ["alpaca", "polygon"])
def test_a_backfill_under_20_percent_faults_completes_with_the_providers_bars(
    provider, fakes, tmp_path, store_url, instance
):
    fakes.config.fault_rate = 0.2
    defs = provider_defs(tmp_path, store_url, [provider])
    add_symbols(instance, store_url, SYMBOLS)
    result = run_box(defs, instance)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    statuses = [entry.status for entry in fakes.log if entry.provider == provider]
    assert any(s != 200 for s in statuses), "no fault was injected: the test proves nothing"

    store = BarStore(shared_engine(store_url), xnys())
    for symbol in SYMBOLS:
        for day in SESSIONS:
            stored = store.read_bars(Timeframe.M15, [(symbol, day)])
            served = regular(fakes.bars("m15", symbol, day), day)
            assert list(stored.ts) == list(served.ts), (symbol, day)
            assert np.allclose(stored.close, served.close) and np.allclose(stored.volume, served.volume)
    ledger = store.coverage()
    assert set(ledger.status) == {"complete"} and len(ledger) == 4 * len(SYMBOLS) * len(SESSIONS)
    fetched = ledger[ledger.timeframe.isin(["m15", "d1"])]
    assert all(p.startswith(provider) for p in fetched.provider)  # who served each partition
    for check in result.get_asset_check_evaluations():
        assert check.passed, check.description


def test_a_provider_that_keeps_failing_fails_its_partitions_and_names_itself(fakes, tmp_path, store_url, instance):
    fakes.config.fault_rate = 1.0
    fakes.config.faults = ("503",)
    defs = provider_defs(tmp_path, store_url, ["polygon"])
    add_symbols(instance, store_url, SYMBOLS[:1])
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_m15")})
    result = job.execute_in_process(
        instance=instance, tags=range_tags((SYMBOLS[0], SESSIONS[0]), (SYMBOLS[0], SESSIONS[1])), raise_on_error=False
    )
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "polygon" in message and "AAPL" in message and "2025-02-03" in message and "503" in message
    assert BarStore(shared_engine(store_url), xnys()).read_bars(Timeframe.M15, [("AAPL", SESSIONS[0])]).empty


def test_the_router_falls_back_to_the_next_provider_and_records_who_served(fakes, tmp_path, store_url, instance):
    fakes.config.fault_rate = 1.0  # every provider request fails...
    fakes.config.faults = ("500",)
    defs = provider_defs(tmp_path, store_url, ["alpaca", "demo"])  # ...so the demo provider serves
    add_symbols(instance, store_url, SYMBOLS[:1])
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_m15")})
    result = job.execute_in_process(
        instance=instance, tags=range_tags((SYMBOLS[0], SESSIONS[0]), (SYMBOLS[0], SESSIONS[1])), raise_on_error=False
    )
    assert result.success
    ledger = BarStore(shared_engine(store_url), xnys()).coverage(Timeframe.M15)
    assert set(ledger.provider) == {"demo:synthetic"}
    assert fakes.calls("alpaca") >= 1


def test_keys_never_reach_dagsters_event_log(fakes, tmp_path, store_url, instance):
    fakes.config.fault_rate = 1.0
    fakes.config.faults = ("500",)
    defs = provider_defs(tmp_path, store_url, ["alpaca", "polygon", "tradier"])
    add_symbols(instance, store_url, SYMBOLS[:1])
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_m15")})
    job.execute_in_process(
        instance=instance, tags=range_tags((SYMBOLS[0], SESSIONS[0]), (SYMBOLS[0], SESSIONS[0])), raise_on_error=False
    )
    secrets = [fakes.config.alpaca_key, fakes.config.alpaca_secret, fakes.config.polygon_key, fakes.config.tradier_token]
    run_ids = [r.run_id for r in instance.get_runs()]
    text = "".join(str(e) for run_id in run_ids for e in instance.all_logs(run_id))
    text += "".join(str(r.run_config) + str(r.tags) for r in instance.get_runs())
    for secret in secrets:
        assert secret not in text


def test_the_shared_budget_uses_the_rate_limit_and_never_exceeds_it_at_the_server(fakes, store_url):
    limit, window = 8, 2.0
    fakes.config.rate_limits = {"alpaca": limit}
    fakes.config.rate_window_s = window
    shared_engine(store_url)  # schema
    engines = [create_engine(store_url) for _ in range(4)]  # four "processes"
    day = SESSIONS[0]
    lo, hi = xnys().window(day)
    request = FetchRequest(Timeframe.M15, ("AAPL",), (day,), lo, hi)
    env = fakes.env()

    def worker(engine):
        budget = SharedBudget(engine, "alpaca", RateLimit(limit, window))
        provider = AlpacaProvider.from_config(env, xnys(), lambda: NOW, budget=budget)
        for _ in range(limit):
            provider.fetch(request)

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    elapsed = time.monotonic() - start
    arrivals = sorted(e.at for e in fakes.log if e.provider == "alpaca")
    assert len(arrivals) == 4 * limit
    assert all(e.status == 200 for e in fakes.log if e.provider == "alpaca")  # no 429: never over
    assert fakes.max_in_window("alpaca", window) <= limit
    # How much of the budget was used depends on the machine's load (answer latency, SQLite's one
    # writer), so it is printed, not asserted; that the budget never waits longer than the oldest
    # slot needs to leave is asserted without a clock in test_ratelimit.
    span = arrivals[-1] - arrivals[0]
    utilisation = (len(arrivals) - limit) / limit * window / span
    print(f"\nbudget {limit}/{window:.0f}s, 4 clients, {len(arrivals)} requests: max {fakes.max_in_window('alpaca', window)} "
          f"in any {window:.0f}s at the server, {utilisation:.0%} of the budget used, {elapsed:.1f}s")
    for e in engines:
        e.dispose()


@pytest.mark.parametrize("provider", ["alpaca", "polygon", "tradier", "yahoo"])
def test_an_invalid_bar_from_any_provider_is_rejected_with_its_reason(provider, fakes, tmp_path, store_url, instance):
    fakes.config.fault_rate = 1.0
    fakes.config.faults = ("invalid",)  # every answer carries one bar with high below low
    # Recent closed sessions by the wall clock the router judges reach by, within Tradier's (18 days)
    # and Yahoo's (60 days) m15 history; the fake serves up to the same wall clock.
    fakes.config.now = lambda: pd.Timestamp.now(tz="UTC")
    today = pd.Timestamp.now(tz="America/New_York").date()
    recent = [d for d in xnys().sessions(today - pd.Timedelta(days=10), today) if d < today][-3:]
    defs = provider_defs(tmp_path, store_url, [provider])
    add_symbols(instance, store_url, SYMBOLS[:1])
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_m15")})
    result = job.execute_in_process(
        instance=instance, tags=range_tags((SYMBOLS[0], recent[0]), (SYMBOLS[0], recent[-1])), raise_on_error=False
    )
    assert not result.success  # the tainted partition fails its step, named
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "high is below low" in message and "AAPL" in message
    store = BarStore(shared_engine(store_url), xnys())
    with shared_engine(store_url).connect() as conn:
        rejected = conn.execute(sa.text("SELECT provider, reason FROM rejected_bars")).all()
    assert rejected and all("high is below low" in r.reason for r in rejected)
    assert all(r.provider.startswith(provider) for r in rejected)
    stored = store.read_bars(Timeframe.M15, [("AAPL", d) for d in recent])
    assert (stored.high >= stored.low).all()  # nothing invalid reached ohlc_bars
    failed = store.coverage(Timeframe.M15)
    assert "failed" in set(failed.status)


@pytest.mark.parametrize(
    "provider, fault, reason",
    [
        ("alpaca", {"misdated": {"alpaca": 1}}, "not in the requested sessions"),  # Friday's bars for Monday
        ("polygon", {"polygon_epoch_seconds": True}, "not on an NYSE session day"),  # January 1970
    ],
)
def test_an_answer_for_other_dates_is_rejected_and_fails_never_empty(
    provider, fault, reason, fakes, tmp_path, store_url, instance
):
    """Bars dated outside the request are bad input, not "no bars for this session": kept in
    rejected_bars with the reason, the partitions failed naming the provider, nothing stored."""
    for name, value in fault.items():
        setattr(fakes.config, name, value)
    defs = provider_defs(tmp_path, store_url, [provider])
    add_symbols(instance, store_url, SYMBOLS[:1])
    asked = SESSIONS[5:6]  # Monday 2025-02-10
    job = defs.resolve_job_def(ALL_BARS_JOB).get_subset(asset_selection={dg.AssetKey("bars_m15")})
    result = job.execute_in_process(
        instance=instance, tags=range_tags(("AAPL", asked[0]), ("AAPL", asked[-1])), raise_on_error=False
    )
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert f"AAPL {asked[0].isoformat()} m15: {provider}" in message and reason in message
    store = BarStore(shared_engine(store_url), xnys())
    ledger = store.coverage(Timeframe.M15)
    assert list(ledger.status) == ["failed"] and provider in ledger.error.iloc[0] and reason in ledger.error.iloc[0]
    assert store.read_bars(Timeframe.M15, [("AAPL", d) for d in asked]).empty
    with shared_engine(store_url).connect() as conn:
        rejected = conn.execute(sa.text("SELECT session, reason FROM rejected_bars")).all()
    served = len(regular(fakes.bars("m15", "AAPL", asked[0]), asked[0]))
    assert len(rejected) == served == 26 and all(reason in r.reason for r in rejected)
    if provider == "alpaca":  # the 26 bars of the Friday before
        assert {str(r.session) for r in rejected} == {SESSIONS[4].isoformat()}

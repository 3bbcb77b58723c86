"""A provider whose quota is spent — every request answered 429 with `Retry-After: 3600` — in real
Dagster runs of the `all_bars` job against the fakes on loopback: the run falls back to the next
provider at once, the shared budget shows the provider unavailable until the time the server gave,
a later run falls back without sending it anything, and with nothing to fall back to the step fails
saying until when and why."""

import time

import dagster as dg
import pandas as pd
import pytest

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.providers.ratelimit import RateLimit
from backfill_dagster.store import BarStore, shared_engine
from backfill_dagster.store.budget import SharedBudget
from tests.orchestration.conftest import add_symbols
from tests.orchestration.test_provider_runs import provider_defs

NOW = pd.Timestamp("2025-03-03 15:00", tz="UTC")
SESSIONS = xnys().sessions("2025-02-03", "2025-02-14")
SYMBOLS = ["AAPL", "MSFT", "NVDA"]
QUOTA_S = 3600
REASON = f"HTTP 429 with Retry-After {QUOTA_S} s: too many requests"  # Alpaca's own words after the colon


@pytest.fixture
def fakes(monkeypatch):
    # Today's retry settings: a provider that kept saying "come back in an hour" used to be retried
    # six times, each wait cut to 90 s.
    monkeypatch.setenv("BACKFILL_HTTP_ATTEMPTS", "6")
    monkeypatch.delenv("BACKFILL_HTTP_BACKOFF_SECONDS", raising=False)
    with FakeProviders(FakeConfig(now=lambda: NOW, quota_exhausted={"alpaca": QUOTA_S})) as fakes:
        for name, value in fakes.env().items():
            monkeypatch.setenv(name, value)
        yield fakes


def run(defs, instance, symbols, sessions, assets=None):
    job = defs.resolve_job_def(ALL_BARS_JOB)
    if assets:
        job = job.get_subset(asset_selection={dg.AssetKey(a) for a in assets})
    return job.execute_in_process(
        instance=instance, tags=range_tags((symbols[0], sessions[0]), (symbols[-1], sessions[-1])),
        raise_on_error=False,
    )


def run_log(instance, result) -> str:
    return "\n".join(e.user_message for e in instance.all_logs(result.run_id))


def test_a_spent_quota_falls_back_at_once_and_every_later_run_skips_the_provider(fakes, tmp_path, store_url, instance):
    defs = provider_defs(tmp_path, store_url, ["alpaca", "polygon"])
    add_symbols(instance, store_url, SYMBOLS)
    started = time.monotonic()
    result = run(defs, instance, SYMBOLS, SESSIONS)
    elapsed = time.monotonic() - started
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert elapsed < 60, f"the run took {elapsed:.0f} s"

    # One request learned that the quota is spent; no other step or request asked Alpaca again.
    alpaca = [e for e in fakes.log if e.provider == "alpaca"]
    assert [e.status for e in alpaca] == [429]
    store = BarStore(shared_engine(store_url), xnys())
    ledger = store.coverage()
    assert set(ledger.status) == {"complete"} and len(ledger) == 4 * len(SYMBOLS) * len(SESSIONS)
    fetched = ledger[ledger.timeframe.isin(["m15", "d1"])]
    assert all(p.startswith("polygon") for p in fetched.provider)

    # The shared budget (the store's database) says until when, and why.
    shown = SharedBudget(shared_engine(store_url), "alpaca", RateLimit(0)).unavailable()
    assert shown is not None and shown.reason == REASON
    assert abs(shown.until.timestamp() - (alpaca[0].at + QUOTA_S)) < 5
    log = run_log(instance, result)
    until = f"{shown.until:%Y-%m-%d %H:%M:%S} UTC"
    for timeframe in ("m15", "d1"):  # the run log says why each step moved on to Polygon
        assert f"alpaca for {timeframe} AAPL,MSFT,NVDA 2025-02-03..2025-02-14: unavailable until {until}: {REASON}" in log
    # whichever step ran first got the 429; the other was refused by the budget, sending nothing
    assert log.count(f"{REASON} (last HTTP status 429)") == 1 and log.count(f"{REASON}; not sent") == 1

    # A later run (another process would do the same: it reads the same table) falls back at once.
    later = run(defs, instance, SYMBOLS[:1], SESSIONS[:2], assets=["bars_m15"])
    assert later.success
    assert fakes.calls("alpaca") == 1
    assert f"unavailable until {until}: {REASON}; not sent" in run_log(instance, later)


def test_with_no_provider_left_the_step_fails_saying_until_when_and_why(fakes, tmp_path, store_url, instance):
    defs = provider_defs(tmp_path, store_url, ["alpaca"])
    add_symbols(instance, store_url, SYMBOLS[:1])
    started = time.monotonic()
    result = run(defs, instance, SYMBOLS[:1], SESSIONS[:2], assets=["bars_m15"])
    assert not result.success and time.monotonic() - started < 60
    assert fakes.calls("alpaca") == 1
    shown = SharedBudget(shared_engine(store_url), "alpaca", RateLimit(0)).unavailable()
    expected = f"alpaca for m15 AAPL 2025-02-03..2025-02-04: unavailable until {shown.until:%Y-%m-%d %H:%M:%S} UTC: {REASON}"
    message = result.get_step_failure_events()[0].step_failure_data.error.message
    assert expected in message and "AAPL" in message and "2025-02-03" in message
    ledger = BarStore(shared_engine(store_url), xnys()).coverage(Timeframe.M15)
    assert set(ledger.status) == {"failed"} and all(expected in error for error in ledger.error)


def test_the_deployed_instance_puts_the_clients_own_warnings_in_the_run_log(fakes, tmp_path, store_url):
    import yaml

    from tests.deploy import ROOT

    deployed = yaml.safe_load((ROOT / "dagster.yaml").read_text())["python_logs"]
    with dg.instance_for_test(overrides={"python_logs": deployed}) as instance:
        defs = provider_defs(tmp_path, store_url, ["alpaca", "polygon"])
        add_symbols(instance, store_url, SYMBOLS[:1])
        result = run(defs, instance, SYMBOLS[:1], SESSIONS[:2], assets=["bars_m15"])
        assert result.success
        # providers/http.py's own warning, not only ingest's summary of the failed request
        assert "longer than a retry waits (90 s): alpaca is unavailable until" in run_log(instance, result)

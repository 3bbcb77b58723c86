"""`BACKFILL_PROVIDERS=flatfiles,alpaca` in Dagster runs against the flat-files and REST fakes of one
market: after corporate_actions, a box of all four assets costs one GET per session and file
(minute, day), whatever its symbols, and stores the REST fakes' split-adjusted bars; before it, the
flat files refuse the unchecked symbols without a GET and Alpaca serves them."""

from datetime import date

import numpy as np
import pandas as pd
import pytest

from backfill_dagster.definitions import build_definitions
from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.fakes.actions import CorporateActions, Split
from backfill_dagster.fakes.flatfiles import FakeFlatFiles, FlatFilesConfig
from backfill_dagster.orchestration.corporate_actions import JOB as ACTIONS_JOB
from backfill_dagster.orchestration.jobs import ALL_BARS_JOB
from backfill_dagster.orchestration.partitions import range_tags
from backfill_dagster.settings import Settings
from backfill_dagster.store import BarStore, shared_engine
from tests.orchestration.conftest import add_symbols

NOW = pd.Timestamp("2025-03-03 15:00", tz="UTC")
SESSIONS = xnys().sessions("2025-02-05", "2025-02-12")  # 6 sessions around NVDA's split
SYMBOLS = ["AAPL", "MSFT", "NVDA", "BRK.B"]
SPLIT = Split("NVDA", ex_date=date(2025, 2, 10), numerator=10, denominator=1, announced=date(2025, 1, 20))


@pytest.fixture
def fakes(monkeypatch):
    market = FakeConfig(now=lambda: NOW, corporate_actions=CorporateActions(splits=[SPLIT]))
    with FakeProviders(market) as rest, FakeFlatFiles(FlatFilesConfig(symbols=tuple(SYMBOLS), fillers=30),
                                                      market=market) as files:
        for name, value in {**rest.env(), **files.env()}.items():
            monkeypatch.setenv(name, value)
        yield rest, files


def defs_for(tmp_path, store_url):
    return build_definitions(Settings(data_dir=tmp_path, database_url=store_url, history_start=date(2024, 1, 1),
                                      providers=("flatfiles", "alpaca"), rate_limits={}, http_backoff_s=0.02))


def run_box(defs, instance):
    return defs.resolve_job_def(ALL_BARS_JOB).execute_in_process(
        instance=instance, tags=range_tags((SYMBOLS[0], SESSIONS[0]), (SYMBOLS[-1], SESSIONS[-1])),
        raise_on_error=False)


def bar_calls(rest) -> int:
    return sum(1 for e in rest.log if e.provider == "alpaca" and "/bars" in e.path)


def test_a_box_costs_one_get_per_session_and_file_and_stores_the_rest_bars(fakes, tmp_path, store_url, instance):
    rest, files = fakes
    defs = defs_for(tmp_path, store_url)
    add_symbols(instance, store_url, SYMBOLS)
    assert defs.resolve_job_def(ACTIONS_JOB).execute_in_process(instance=instance).success
    rest.reset()
    files.reset()
    assert run_box(defs, instance).success
    assert files.gets(prefix="us_stocks_sip/minute_aggs_v1/") == len(SESSIONS)
    assert files.gets(prefix="us_stocks_sip/day_aggs_v1/") == len(SESSIONS)
    assert bar_calls(rest) == 0
    store = BarStore(shared_engine(store_url), xnys())
    for timeframe in (Timeframe.M15, Timeframe.D1):
        ledger = store.coverage(timeframe)
        assert len(ledger) == len(SYMBOLS) * len(SESSIONS) and set(ledger["provider"]) == {"flatfiles"}
        assert set(ledger["status"]) == {"complete"}
    assert set(store.coverage(Timeframe.H1)["provider"]) == {"resample:flatfiles"}
    parts = [(s, d) for s in SYMBOLS for d in SESSIONS]
    stored = store.read_bars(Timeframe.D1, parts).sort_values(["symbol", "ts"]).reset_index(drop=True)
    want = pd.concat([rest.bars(Timeframe.D1, s, d) for s, d in parts]).sort_values(["symbol", "ts"]).reset_index(drop=True)
    assert (stored["ts"].to_numpy() == want["ts"].to_numpy()).all()
    np.testing.assert_allclose(stored["close"], want["close"], atol=0.01)  # NVDA before its split: raw / 10
    np.testing.assert_allclose(stored["volume"], want["volume"], rtol=1e-3)
    nvda = stored[stored["symbol"] == "NVDA"]
    assert (nvda["close"].max() / nvda["close"].min()) < 2  # no 10x jump at the ex-date: one basis
    assert set(stored["adjustment"]) == {"split"} and stored["vwap"].isna().all()


def test_without_corporate_actions_the_flat_files_refuse_and_alpaca_serves(fakes, tmp_path, store_url, instance):
    rest, files = fakes
    defs = defs_for(tmp_path, store_url)
    add_symbols(instance, store_url, SYMBOLS)
    result = run_box(defs, instance)
    assert result.success
    assert files.gets() == 0  # every symbol unchecked: refused before any GET
    store = BarStore(shared_engine(store_url), xnys())
    assert set(store.coverage(Timeframe.M15)["provider"]) == {"alpaca:sip"}
    assert bar_calls(rest) >= 1

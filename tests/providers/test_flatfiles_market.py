"""The flat-files provider against the flat-files fake, generated from the same synthetic market as
the REST fakes: identical bars (raw and split-adjusted, m15 and d1, regular and extended hours),
fallback to Alpaca when a file is not published or outside the plan, `empty` for a ticker absent
from a published file, a defective day file's rows in rejected_bars, and a minute file lacking
closing minutes served by Alpaca for those tickers."""

from __future__ import annotations

from datetime import date
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.split_factors import KnownSplits
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.fakes.actions import CorporateActions, Split
from backfill_dagster.fakes.flatfiles import FakeFlatFiles, FlatFilesConfig
from backfill_dagster.ingest import fetch_partitions
from backfill_dagster.providers.alpaca import AlpacaProvider
from backfill_dagster.providers.base import Adjustment, FetchRequest
from backfill_dagster.providers.flatfiles import FlatFilesProvider
from backfill_dagster.providers.router import Router

NOW = pd.Timestamp("2024-12-31 18:00", tz="UTC")
SYMBOLS = ("AAPL", "MSFT", "NVDA", "BRK.B", "NA")
SPLIT = Split("NVDA", ex_date=date(2024, 6, 10), numerator=10, denominator=1, announced=date(2024, 5, 22))
# DST weeks, the split's eve and ex-date, an early close
SESSIONS = (date(2024, 3, 8), date(2024, 3, 11), date(2024, 6, 7), date(2024, 6, 10), date(2024, 11, 1),
            date(2024, 11, 4), date(2024, 11, 29))
KNOWN = KnownSplits(checked_from={s: date(2000, 1, 1) for s in SYMBOLS},
                    splits={"NVDA": [(SPLIT.ex_date, Fraction(10))]})


@pytest.fixture(scope="module")
def market():
    return FakeConfig(now=lambda: NOW, corporate_actions=CorporateActions(splits=[SPLIT]))


@pytest.fixture(scope="module")
def rest(market):
    with FakeProviders(market, host="127.0.0.1", port=0) as running:
        yield running


@pytest.fixture(scope="module")
def files(market):
    with FakeFlatFiles(FlatFilesConfig(symbols=SYMBOLS, fillers=20), market=market) as running:
        yield running


def flat(files, calendar, clock=lambda: NOW) -> FlatFilesProvider:
    return FlatFilesProvider.from_config(files.env(), calendar, clock)


def request(calendar, timeframe, day, adjustment, extended=False, symbols=SYMBOLS):
    if timeframe is Timeframe.D1:
        start, end = calendar.midnight(day), calendar.midnight(day) + timeframe.period
    else:
        start, end = calendar.window(day, extended)
    return FetchRequest(timeframe, tuple(symbols), (day,), start, end, extended=extended, adjustment=adjustment)


def assert_same_bars(got: pd.DataFrame, want: pd.DataFrame, *, atol_price=0.0, rtol_volume=0.0):
    got = got.sort_values(["symbol", "ts"]).reset_index(drop=True)
    want = want.sort_values(["symbol", "ts"]).reset_index(drop=True)
    assert len(got) == len(want) and len(want) > 0
    assert (got["ts"].to_numpy() == want["ts"].to_numpy()).all()
    for column in ("open", "high", "low", "close"):
        np.testing.assert_allclose(got[column], want[column], rtol=0, atol=atol_price + 1e-9, err_msg=column)
    np.testing.assert_allclose(got["volume"], want["volume"], rtol=rtol_volume, atol=1e-9)
    assert (got["trade_count"].astype(float).to_numpy() == want["trade_count"].astype(float).to_numpy()).all()
    assert got["vwap"].isna().all()


def rest_bars(rest, timeframe, day, adjusted, extended=False):
    """The REST fakes' bars of the store's hours (they serve 04:00-20:00 with extended hours; the
    store keeps 04:00 to close + 4 h, 17:00 after an early close)."""
    bars = pd.concat([rest.bars(timeframe, s, day, extended=extended, adjusted=adjusted) for s in SYMBOLS],
                     ignore_index=True)
    if timeframe is Timeframe.M15:
        start, end = xnys().window(day, extended)
        bars = bars[(bars["ts"] >= start) & (bars["ts"] < end)]
    return bars


@pytest.mark.parametrize("extended", [False, True])
def test_raw_m15_and_d1_equal_the_rest_fakes_bars(files, rest, calendar, extended):
    provider = flat(files, calendar)
    for day in SESSIONS:
        got = provider.fetch(request(calendar, Timeframe.M15, day, Adjustment.RAW, extended)).bars
        assert_same_bars(got, rest_bars(rest, Timeframe.M15, day, adjusted=False, extended=extended))
        got = provider.fetch(request(calendar, Timeframe.D1, day, Adjustment.RAW)).bars
        assert_same_bars(got, rest_bars(rest, Timeframe.D1, day, adjusted=False))
    assert provider.gets == 2 * len(SESSIONS)


def test_split_adjusted_bars_equal_the_rest_fakes_adjusted_bars(files, rest, calendar):
    """NVDA 10-for-1 on 2024-06-10: before it, flat-file prices are ten times the adjusted ones.
    The REST fakes round adjusted prices to cents and volume to shares; the flat files' raw cents
    divided by 10 are finer, so they agree within a cent and a share in ten."""
    provider = flat(files, calendar)
    provider.use_known_splits(lambda symbols: KNOWN)
    for day in SESSIONS:
        for timeframe in (Timeframe.M15, Timeframe.D1):
            got = provider.fetch(request(calendar, timeframe, day, Adjustment.SPLIT)).bars
            assert_same_bars(got, rest_bars(rest, timeframe, day, adjusted=True), atol_price=0.01, rtol_volume=1e-3)
    eve = provider.fetch(request(calendar, Timeframe.D1, date(2024, 6, 7), Adjustment.RAW, symbols=["NVDA"])).bars
    adjusted = provider.fetch(request(calendar, Timeframe.D1, date(2024, 6, 7), Adjustment.SPLIT, symbols=["NVDA"])).bars
    assert eve["close"].iloc[0] == pytest.approx(10 * adjusted["close"].iloc[0])


def test_identical_bars_through_the_store(files, rest, calendar, store):
    """Flat-file partitions stored (split-adjusted) hold the REST fakes' bars, vwap empty."""
    provider = flat(files, calendar)
    provider.use_known_splits(lambda symbols: KNOWN)
    parts = [(s, d) for s in SYMBOLS for d in SESSIONS[:4]]
    report = fetch_partitions(parts, Timeframe.M15, Router([provider], calendar), store, clock=lambda: NOW)
    assert report.ok and provider.gets == 4
    stored = store.read_bars(Timeframe.M15, parts)
    want = pd.concat([rest.bars(Timeframe.M15, s, d, extended=False) for s, d in parts], ignore_index=True)
    assert_same_bars(stored[list(want.columns)], want, atol_price=0.01, rtol_volume=1e-3)
    assert set(stored["provider"]) == {"flatfiles"} and set(stored["adjustment"]) == {"split"}


def alpaca(rest, calendar, clock=lambda: NOW):
    return AlpacaProvider.from_config(rest.env(), calendar, clock)


def test_unpublished_session_falls_back_to_alpaca_without_a_get(calendar, store):
    """At 10:00 New York on 2024-12-31 the 2024-12-30 files are not published yet (11:00): the
    provider does not ask, Alpaca serves that session; 2024-12-27's file is there."""
    morning = pd.Timestamp("2024-12-31 10:00", tz="America/New_York").tz_convert("UTC")
    market = FakeConfig(now=lambda: morning)
    with FakeProviders(market, host="127.0.0.1", port=0) as rest, \
            FakeFlatFiles(FlatFilesConfig(symbols=SYMBOLS, fillers=0), market=market) as files:
        provider = flat(files, calendar, clock=lambda: morning)
        backup = alpaca(rest, calendar, clock=lambda: morning)
        report = fetch_partitions([("AAPL", date(2024, 12, 30)), ("AAPL", date(2024, 12, 27))], Timeframe.D1,
                                  Router([provider, backup], calendar, adjustment=Adjustment.RAW), store,
                                  clock=lambda: morning)
        assert report.ok and files.gets() == 1
    ledger = store.coverage(Timeframe.D1).set_index("session")
    assert ledger.loc[date(2024, 12, 30), "provider"] == "alpaca:sip"
    assert ledger.loc[date(2024, 12, 27), "provider"] == "flatfiles"


@pytest.mark.parametrize("status", [403, 404])
def test_a_file_missing_after_publication_falls_back_to_alpaca(market, rest, calendar, store, status):
    """The minute file of 2024-03-11 is missing (as 2025-08-07's was for days) while its day file
    is there: the m15 partitions fall back, d1 is served from the file."""
    config = FlatFilesConfig(symbols=SYMBOLS, fillers=0, missing_minute_files=frozenset({date(2024, 3, 11)}),
                             missing_key_status=status)
    with FakeFlatFiles(config, market=market) as files:
        provider = flat(files, calendar)
        router = Router([provider, alpaca(rest, calendar)], calendar, adjustment=Adjustment.RAW)
        parts = [("AAPL", date(2024, 3, 11)), ("MSFT", date(2024, 3, 11))]
        m15 = fetch_partitions(parts, Timeframe.M15, router, store, clock=lambda: NOW)
        d1 = fetch_partitions(parts, Timeframe.D1, router, store, clock=lambda: NOW)
        assert m15.ok and d1.ok and files.gets() == 2
        assert [e.status for e in files.log if e.operation == "GetObject"] == [status, 200]
    assert set(store.coverage(Timeframe.M15)["provider"]) == {"alpaca:sip"}
    assert set(store.coverage(Timeframe.D1)["provider"]) == {"flatfiles"}


def test_outside_the_plan_is_403_and_falls_back(market, rest, calendar, store):
    config = FlatFilesConfig(symbols=SYMBOLS, fillers=0, plan_first_date=date(2024, 6, 1))
    with FakeFlatFiles(config, market=market) as files:
        provider = flat(files, calendar)
        report = fetch_partitions([("MSFT", date(2024, 3, 11))], Timeframe.D1,
                                  Router([provider, alpaca(rest, calendar)], calendar, adjustment=Adjustment.RAW),
                                  store, clock=lambda: NOW)
        assert report.ok and files.gets() == 1
    assert store.coverage(Timeframe.D1).iloc[0]["provider"] == "alpaca:sip"


def test_absent_ticker_is_empty(files, calendar, store):
    provider = flat(files, calendar)
    report = fetch_partitions([("ZZZA", date(2024, 3, 11)), ("AAPL", date(2024, 3, 11))], Timeframe.D1,
                              Router([provider], calendar, adjustment=Adjustment.RAW), store, clock=lambda: NOW)
    ledger = store.coverage(Timeframe.D1).set_index("symbol")
    assert ledger.loc["ZZZA", "status"] == "empty" and ledger.loc["AAPL", "status"] == "complete"
    assert report.empty == {("ZZZA", date(2024, 3, 11))}


def test_the_misdated_day_file_is_rejected_and_alpaca_serves(files, rest, calendar, store):
    day = date(2019, 8, 12)  # the fake's defective day file carries 2019-08-13 stamps
    provider = flat(files, calendar)
    report = fetch_partitions([("AAPL", day), ("MSFT", day)], Timeframe.D1,
                              Router([provider, alpaca(rest, calendar)], calendar, adjustment=Adjustment.RAW),
                              store, clock=lambda: NOW)
    assert report.ok and report.rejected_bars >= 2
    with store.engine.connect() as conn:
        rejected = pd.read_sql("SELECT symbol, reason, provider FROM rejected_bars", conn)
    assert {"AAPL", "MSFT"} <= set(rejected["symbol"])
    assert rejected["reason"].str.contains("not on the file's date 2019-08-12").all()
    assert set(store.coverage(Timeframe.D1)["provider"]) == {"alpaca:sip"}


def test_a_minute_file_lacking_closing_minutes_sends_those_tickers_to_alpaca(market, rest, calendar, store):
    """The defect of January 2025's minute files, here every ticker's on 2024-03-11: with no other
    provider their m15 partitions fail naming the missing minute and no bar of them is stored; with
    Alpaca behind, their m15 come from Alpaca, equal to the REST bars, and d1 still from the files."""
    day = date(2024, 3, 11)
    config = FlatFilesConfig(symbols=SYMBOLS, fillers=0, closing_minute_missing=(day, day, 1.0))
    with FakeFlatFiles(config, market=market) as files:
        rows = files.rows("minute", day)
        closing = calendar.close(day).value - 60 * 10**9
        assert not {t for t, ts in zip(rows.tickers, rows.window_start) if ts == closing}  # every ticker lost it
        provider = flat(files, calendar)
        parts = [("AAPL", day), ("MSFT", day), ("NVDA", day)]
        alone = fetch_partitions(parts, Timeframe.M15, Router([provider], calendar, adjustment=Adjustment.RAW),
                                 store, clock=lambda: NOW)
        assert set(alone.failures) == set(parts) and not alone.empty
        assert all("closing minute (15:59 New York)" in why and "polygon-io/issues#329" in why
                   for why in alone.failures.values()), alone.failures
        assert set(store.coverage(Timeframe.M15)["status"]) == {"failed"}
        assert store.read_bars(Timeframe.M15, parts).empty
        router = Router([provider, alpaca(rest, calendar)], calendar, adjustment=Adjustment.RAW)
        m15 = fetch_partitions(parts, Timeframe.M15, router, store, clock=lambda: NOW)
        d1 = fetch_partitions(parts, Timeframe.D1, router, store, clock=lambda: NOW)
        assert m15.ok and d1.ok
    ledger = store.coverage(Timeframe.M15)
    assert set(ledger["provider"]) == {"alpaca:sip"} and set(ledger["status"]) == {"complete"}
    assert set(store.coverage(Timeframe.D1)["provider"]) == {"flatfiles"}
    want = rest_bars(rest, Timeframe.M15, day, adjusted=False).query("symbol in ['AAPL', 'MSFT', 'NVDA']")
    got = store.read_bars(Timeframe.M15, parts)
    assert_same_bars(got.assign(vwap=np.nan), want.assign(vwap=np.nan))  # Alpaca's own vwap aside


def test_only_a_liquid_ticker_s_missing_closing_minute_is_the_files_defect(market, calendar):
    """Every ticker's minute file has its closing minute on an ordinary session (a listed stock
    trades in it); in the defect's sessions about 0.4% of tickers lose it, drawn per session."""
    config = FlatFilesConfig(symbols=SYMBOLS, fillers=500)
    with FakeFlatFiles(config, market=market) as files:
        tickers = config.tickers(market)
        ordinary = date(2024, 3, 11)
        assert config.without_closing_minute(tickers, ordinary) == set()
        rows = files.rows("minute", ordinary)
        closing = calendar.close(ordinary).value - 60 * 10**9
        with_close = {t for t, ts in zip(rows.tickers, rows.window_start) if ts == closing}
        assert with_close == set(tickers)
        january = [calendar.next_session(date(2025, 1, 1)), date(2025, 1, 15)]
        lost = [config.without_closing_minute(tickers, d) for d in january]
        assert all(1 <= len(x) <= 12 for x in lost) and lost[0] != lost[1]

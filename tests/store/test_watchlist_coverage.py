from datetime import date

import pytest

from backfill_dagster.domain.symbols import InvalidSymbolError
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.store import CoverageEntry, Watchlist
from backfill_dagster.store.coverage import coverage_detail, coverage_summary
from tests.conftest import utc


def test_watchlist_add_remove_reactivate(store):
    wl = Watchlist(store.engine)
    assert wl.add(["msft", "AAPL"]).changed == ["MSFT", "AAPL"]
    assert wl.add(["AAPL", "NVDA"]).changed == ["NVDA"]
    assert wl.active() == ["MSFT", "AAPL", "NVDA"] or set(wl.active()) == {"MSFT", "AAPL", "NVDA"}
    assert wl.remove(["AAPL", "TSLA"]).changed == ["AAPL"]
    assert "AAPL" not in wl.active()
    assert wl.add(["AAPL"]).changed == ["AAPL"]
    assert {e["symbol"]: e["active"] for e in wl.entries()} == {"MSFT": True, "AAPL": True, "NVDA": True}


def test_watchlist_refuses_invalid_symbols_and_writes_nothing(store):
    wl = Watchlist(store.engine)
    with pytest.raises(InvalidSymbolError, match="'A|B'"):
        wl.add(["GOOD", "A|B"])
    assert wl.entries() == []


def test_coverage_summary_and_detail(store):
    at = utc("2025-01-02 00:00")
    entries = [CoverageEntry("AAPL", date(2024, 11, 25), 26, 26, True), CoverageEntry("AAPL", date(2024, 11, 26), 20, 26, False)]
    store.replace_partitions(Timeframe.M15, store.read_bars(Timeframe.M15, []), entries, provider="demo", adjustment="split", fetched_at=at)
    store.record_failures(Timeframe.M15, {("AAPL", date(2024, 11, 27)): "boom"}, expected={date(2024, 11, 27): 26}, at=at)
    summary = coverage_summary(store.engine)
    row = summary.iloc[0]
    assert (row.symbol, row.timeframe, row.complete, row.partial, row.failed, row.bars, row.expected) == ("AAPL", "m15", 1, 1, 1, 46, 78)
    assert row.first_session == date(2024, 11, 25) and row.last_session == date(2024, 11, 26)
    assert row.last_fetch == at
    detail = coverage_detail(store.engine, "AAPL", "m15")
    assert list(detail["status"]) == ["complete", "partial", "failed"]
    assert coverage_summary(store.engine, symbols=["MSFT"]).empty

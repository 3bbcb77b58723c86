"""`backfill-dagster coverage` reads the ledger against the gap sensor's horizon: what the sensor
still fetches, what lies before it and nothing fetches, which symbols left the watchlist, and in
`--detail` the sessions never fetched."""

from datetime import timedelta

import pandas as pd
import pytest

from backfill_dagster.cli import main
from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.gap_policy import settled_sessions
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.store import BarStore, CoverageEntry, Watchlist, shared_engine


@pytest.fixture
def ledger(tmp_path, store_url, monkeypatch):
    """AAPL (active) and MSFT (removed): the m15 horizon (10 days here) but its first two sessions,
    and three older sessions, 60 days back, that a manual backfill fetched."""
    monkeypatch.setenv("BACKFILL_DATABASE_URL", store_url)
    monkeypatch.setenv("BACKFILL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BACKFILL_GAP_DAYS_M15", "10")
    calendar = xnys()
    now = pd.Timestamp.now(tz="UTC")
    today = now.tz_convert("America/New_York").date()
    horizon = settled_sessions(calendar, today - timedelta(days=10), now)
    older = calendar.sessions(today - timedelta(days=60), today - timedelta(days=50))[:3]
    engine = shared_engine(store_url)
    Watchlist(engine).add(["AAPL", "MSFT"])
    Watchlist(engine).remove(["MSFT"])
    store = BarStore(engine, calendar)
    for symbol in ("AAPL", "MSFT"):
        entries = [CoverageEntry(symbol, d, 26, 26, True) for d in [*older, *horizon[2:]]]
        store.replace_partitions(Timeframe.M15, store.read_bars(Timeframe.M15, []), entries, provider="demo",
                                 adjustment="split", fetched_at=now)
    between = len(calendar.sessions(older[0], horizon[0] - timedelta(days=1)))
    gap_from = calendar.sessions(older[-1] + timedelta(days=1), horizon[0])[0]
    return {"horizon": horizon, "older": older, "between": between, "gap_from": gap_from}


def test_coverage_counts_the_horizon_apart_from_older_sessions_and_marks_removed_symbols(ledger, capsys):
    assert main(["coverage", "--timeframe", "m15"]) == 0
    out = capsys.readouterr().out
    header, _, aapl, msft = out.splitlines()[:4]
    assert header.split()[:5] == ["symbol", "watchlist", "tf", "horizon", "older"]
    held = len(ledger["horizon"]) - 2
    assert aapl.split()[:6] == ["AAPL", "active", "m15", f"{held}/{len(ledger['horizon'])}", "3", str(held + 3)]
    assert msft.split()[:2] == ["MSFT", "removed"]
    assert "The coverage_gaps sensor fetches the others of active symbols while the daemon runs (dagster dev): " \
           "2 symbol-session(s) to go." in out  # AAPL's two; MSFT's are nobody's
    assert (f"never fetched unless asked (ensure-coverage --sessions N, or a range run): AAPL m15: "
            f"{ledger['between'] - 3} of the {ledger['between']} closed sessions from {ledger['older'][0]}") in out
    assert "removed: MSFT left the watchlist: nothing fetches it any more" in out


def test_coverage_detail_lists_the_sessions_never_fetched_saying_which_will_be(ledger, capsys):
    horizon = ledger["horizon"]
    assert main(["coverage", "--symbol", "AAPL", "--timeframe", "m15", "--detail"]) == 0
    lines = capsys.readouterr().out.splitlines()
    missing = [line for line in lines if " missing " in line]
    assert len(missing) == 2
    assert missing[0].startswith(f"{ledger['gap_from']} m15  missing  {ledger['between'] - 3} session(s) to ")
    assert "before the gap sensor's horizon" in missing[0] and "nothing fetches them unless asked" in missing[0]
    assert missing[1].startswith(f"{horizon[0]} m15  missing  2 session(s) to {horizon[1]}, never fetched: in the horizon: "
                                 "the coverage_gaps sensor fetches them")
    assert sum(" complete " in line for line in lines) == len(horizon) - 2 + 3
    assert main(["coverage", "--symbol", "MSFT", "--timeframe", "m15", "--detail"]) == 0
    assert "in the horizon, but the symbol is not on the watchlist: nothing fetches them" in capsys.readouterr().out

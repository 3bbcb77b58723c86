"""Coverage you can trust, end to end: `dagster asset materialize` in its own process against the
fake providers on loopback, on both store backends. A provider that first serves a session and then
answers it empty must not cost the stored bars, nor make the ledger say `complete` with 0 bars, and
the step's failure names provider, symbol and session."""

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from backfill_dagster.cli import main
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.store import shared_engine

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SESSION = date(2025, 3, 4)
KEY = f"{SESSION.isoformat()}|AAPL"

pytestmark = pytest.mark.slow


@pytest.fixture
def deployment(tmp_path, store_url, monkeypatch):
    with FakeProviders(FakeConfig()) as fakes:
        home = tmp_path / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        values = {
            **fakes.env(),
            "DAGSTER_HOME": str(home),
            "BACKFILL_DATABASE_URL": store_url,
            "BACKFILL_DATA_DIR": str(tmp_path / "data"),
            "BACKFILL_PROVIDERS": "alpaca",
            "BACKFILL_HTTP_BACKOFF_SECONDS": "0.01",
        }
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        assert main(["watchlist", "add", "AAPL"]) == 0
        yield fakes, {**os.environ, **values}


def materialize(env):
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "backfill_dagster", "--select", "bars_m15",
               "--partition", KEY]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def ledger(url):
    with shared_engine(url).connect() as conn:
        return conn.exec_driver_sql(
            "SELECT status, bars, error FROM bar_coverage WHERE symbol = 'AAPL' AND timeframe = 'm15'"
        ).one()


def stored_bars(url):
    with shared_engine(url).connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM ohlc_bars WHERE symbol = 'AAPL'").scalar_one()


def test_an_empty_answer_after_a_good_one_keeps_the_bars_and_fails_naming_it(deployment, store_url):
    fakes, env = deployment
    first = materialize(env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert stored_bars(store_url) == 26 and ledger(store_url)[:2] == ("complete", 26)

    fakes.config.withheld.add(("AAPL", SESSION))  # the provider now answers the session with no bars
    second = materialize(env)
    output = second.stdout + second.stderr
    assert second.returncode != 0
    assert f"AAPL {SESSION.isoformat()} m15: alpaca:sip answered no bars for this closed session" in output
    assert stored_bars(store_url) == 26
    status, bars, error = ledger(store_url)
    assert (status, bars) == ("complete", 26)  # the stored bars are still every bar there is
    assert "answered no bars" in error


def test_a_session_no_provider_has_bars_for_is_empty_not_complete(deployment, store_url):
    fakes, env = deployment
    fakes.config.withheld.add(("AAPL", SESSION))
    result = materialize(env)
    assert result.returncode != 0
    assert f"AAPL {SESSION.isoformat()} m15: alpaca:sip answered no bars" in result.stdout + result.stderr
    assert ledger(store_url)[:2] == ("empty", 0)

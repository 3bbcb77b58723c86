"""The operator CLI and Dagster's own CLI against the project, as users run them."""

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from backfill_dagster.calendar import xnys
from backfill_dagster.cli import main
from backfill_dagster.store import shared_engine

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path, store_url, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    values = {"DAGSTER_HOME": str(home), "BACKFILL_DATABASE_URL": store_url, "BACKFILL_DATA_DIR": str(tmp_path / "data")}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return {**os.environ, **values}


def run(args, env, check=True):
    proc = subprocess.run([str(a) for a in args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def rows(url):
    with shared_engine(url).connect() as conn:
        return conn.execute(sa.text("SELECT * FROM ohlc_bars ORDER BY symbol, timeframe, ts")).all()


def test_watchlist_commands_edit_the_table_and_the_partitions(env, capsys):
    assert main(["watchlist", "add", "aapl", "MSFT"]) == 0
    instance = dg.DagsterInstance.get()
    assert instance.get_dynamic_partitions("symbols") == ["AAPL", "MSFT"]
    assert main(["watchlist", "remove", "MSFT"]) == 0
    assert instance.get_dynamic_partitions("symbols") == ["AAPL"]
    assert main(["watchlist", "list"]) == 0
    out = capsys.readouterr().out
    assert "AAPL       active" in out and "MSFT       inactive" in out


def test_bad_input_is_a_clear_error_and_writes_nothing(env, capsys, store_url):
    assert main(["watchlist", "add", "GOOD", "BA|D"]) == 2
    assert "symbol 'BA|D' is not a valid ticker" in capsys.readouterr().err
    with shared_engine(store_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM watchlist").scalar() == 0
    assert main(["coverage", "--timeframe", "m5"]) == 2
    assert "unknown timeframe 'm5'" in capsys.readouterr().err


def test_unreachable_database_url_is_a_clear_error(env, monkeypatch, capsys):
    monkeypatch.setenv("BACKFILL_DATABASE_URL", "postgresql://u:topsecret@127.0.0.1:1/db")
    assert main(["watchlist", "list"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the database postgresql+psycopg://u:***@127.0.0.1:1/db" in err and "topsecret" not in err


def test_dagster_asset_materialize_one_partition_then_again_is_identical(env, store_url):
    assert main(["watchlist", "add", "AAPL", "MSFT"]) == 0
    command = [BIN / "dagster", "asset", "materialize", "-m", "backfill_dagster", "--select", "bars_m15", "--partition", "2024-11-29|AAPL"]
    run(command, env)
    first = rows(store_url)
    assert len(first) == 14 and {r.symbol for r in first} == {"AAPL"}
    run(command, env)
    assert rows(store_url) == first


def test_dagster_asset_materialize_a_range(env, store_url, capsys):
    assert main(["watchlist", "add", "AAPL", "MSFT"]) == 0
    run([BIN / "dagster", "asset", "materialize", "-m", "backfill_dagster", "--select", "bars_m15,bars_h1,bars_h4,bars_d1",
         "--partition-range", "2024-11-25|AAPL...2024-11-29|MSFT"], env)
    with shared_engine(store_url).connect() as conn:
        counts = dict(conn.exec_driver_sql("SELECT timeframe, count(*) FROM bar_coverage WHERE status = 'complete' GROUP BY timeframe").all())
    assert counts == {"m15": 8, "h1": 8, "h4": 8, "d1": 8}
    instance = dg.DagsterInstance.get()
    assert len(instance.get_materialized_partitions(dg.AssetKey("bars_h4"))) == 8
    # coverage: sessions complete out of the closed sessions due since the first one in the ledger
    capsys.readouterr()
    assert main(["coverage", "--timeframe", "m15"]) == 0
    out = capsys.readouterr().out
    now = pd.Timestamp.now(tz="UTC")
    cal = xnys()
    due = sum(cal.close(d) <= now for d in cal.sessions(date(2024, 11, 25), now.tz_convert("America/New_York").date()))
    for symbol in ("AAPL", "MSFT"):
        line = next(x for x in out.splitlines() if x.startswith(symbol))
        assert line.split()[:4] == [symbol, "m15", f"4/{due}", "4"], line


def test_dagster_asset_materialize_refuses_a_holiday(env, store_url):
    assert main(["watchlist", "add", "AAPL"]) == 0
    proc = run([BIN / "dagster", "asset", "materialize", "-m", "backfill_dagster", "--select", "bars_m15", "--partition", "2024-11-28|AAPL"], env, check=False)
    assert proc.returncode != 0
    assert "2024-11-28|AAPL" in proc.stderr + proc.stdout
    assert rows(store_url) == []

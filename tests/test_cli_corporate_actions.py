"""`backfill-dagster corporate-actions SYMBOL` and the repair lines of `coverage`."""

from datetime import UTC, date, datetime

import pytest

from backfill_dagster.cli import main
from backfill_dagster.domain.corporate_actions import RepairState, dividend_record, split_record
from backfill_dagster.store import shared_engine
from backfill_dagster.store.actions import ActionStore

T0 = datetime(2024, 11, 1, 12, tzinfo=UTC)
T1 = datetime(2024, 12, 3, 12, tzinfo=UTC)


@pytest.fixture
def env(tmp_path, store_url, monkeypatch):
    monkeypatch.setenv("BACKFILL_DATABASE_URL", store_url)
    monkeypatch.setenv("BACKFILL_DATA_DIR", str(tmp_path / "data"))
    return ActionStore(shared_engine(store_url))


def record(store, provider, records, now):
    store.record(provider, ["AAPL"], records, checked_from=date(2024, 1, 1), checked_through=date(2025, 3, 3),
                 now=now, preference=["alpaca", "polygon"])


def test_it_lists_each_providers_report_ratio_ex_date_first_seen_and_repair(env, capsys):
    record(env, "alpaca", [dividend_record("AAPL", date(2024, 8, 12), "alpaca", 0.25, "d-1")], T0)
    record(env, "polygon", [], T0)
    record(env, "alpaca", [split_record("AAPL", date(2024, 11, 27), "alpaca", 1, 4, "s-1")], T1)
    record(env, "polygon", [split_record("AAPL", date(2024, 11, 27), "polygon", 1, 2, "E9")], T1)
    env.set_repair("AAPL", date(2024, 11, 27), RepairState.REPAIRING, now=T1, backfill_id="bf42", attempts=1,
                   note="3 stale partition(s): m15 2 (2024-11-25..2024-11-26)")
    assert main(["corporate-actions", "aapl"]) == 0
    out = capsys.readouterr().out
    assert "2024-08-12 dividend 0.25    2024-11-01 12:00 -" in out
    assert ("2024-11-27 split 4:1        2024-12-03 12:00 repairing (backfill bf42, 1 launched): 3 stale partition(s): "
            "m15 2 (2024-11-25..2024-11-26); bars fetched before 2024-12-03 12:00Z were on the old basis") in out
    assert "  * alpaca   split 4:1        first seen 2024-12-03 12:00Z, last 2024-12-03 12:00Z id s-1" in out
    assert "    polygon  split 2:1        first seen 2024-12-03 12:00Z, last 2024-12-03 12:00Z id E9" in out
    assert "asked: alpaca 2024-12-03 12:00Z (ex-dates 2024-01-01..2025-03-03), polygon 2024-12-03 12:00Z" in out

    assert main(["coverage"]) == 0
    out = capsys.readouterr().out
    assert "history being repaired after a split" in out
    assert "  AAPL 4:1 ex 2024-11-27: repairing, backfill bf42: 3 stale partition(s)" in out
    assert main(["coverage", "--symbol", "MSFT"]) == 0
    assert "history being repaired" not in capsys.readouterr().out


def test_a_symbol_never_asked_about_says_so_and_bad_input_is_refused(env, capsys, monkeypatch):
    monkeypatch.setenv("BACKFILL_PROVIDERS", "demo,yahoo,polygon")
    assert main(["corporate-actions", "MSFT"]) == 0
    assert ("no corporate actions known for MSFT: no provider was asked yet (the corporate_actions asset asks "
            "yahoo and polygon)") in capsys.readouterr().out
    record(env, "alpaca", [], T0)
    assert main(["corporate-actions", "AAPL"]) == 0
    assert "no corporate actions known for AAPL; asked: alpaca 2024-11-01 12:00Z" in capsys.readouterr().out
    assert main(["corporate-actions", "AA|PL"]) == 2
    assert "symbol 'AA|PL' is not a valid ticker" in capsys.readouterr().err


def test_with_no_provider_publishing_actions_it_says_none_will_be_asked(env, capsys, monkeypatch):
    monkeypatch.setenv("BACKFILL_PROVIDERS", "demo,tradier")
    assert main(["corporate-actions", "AAPL"]) == 0
    out = capsys.readouterr().out
    assert ("no corporate actions known for AAPL: no provider in BACKFILL_PROVIDERS publishes them (of the known "
            "providers, alpaca, polygon and yahoo do)") in out
    assert "asks" not in out

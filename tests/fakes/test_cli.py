"""`python -m backfill_dagster.fakes`: prints a URL that serves, stops on SIGTERM."""

from __future__ import annotations

import subprocess
import sys

import httpx


def test_cli_prints_a_serving_url_and_stops_on_terminate():
    process = subprocess.Popen(
        [sys.executable, "-m", "backfill_dagster.fakes", "--host", "127.0.0.1", "--port", "0",
         "--rate-limit", "polygon=1", "--rate-window", "60", "--seed", "3", "--now", "2024-03-01T18:00:00Z",
         "--quota-exhausted", "tradier=3600", "--misdated", "alpaca=1", "--polygon-epoch-seconds"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), process.stderr.read() if process.poll() is not None else url
        path = "/v2/aggs/ticker/AAPL/range/1/day/2024-01-02/2024-01-05"
        with httpx.Client(base_url=url, timeout=10) as client:
            first = client.get(path, params={"apiKey": "fake-polygon-key"})
            second = client.get(path, params={"apiKey": "fake-polygon-key"})
            friday = client.get("/v2/stocks/bars", params={
                "symbols": "AAPL", "timeframe": "1Day", "start": "2024-01-08", "end": "2024-01-08", "feed": "iex"},
                headers={"APCA-API-KEY-ID": "fake-alpaca-key", "APCA-API-SECRET-KEY": "fake-alpaca-secret"})
            spent = client.get("/v1/markets/history", params={"symbol": "AAPL"},
                               headers={"Authorization": "Bearer fake-tradier-token", "Accept": "application/json"})
        assert first.status_code == 200 and len(first.json()["results"]) == 4
        assert first.json()["results"][0]["t"] == 1704171600  # --polygon-epoch-seconds: 2024-01-02 05:00Z
        # --misdated alpaca=1: Monday 2024-01-08 is answered with Friday's bar
        assert [b["t"] for b in friday.json()["bars"]["AAPL"]] == ["2024-01-05T05:00:00Z"]
        assert second.status_code == 429  # --rate-limit polygon=1 is honoured
        assert spent.status_code == 429 and spent.headers["Retry-After"] == "3600"  # --quota-exhausted
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert process.returncode == 0


def test_cli_refuses_a_bad_rate_limit():
    result = subprocess.run(
        [sys.executable, "-m", "backfill_dagster.fakes", "--rate-limit", "iex=5"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "PROVIDER=N" in result.stderr


def test_cli_refuses_a_bad_quota():
    result = subprocess.run(
        [sys.executable, "-m", "backfill_dagster.fakes", "--quota-exhausted", "alpaca=soon"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "SECONDS must be a number" in result.stderr


def test_cli_refuses_a_provider_it_cannot_misdate():
    result = subprocess.run(
        [sys.executable, "-m", "backfill_dagster.fakes", "--misdated", "yahoo=1"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "PROVIDER=SESSIONS" in result.stderr

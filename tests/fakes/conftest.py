"""Fixtures for the provider fakes: a fresh server per test, on a fixed clock, and httpx clients."""

from __future__ import annotations

import httpx
import pandas as pd
import pytest

from backfill_dagster.fakes import FakeConfig, FakeProviders

# Friday 2024-03-01 13:00 New York: the session is open; earlier sessions are closed.
NOW = pd.Timestamp("2024-03-01T18:00:00Z")
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) tests"


@pytest.fixture
def config() -> FakeConfig:
    return FakeConfig(now=lambda: NOW)


@pytest.fixture
def fakes(config):
    with FakeProviders(config, host="127.0.0.1", port=0) as running:
        yield running


@pytest.fixture
def http(fakes):
    with httpx.Client(base_url=fakes.url, timeout=10.0, headers={"User-Agent": BROWSER}) as client:
        yield client


def alpaca_headers(config: FakeConfig) -> dict[str, str]:
    return {"APCA-API-KEY-ID": config.alpaca_key, "APCA-API-SECRET-KEY": config.alpaca_secret}


def tradier_headers(config: FakeConfig, accept: str = "application/json") -> dict[str, str]:
    return {"Authorization": f"Bearer {config.tradier_token}", "Accept": accept}


def epoch_s(text: str) -> int:
    return int(pd.Timestamp(text).timestamp())

"""Bad input, one table: every case gets a clear error naming what is wrong, and writes nothing.

Symbols, partition keys, dates, timeframes, settings, database URLs and malformed bars from a
provider. After each case the store holds no watchlist row, no bar and no coverage row (a bad bar
is kept in rejected_bars with its reason, never in ohlc_bars).
"""

from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.synthetic import synthetic_session_m15
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.ingest import fetch_partitions
from backfill_dagster.orchestration.partitions import parse_partition_key
from backfill_dagster.providers.base import Capabilities, FetchResult, Provider
from backfill_dagster.providers.registry import build_providers
from backfill_dagster.providers.router import Router
from backfill_dagster.settings import Settings
from backfill_dagster.store import BarStore, Watchlist, create_engine, shared_engine
from tests.conftest import fixed_clock

DAY = date(2024, 11, 26)
NOW = fixed_clock("2024-12-02 18:00")


class Serving(Provider):
    """A provider that serves a given (bad) frame for AAPL on DAY."""

    name = "bad"
    capabilities = Capabilities(timeframes=frozenset({Timeframe.M15, Timeframe.D1}),
                                adjustments=frozenset({"split", "raw"}), max_symbols_per_request=10)

    def __init__(self, mutate):
        self.mutate = mutate

    def fetch(self, request):
        bars = synthetic_session_m15("AAPL", DAY, xnys())
        lo, hi = xnys().window(DAY)
        bars = bars[(bars.ts >= lo) & (bars.ts < hi)].reset_index(drop=True)
        return FetchResult(bars=self.mutate(bars), api_calls=1)


def fetch_bad(mutate):
    def run(url):
        store = BarStore(shared_engine(url), xnys())
        report = fetch_partitions([("AAPL", DAY)], Timeframe.M15, Router([Serving(mutate)], xnys()), store, clock=NOW)
        assert not report.ok and report.bars_written == 0
        raise ValueError(report.failure_summary())

    return run


def watch(*symbols):
    return lambda url: Watchlist(shared_engine(url)).add(symbols)


def key(text):
    return lambda _url: parse_partition_key(text, xnys())


def settings(**env):
    return lambda _url: Settings.from_env(env)


def database(url):
    return lambda _url: create_engine(url)


def fetch_session(day):
    def run(url):
        store = BarStore(shared_engine(url), xnys())
        fetch_partitions([("AAPL", day)], Timeframe.M15, Router(build_providers(["demo"], {}, xnys(), NOW), xnys()),
                         store, clock=NOW)

    return run


CASES = [
    # symbols
    ("symbol empty", watch(""), "symbol is empty"),
    ("symbol too long", watch("ABCDEFGHIJK"), "at most 10"),
    ("symbol with space", watch("AA PL"), "contains ' '"),
    ("symbol with pipe", watch("AA|PL"), "contains '|'"),
    ("symbol with SQL", watch("AAPL;DROP"), "contains ';'"),
    ("symbol non-ASCII", watch("ÄPFEL"), "contains 'Ä'"),
    ("symbol with slash", watch("BRK/B"), "contains '/'"),
    ("symbol leading dash", watch("-X"), "must start with a letter or digit"),
    ("one bad symbol among good", watch("AAPL", "MSFT", "BAD SYMBOL"), "contains ' '"),
    ("symbol not a string", watch(None), "symbol None is not a string"),
    # partition keys and dates
    ("key holiday", key("2024-11-28|AAPL"), "Thanksgiving"),
    ("key saturday", key("2024-11-30|AAPL"), "Saturday"),
    ("key ad-hoc closure", key("2025-01-09|AAPL"), "not an NYSE trading session"),
    ("key month 13", key("2024-13-01|AAPL"), "is not a date"),
    ("key Feb 30", key("2024-02-30|AAPL"), "is not a date"),
    ("key reversed", key("AAPL|2024-11-29"), "not a date"),
    ("key without symbol", key("2024-11-29"), "is not '<session date>|<SYMBOL>'"),
    ("key three parts", key("2024-11-29|AAPL|X"), "is not '<session date>|<SYMBOL>'"),
    ("key lower-case symbol", key("2024-11-29|aapl"), "upper-case"),
    ("key beyond calendar", key("2030-01-02|AAPL"), "outside the calendar's range"),
    ("fetch a holiday", fetch_session(date(2024, 11, 28)), "Thanksgiving"),
    ("fetch a session not yet open", fetch_session(date(2024, 12, 3)), "has not opened yet"),
    # timeframes and settings
    ("timeframe m5", lambda _url: Timeframe.parse("m5"), "unknown timeframe 'm5'"),
    ("history start not a date", settings(BACKFILL_HISTORY_START="2024-02-30"), "is not a date"),
    ("history start too early", settings(BACKFILL_HISTORY_START="1990-01-01"), "calendar's first day"),
    ("extended hours not a boolean", settings(BACKFILL_EXTENDED_HOURS="maybe"), "is not a boolean"),
    ("providers list empty", settings(BACKFILL_PROVIDERS=","), "names no provider"),
    ("unknown adjustment", settings(BACKFILL_ADJUSTMENT="dividend"), "unknown adjustment 'dividend'"),
    ("completeness ratio above 1", settings(BACKFILL_COMPLETENESS_WARN_BELOW="2"), "between 0 and 1"),
    ("negative rate limit", settings(ALPACA_RATE_LIMIT="-1"), "cannot be negative"),
    ("rate window zero", settings(BACKFILL_RATE_WINDOW_SECONDS="0"), "more than 0 seconds"),
    ("unknown provider", lambda _url: build_providers(["bloomberg"], {}, xnys(), NOW), "unknown provider(s) 'bloomberg'"),
    ("provider listed twice", lambda _url: build_providers(["demo", "demo"], {}, xnys(), NOW), "lists a provider twice"),
    # database URLs
    ("database URL empty", database(""), "database URL is empty"),
    ("database URL malformed", database("not a url"), "malformed"),
    ("database unsupported", database("mysql://root@localhost/db"), "not supported"),
    ("database unreachable", database("postgresql://postgres@127.0.0.1:1/nothing"), "cannot reach the database"),
    # malformed bars from a provider: rejected with reasons, kept in rejected_bars
    ("bar with negative volume", fetch_bad(lambda b: b.assign(volume=-b.volume)), "volume is negative"),
    ("bar with high below low", fetch_bad(lambda b: b.assign(high=b.low - 1)), "high is below low"),
    ("bar with NaN close", fetch_bad(lambda b: b.assign(close=float("nan"))), "close is missing or NaN"),
    ("bar at a time outside the session", fetch_bad(lambda b: b.assign(ts=b.ts + pd.Timedelta(days=2))), "not on an NYSE session day"),
    ("bar duplicated", fetch_bad(lambda b: pd.concat([b, b])), "more than one bar for this symbol and start"),
    ("bar of another symbol only", fetch_bad(lambda b: b.assign(symbol="MSFT")), "symbol was not requested"),
]


@pytest.mark.parametrize("name, action, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly_and_writes_nothing(name, action, message, sqlite_url):
    with pytest.raises(Exception) as caught:
        action(sqlite_url)
    assert message in str(caught.value), f"{name}: {caught.value!r}"
    assert "Traceback" not in str(caught.value)
    with shared_engine(sqlite_url).connect() as conn:
        for table in ("watchlist", "ohlc_bars", "bar_coverage"):
            rows = conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE 1 = 1")).scalar_one()
            if table == "bar_coverage":  # a failed fetch is recorded as failed, never as covered
                rows = conn.execute(sa.text("SELECT count(*) FROM bar_coverage WHERE status <> 'failed'")).scalar_one()
            assert rows == 0, (name, table)


def test_there_are_at_least_thirty_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 30

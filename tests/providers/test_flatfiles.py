"""The flat-files provider against a real loopback S3 server (moto's server mode): one GET per
session for every symbol, availability (404/403 is never `empty`), rejected rows, split adjustment
with the store's known splits, the local cache, and its settings."""

from __future__ import annotations

import gzip
from datetime import date
from fractions import Fraction

import boto3
import pandas as pd
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from moto.server import ThreadedMotoServer

from backfill_dagster.domain.provider_errors import ProviderError
from backfill_dagster.domain.split_factors import KnownSplits
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.ingest import fetch_partitions
from backfill_dagster.providers.base import Adjustment, FetchRequest, ProviderConfigError
from backfill_dagster.providers.demo import DemoProvider
from backfill_dagster.providers.flatfiles import FlatFilesProvider, file_key
from backfill_dagster.providers.router import Router
from backfill_dagster.store import BarStore
from tests.conftest import fixed_clock

HEADER = "ticker,volume,open,close,high,low,window_start,transactions"
LATER = fixed_clock("2024-12-31 00:00")
MON, TUE = date(2024, 3, 11), date(2024, 3, 12)


@pytest.fixture(scope="module")
def s3_url():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_url, request):
    """A fresh bucket per test (moto keeps state for the server's life)."""
    name = "ff-" + str(abs(hash(request.node.nodeid)))[:12]
    client = _client(s3_url)
    client.create_bucket(Bucket=name)
    return client, name


def _client(url):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                        aws_secret_access_key="test",
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))


def put(bucket, timeframe, day, lines):
    client, name = bucket
    body = gzip.compress(("\n".join([HEADER, *lines]) + "\n").encode())
    client.put_object(Bucket=name, Key=file_key(timeframe, day), Body=body)


def ns(text: str) -> int:
    return pd.Timestamp(text, tz="America/New_York").value


def minute_rows(ticker, day, count=390, start="09:30", price=100.0, step=0.01):
    first = pd.Timestamp(f"{day} {start}", tz="America/New_York")
    out = []
    for i in range(count):
        p = round(price + i * step, 2)
        out.append(f"{ticker},10,{p},{p},{p + 0.01:.2f},{p - 0.01:.2f},{(first + pd.Timedelta(minutes=i)).value},1")
    return out


def day_row(ticker, day, o=100.0, c=101.0, h=102.0, low=99.0, v=1000):
    return f"{ticker},{v},{o},{c},{h},{low},{ns(f'{day} 00:00')},50"


def provider(s3_url, bucket, calendar, **kw) -> FlatFilesProvider:
    return FlatFilesProvider(calendar, LATER, endpoint_url=s3_url, bucket=bucket[1], access_key_id="test",
                             secret_access_key="test", **kw)


def request_for(calendar, timeframe, symbols, day, adjustment=Adjustment.RAW, extended=False):
    start, end = (calendar.midnight(day), calendar.midnight(day) + timeframe.period) if timeframe is Timeframe.D1 \
        else calendar.window(day, extended)
    return FetchRequest(timeframe, tuple(symbols), (day,), start, end, extended=extended, adjustment=adjustment)


def test_one_get_serves_every_symbol_of_a_session(s3_url, bucket, calendar):
    put(bucket, Timeframe.M15, MON, [*minute_rows("AAPL", MON), *minute_rows("MSFT", MON), *minute_rows("OTHER", MON)])
    p = provider(s3_url, bucket, calendar)
    result = p.fetch(request_for(calendar, Timeframe.M15, ["AAPL", "MSFT"], MON))
    assert result.api_calls == 1 and p.gets == 1 and p.bytes_read > 0
    assert result.bars.groupby("symbol").size().to_dict() == {"AAPL": 26, "MSFT": 26}
    assert result.bars["vwap"].isna().all() and result.rejected.empty and not result.unserved


def test_a_missing_file_is_unavailable_not_empty(s3_url, bucket, calendar):
    p = provider(s3_url, bucket, calendar)
    with pytest.raises(ProviderError, match="is not available .*not published yet") as err:
        p.fetch(request_for(calendar, Timeframe.D1, ["AAPL"], MON))
    assert err.value.status == 404


def test_403_is_unavailable(s3_url, bucket, calendar):
    client = _client(s3_url)
    p = provider(s3_url, bucket, calendar, client=client)
    with Stubber(client) as stub:
        stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(ProviderError, match="AccessDenied: not published yet") as err:
            p.fetch(request_for(calendar, Timeframe.M15, ["AAPL"], MON))
    assert err.value.status == 403


def test_open_sessions_are_refused_before_any_get(s3_url, bucket, calendar):
    p = FlatFilesProvider(calendar, fixed_clock("2024-03-11 15:00"), endpoint_url=s3_url, bucket=bucket[1],
                          access_key_id="test", secret_access_key="test")
    with pytest.raises(ProviderError, match="closed sessions only"):
        p.fetch(request_for(calendar, Timeframe.M15, ["AAPL"], MON))
    assert p.gets == 0


def test_a_closed_session_is_not_asked_before_its_files_are_published(s3_url, bucket, calendar):
    put(bucket, Timeframe.D1, MON, [day_row("AAPL", MON)])
    evening = FlatFilesProvider(calendar, fixed_clock("2024-03-12 14:59"), endpoint_url=s3_url, bucket=bucket[1],
                                access_key_id="test", secret_access_key="test")  # 10:59 New York on the 12th
    with pytest.raises(ProviderError, match="published about 2024-03-12 11:00 New York"):
        evening.fetch(request_for(calendar, Timeframe.D1, ["AAPL"], MON))
    assert evening.gets == 0
    later = FlatFilesProvider(calendar, fixed_clock("2024-03-12 15:00"), endpoint_url=s3_url, bucket=bucket[1],
                              access_key_id="test", secret_access_key="test")
    assert len(later.fetch(request_for(calendar, Timeframe.D1, ["AAPL"], MON)).bars) == 1


def test_a_file_that_is_not_gzip_fails_saying_so(s3_url, bucket, calendar):
    client, name = bucket
    client.put_object(Bucket=name, Key=file_key(Timeframe.D1, MON), Body=b"ticker,volume\nAAPL,1\n")
    with pytest.raises(ProviderError, match="not a readable aggregates file"):
        provider(s3_url, bucket, calendar).fetch(request_for(calendar, Timeframe.D1, ["AAPL"], MON))


def test_the_cache_serves_a_second_read_without_a_get(s3_url, bucket, calendar, tmp_path):
    put(bucket, Timeframe.D1, MON, [day_row("AAPL", MON)])
    p = provider(s3_url, bucket, calendar, cache_dir=tmp_path)
    first = p.fetch(request_for(calendar, Timeframe.D1, ["AAPL"], MON))
    again = p.fetch(request_for(calendar, Timeframe.D1, ["AAPL"], MON))
    assert (first.api_calls, again.api_calls, p.gets) == (1, 0, 1)
    pd.testing.assert_frame_equal(first.bars, again.bars)
    assert (tmp_path / file_key(Timeframe.D1, MON)).is_file()
    assert not list(tmp_path.rglob(".part-*"))


def test_split_adjusted_store_uses_known_splits_and_refuses_unchecked(s3_url, bucket, calendar):
    put(bucket, Timeframe.D1, MON, [day_row("NVDA", MON, 1200, 1210, 1220, 1190, 100), day_row("AAPL", MON)])
    p = provider(s3_url, bucket, calendar)
    p.use_known_splits(lambda symbols: KnownSplits(
        checked_from={"NVDA": date(2024, 1, 1)}, splits={"NVDA": [(date(2024, 6, 10), Fraction(10))]}))
    result = p.fetch(request_for(calendar, Timeframe.D1, ["NVDA", "AAPL"], MON, adjustment=Adjustment.SPLIT))
    nvda = result.bars.iloc[0]
    assert (nvda.open, nvda.close, nvda.high, nvda.low, nvda.volume) == (120, 121, 122, 119, 1000)
    assert list(result.bars["symbol"]) == ["NVDA"] and "never checked" in result.unserved["AAPL"]


def test_split_adjusted_without_known_splits_refuses_before_the_get(s3_url, bucket, calendar):
    p = provider(s3_url, bucket, calendar)
    with pytest.raises(ProviderError, match="unadjusted and no corporate-actions store"):
        p.fetch(request_for(calendar, Timeframe.D1, ["AAPL"], MON, adjustment=Adjustment.SPLIT))
    assert p.gets == 0


def test_settings_name_the_variables_never_the_values(calendar):
    with pytest.raises(ProviderConfigError, match="FLATFILES_ACCESS_KEY_ID"):
        FlatFilesProvider.from_config({}, calendar, LATER)
    with pytest.raises(ProviderConfigError, match="FLATFILES_SECRET_ACCESS_KEY"):
        FlatFilesProvider.from_config({"FLATFILES_ACCESS_KEY_ID": "AKID"}, calendar, LATER)
    with pytest.raises(ProviderConfigError, match="FLATFILES_ENDPOINT_URL") as err:
        FlatFilesProvider.from_config({"FLATFILES_ACCESS_KEY_ID": "AKID", "FLATFILES_SECRET_ACCESS_KEY": "s3cr3t",
                                       "FLATFILES_ENDPOINT_URL": "ftp://x"}, calendar, LATER)
    assert "s3cr3t" not in str(err.value)
    built = FlatFilesProvider.from_config({"FLATFILES_ACCESS_KEY_ID": "AKID", "FLATFILES_SECRET_ACCESS_KEY": "s3cr3t"},
                                          calendar, LATER)
    assert "s3cr3t" not in repr(built) and "AKID" not in repr(built)


# ---------------------------------------------------------------------------- through the store
class Backup(DemoProvider):
    """The demo provider under another name, counting its calls."""

    def __init__(self, calendar, name="backup"):
        super().__init__(calendar, LATER)
        self.name = name
        self.calls = 0

    @property
    def provenance(self):
        return self.name

    def fetch(self, request):
        self.calls += 1
        return super().fetch(request)


def test_fallback_empty_and_rejected_through_the_store(s3_url, bucket, calendar, store: BarStore):
    """MON's file is published: AAPL is in it, GONE is not (empty), BAD has a duplicate row
    (rejected, falls back). TUE's file is missing: every symbol falls back."""
    put(bucket, Timeframe.M15, MON, [*minute_rows("AAPL", MON), *minute_rows("BAD", MON, count=2),
                                     minute_rows("BAD", MON, count=1)[0]])
    flat, backup = provider(s3_url, bucket, calendar), Backup(calendar)
    router = Router([flat, backup], calendar, adjustment=Adjustment.RAW)
    parts = [(s, d) for s in ("AAPL", "BAD", "GONE") for d in (MON, TUE)]
    report = fetch_partitions(parts, Timeframe.M15, router, store, clock=LATER)
    assert flat.gets == 2  # one GET per session, all symbols in it
    ledger = store.coverage(Timeframe.M15).set_index(["symbol", "session"])
    assert ledger.loc[("AAPL", MON), "provider"] == "flatfiles" and ledger.loc[("AAPL", MON), "bars"] == 26
    assert ledger.loc[("AAPL", TUE), "provider"] == "backup"
    assert ledger.loc[("BAD", MON), "provider"] == "backup"  # rejected rows: fell back
    assert ledger.loc[("GONE", TUE), "provider"] == "backup" and ledger.loc[("GONE", MON), "provider"] == "backup"
    # GONE is not in MON's published file: flatfiles answered "no bars"; a worse answer than none
    # stored is never written, so the backup was asked and it served
    assert report.ok and report.rejected_bars == 3
    with store.engine.connect() as conn:
        rejected = pd.read_sql("SELECT symbol, session, reason, provider FROM rejected_bars", conn)
    assert set(rejected["symbol"]) == {"BAD"} and set(rejected["provider"]) == {"flatfiles"}
    assert rejected["reason"].str.contains("more than one row for this ticker and window_start").sum() == 2
    stored = store.read_bars(Timeframe.M15, [("AAPL", MON)])
    assert stored["vwap"].isna().all() and len(stored) == 26 and set(stored["provider"]) == {"flatfiles"}


def test_absent_symbol_is_empty_when_no_other_provider(s3_url, bucket, calendar, store: BarStore):
    put(bucket, Timeframe.D1, MON, [day_row("AAPL", MON)])
    flat = provider(s3_url, bucket, calendar)
    report = fetch_partitions([("AAPL", MON), ("GONE", MON)], Timeframe.D1,
                              Router([flat], calendar, adjustment=Adjustment.RAW), store, clock=LATER)
    ledger = store.coverage(Timeframe.D1).set_index("symbol")
    assert ledger.loc["AAPL", "status"] == "complete" and ledger.loc["GONE", "status"] == "empty"
    assert report.empty == {("GONE", MON)} and flat.gets == 1


def test_unpublished_without_fallback_fails_saying_why(s3_url, bucket, calendar, store: BarStore):
    flat = provider(s3_url, bucket, calendar)
    report = fetch_partitions([("AAPL", MON)], Timeframe.D1, Router([flat], calendar, adjustment=Adjustment.RAW),
                              store, clock=LATER)
    assert "not available" in report.failures[("AAPL", MON)]
    assert store.coverage(Timeframe.D1).iloc[0]["status"] == "failed"


def test_split_adjusted_store_records_the_basis(s3_url, bucket, calendar, store: BarStore):
    put(bucket, Timeframe.D1, MON, [day_row("NVDA", MON, 1200, 1210, 1220, 1190, 100), day_row("AAPL", MON)])
    flat, backup = provider(s3_url, bucket, calendar), Backup(calendar)
    flat.use_known_splits(lambda symbols: KnownSplits(
        checked_from={"NVDA": date(2024, 1, 1)}, splits={"NVDA": [(date(2024, 6, 10), Fraction(10))]}))
    report = fetch_partitions([("NVDA", MON), ("AAPL", MON)], Timeframe.D1, Router([flat, backup], calendar),
                              store, clock=LATER)
    assert report.ok
    bars = store.read_bars(Timeframe.D1, [("NVDA", MON), ("AAPL", MON)]).set_index("symbol")
    assert bars.loc["NVDA", "close"] == 121 and bars.loc["NVDA", "adjustment"] == "split"
    assert bars.loc["AAPL", "provider"] == "backup"  # its splits were never checked

"""The flat-files fake: a real loopback S3 endpoint read with boto3, serving gzip CSVs whose bars are
the REST fakes' raw bars, with the real service's pitfalls."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
from datetime import date, time

import boto3
import numpy as np
import pandas as pd
import pytest
from botocore.config import Config
from hypothesis import given, settings
from hypothesis import strategies as st
from botocore.exceptions import ClientError

from backfill_dagster.domain.calendar import NEW_YORK
from backfill_dagster.fakes import FakeConfig, FakeProviders
from backfill_dagster.fakes.actions import CorporateActions, Split
from backfill_dagster.fakes import flatfile_data
from backfill_dagster.fakes.flatfile_data import HEADER, PITFALL_TICKERS, decompose
from backfill_dagster.fakes.flatfiles import FakeFlatFiles, FlatFilesConfig, object_key

# Wednesday 2024-12-04 12:00 New York: files up to Tuesday's are published.
NOW = pd.Timestamp("2024-12-04T17:00:00Z")
SYMBOLS = ("AAPL", "MSFT", "NVDA")
SAMPLE_SESSIONS = [
    date(2024, 3, 8), date(2024, 3, 11),  # around the spring DST change
    date(2024, 11, 1), date(2024, 11, 4),  # around the autumn one
    date(2024, 11, 29),  # early close, 13:00
]
NVDA_SPLIT = Split("NVDA", ex_date=date(2024, 6, 10), numerator=10, denominator=1, announced=date(2024, 5, 22))


def client(files: FakeFlatFiles, *, key_id: str | None = None):
    env = files.env()
    return boto3.client(
        "s3", endpoint_url=env["FLATFILES_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=key_id or env["FLATFILES_ACCESS_KEY_ID"],
        aws_secret_access_key=env["FLATFILES_SECRET_ACCESS_KEY"],
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def read_csv(body: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(gzip.decompress(body)), keep_default_na=False)


def status_of(call) -> int:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value.response["ResponseMetadata"]["HTTPStatusCode"]


class Clock:
    def __init__(self, now: pd.Timestamp):
        self.now = now

    def __call__(self) -> pd.Timestamp:
        return self.now


@pytest.fixture(scope="module")
def market() -> FakeConfig:
    return FakeConfig(
        now=lambda: NOW, no_trade_rate=0.1, unknown_symbols=frozenset({"MSFT"}),
        withheld={("AAPL", date(2024, 3, 11))},
        corporate_actions=CorporateActions(splits=[NVDA_SPLIT]),
    )


@pytest.fixture(scope="module")
def files(market):
    config = FlatFilesConfig(symbols=SYMBOLS, fillers=3, missing_minute_files=frozenset({date(2024, 11, 26)}))
    with FakeFlatFiles(config, market) as running:
        yield running


@pytest.fixture(scope="module")
def s3(files):
    return client(files)


@pytest.fixture(scope="module")
def rest(market):
    # The REST fakes on the same market: what the files must agree with.
    with FakeProviders(market) as running:
        yield running


def get(s3, dataset: str, session: date) -> bytes:
    return s3.get_object(Bucket="flatfiles", Key=object_key(dataset, session))["Body"].read()


# ---------------------------------------------------------------------- S3 behaviour
def test_a_month_lists_the_published_sessions_of_both_datasets_in_key_order(files, s3):
    listed = s3.list_objects_v2(Bucket="flatfiles", Prefix="us_stocks_sip/minute_aggs_v1/2024/12/")
    # 12-02 (Mon) published Tuesday 11:00; 12-03 (Tue) only Wednesday 11:00 New York, which is NOW.
    assert [c["Key"] for c in listed["Contents"]] == [object_key("minute", date(2024, 12, d)) for d in (2, 3)]
    november = s3.list_objects_v2(Bucket="flatfiles", Prefix="us_stocks_sip/minute_aggs_v1/2024/11/")
    keys = [c["Key"] for c in november["Contents"]]
    assert object_key("minute", date(2024, 11, 28)) not in keys  # Thanksgiving: no session, no file
    assert object_key("minute", date(2024, 11, 26)) not in keys  # the missing minute file
    assert len(keys) == 19
    top = s3.list_objects_v2(Bucket="flatfiles", Prefix="us_stocks_sip/", Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["us_stocks_sip/day_aggs_v1/", "us_stocks_sip/minute_aggs_v1/"]
    assert "Contents" not in top


def test_listings_page_with_continuation_tokens_and_never_exceed_1000_keys(files, s3):
    pages = list(s3.get_paginator("list_objects_v2").paginate(
        Bucket="flatfiles", Prefix="us_stocks_sip/day_aggs_v1/2024/", PaginationConfig={"PageSize": 7}))
    keys = [c["Key"] for page in pages for c in page["Contents"]]
    assert all(page["KeyCount"] <= 7 for page in pages) and len(pages) > 30
    assert keys == sorted(set(keys)) and keys[0] == object_key("day", date(2024, 1, 2))
    assert keys[-1] == object_key("day", date(2024, 12, 3))
    whole = s3.list_objects_v2(Bucket="flatfiles", Prefix="us_stocks_sip/day_aggs_v1/", MaxKeys=5000)
    assert whole["KeyCount"] == 1000 and whole["IsTruncated"] and whole["NextContinuationToken"]
    assert whole["Contents"][0]["Key"] == object_key("day", date(2003, 9, 10))  # the first file


def test_get_streams_the_file_with_its_length_etag_and_publication_time(files, s3):
    key = object_key("day", date(2024, 11, 29))
    answer = s3.get_object(Bucket="flatfiles", Key=key)
    body = answer["Body"].read()
    assert answer["ContentLength"] == len(body) > 0
    head = s3.head_object(Bucket="flatfiles", Key=key)
    listed = s3.list_objects_v2(Bucket="flatfiles", Prefix=key)["Contents"][0]
    assert head["ETag"] == answer["ETag"] == listed["ETag"]
    assert head["ContentLength"] == listed["Size"] == len(body)
    published = pd.Timestamp("2024-11-30T11:00", tz=NEW_YORK)  # 11:00 New York the next day
    assert pd.Timestamp(answer["LastModified"]) == published == pd.Timestamp(listed["LastModified"])
    assert gzip.decompress(body).decode().splitlines()[0] == HEADER


def test_a_range_answers_206_with_those_bytes(files, s3):
    key = object_key("minute", date(2024, 11, 29))
    whole = s3.get_object(Bucket="flatfiles", Key=key)["Body"].read()
    part = s3.get_object(Bucket="flatfiles", Key=key, Range="bytes=100-299")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["ContentRange"] == f"bytes 100-299/{len(whole)}"
    assert part["Body"].read() == whole[100:300]
    tail = s3.get_object(Bucket="flatfiles", Key=key, Range="bytes=-10")["Body"].read()
    assert tail == whole[-10:]
    assert status_of(lambda: s3.get_object(Bucket="flatfiles", Key=key, Range=f"bytes={len(whole)}-")) == 416


def test_a_session_is_refused_403_until_11_new_york_the_next_day(market):
    clock = Clock(pd.Timestamp("2024-12-03T10:59", tz=NEW_YORK))
    early = FakeConfig(now=clock)
    with FakeFlatFiles(FlatFilesConfig(symbols=("AAPL",), fillers=0, pitfall_tickers=False), early) as files:
        s3 = client(files)
        monday = object_key("day", date(2024, 12, 2))
        assert status_of(lambda: s3.get_object(Bucket="flatfiles", Key=monday)) == 403
        assert status_of(lambda: s3.head_object(Bucket="flatfiles", Key=monday)) == 403
        assert "Contents" not in s3.list_objects_v2(Bucket="flatfiles", Prefix=monday)
        clock.now = pd.Timestamp("2024-12-03T11:00", tz=NEW_YORK)
        assert read_csv(s3.get_object(Bucket="flatfiles", Key=monday)["Body"].read())["ticker"].tolist() == ["AAPL"]
        assert [c["Key"] for c in s3.list_objects_v2(Bucket="flatfiles", Prefix=monday)["Contents"]] == [monday]


def test_files_before_the_plan_window_are_403_and_missing_keys_404_or_403_as_configured(files, s3):
    files.config.plan_first_date = date(2024, 1, 2)
    try:
        assert status_of(lambda: get(s3, "day", date(2023, 12, 29))) == 403
        assert len(get(s3, "day", date(2024, 1, 2))) > 0
    finally:
        files.config.plan_first_date = None
    assert status_of(lambda: get(s3, "day", date(2024, 11, 28))) == 404  # Thanksgiving
    assert status_of(lambda: get(s3, "minute", date(2024, 11, 26))) == 404  # the missing minute file...
    assert len(get(s3, "day", date(2024, 11, 26))) > 0  # ...while its day file is there
    assert status_of(lambda: s3.get_object(Bucket="flatfiles", Key="us_stocks_sip/minute_aggs_v1/x.csv.gz")) == 404
    assert status_of(lambda: s3.get_object(Bucket="other", Key=object_key("day", date(2024, 11, 29)))) == 404
    files.config.missing_key_status = 403
    try:
        assert status_of(lambda: get(s3, "day", date(2024, 11, 28))) == 403
    finally:
        files.config.missing_key_status = 404


def test_a_wrong_access_key_or_no_credentials_is_403_access_denied(files):
    bad = client(files, key_id="not-the-key")
    with pytest.raises(ClientError) as caught:
        bad.get_object(Bucket="flatfiles", Key=object_key("day", date(2024, 11, 29)))
    assert caught.value.response["Error"]["Code"] == "AccessDenied"
    assert status_of(lambda: bad.list_objects_v2(Bucket="flatfiles")) == 403
    import httpx

    anonymous = httpx.get(f"{files.url}/flatfiles/{object_key('day', date(2024, 11, 29))}")
    assert anonymous.status_code == 403 and b"<Code>AccessDenied</Code>" in anonymous.content


def test_the_request_log_counts_gets_per_key_and_bytes_sent(market):
    with FakeFlatFiles(FlatFilesConfig(symbols=("AAPL",), fillers=0), market) as files:
        s3 = client(files)
        sizes = [len(get(s3, "day", d)) for d in (date(2024, 11, 29), date(2024, 12, 2))]
        get(s3, "day", date(2024, 11, 29))
        s3.get_object(Bucket="flatfiles", Key=object_key("day", date(2024, 11, 29)), Range="bytes=0-9")["Body"].read()
        s3.list_objects_v2(Bucket="flatfiles", Prefix="us_stocks_sip/day_aggs_v1/2024/12/")
        assert files.get_counts() == {object_key("day", date(2024, 11, 29)): 3, object_key("day", date(2024, 12, 2)): 1}
        assert files.gets(prefix="us_stocks_sip/day_aggs_v1/") == 4 and files.gets(prefix="us_stocks_sip/minute") == 0
        assert files.bytes_sent() == 2 * sizes[0] + sizes[1] + 10
        files.reset()
        assert files.gets() == 0 and files.bytes_sent() == 0


# ---------------------------------------------------------------------- the files' content
def test_the_csv_keeps_the_na_ticker_and_every_pitfall_ticker_sorted_by_ticker_then_time(files, s3):
    minutes = read_csv(get(s3, "minute", date(2024, 11, 29)))
    assert list(minutes.columns) == HEADER.split(",")
    tickers = minutes["ticker"].unique().tolist()
    assert set(PITFALL_TICKERS) <= set(tickers) and "NA" in tickers
    assert tickers == sorted(tickers) and tickers.index("TPC") < tickers.index("TpC")
    assert "MSFT" not in tickers  # unknown to the market: absent, not an error
    order = minutes.sort_values(["ticker", "window_start"], kind="stable").index
    assert (order == minutes.index).all()
    assert minutes["window_start"].dtype == np.int64 and (minutes["window_start"] % 60_000_000_000 == 0).all()
    first = pd.Timestamp(int(minutes["window_start"].min()), tz="UTC").tz_convert(NEW_YORK)
    assert (first.hour, first.minute) == (4, 0)  # nanoseconds since the epoch: 04:00 New York


def aggregate_minutes(minutes: pd.DataFrame, ticker: str) -> pd.DataFrame:
    """m15 bars from the minutes present (the reference's bucketing recipe, on clock quarters)."""
    rows = minutes[minutes["ticker"] == ticker].sort_values("window_start")
    bucket = rows["window_start"] // (15 * 60 * 10**9) * (15 * 60 * 10**9)
    out = rows.groupby(bucket).agg(
        open=("open", "first"), high=("high", "max"), low=("low", "min"), close=("close", "last"),
        volume=("volume", "sum"), trade_count=("transactions", "sum"), minutes=("open", "size"))
    out.index = pd.to_datetime(out.index, unit="ns", utc=True)
    return out


@pytest.mark.parametrize("session", SAMPLE_SESSIONS)
def test_minutes_aggregate_to_exactly_the_rest_fakes_raw_m15_bars(files, s3, rest, session):
    minutes = read_csv(get(s3, "minute", session))
    for ticker in ("NVDA", "BRK.B", "NA", "TpC", "XAAB", "AAPL"):
        served = rest.bars("m15", ticker, session, adjusted=False)
        built = aggregate_minutes(minutes, ticker)
        if ticker == "AAPL" and session == date(2024, 3, 11):
            assert served.empty and built.empty  # withheld: no bars anywhere
            continue
        assert len(served) > 0 and list(built.index) == list(served["ts"])  # no-trade slots: no minutes
        for column in ("open", "high", "low", "close", "volume", "trade_count"):
            assert built[column].to_numpy().tolist() == served[column].to_numpy().tolist(), (ticker, column)
        assert built["minutes"].min() < 15 and built["minutes"].max() == 15
    served_slots = len(xnys_served_grid(session))
    assert rest.bars("m15", "BRK.B", session, adjusted=False).shape[0] < served_slots  # some slots had no trade


def xnys_served_grid(session: date) -> pd.DatetimeIndex:
    from backfill_dagster.domain.calendar import xnys

    lo, hi = xnys().served_window(session)
    return pd.date_range(lo, hi, freq="15min", inclusive="left")


def test_a_bucket_may_lack_its_first_or_last_minute_so_bucketing_must_use_the_minutes_present(files, s3):
    minutes = read_csv(get(s3, "minute", date(2024, 11, 29)))
    offsets = (minutes["window_start"] // 60_000_000_000) % 15
    bucket = minutes["window_start"] // (15 * 60 * 10**9)
    per_bucket = pd.DataFrame({"ticker": minutes["ticker"], "bucket": bucket, "offset": offsets})
    firsts = per_bucket.groupby(["ticker", "bucket"])["offset"].agg(["min", "max"])
    assert (firsts["min"] > 0).any() and (firsts["max"] < 14).any()


@pytest.mark.parametrize("session", SAMPLE_SESSIONS)
def test_day_rows_equal_the_rest_fakes_raw_d1_bars_at_midnight_new_york(files, s3, rest, session):
    days = read_csv(get(s3, "day", session)).set_index("ticker")
    midnight = pd.Timestamp(session).tz_localize(NEW_YORK)
    assert (days["window_start"] == midnight.value).all()
    for ticker in ("NVDA", "BRK.B", "NA", "BCpA", "XAAA"):
        served = rest.bars("d1", ticker, session, adjusted=False).iloc[0]
        row = days.loc[ticker]
        assert [row["open"], row["high"], row["low"], row["close"], row["volume"], row["transactions"]] == [
            served["open"], served["high"], served["low"], served["close"], served["volume"], served["trade_count"]]


def test_raw_prices_jump_by_the_split_ratio_at_the_ex_date(files, s3, rest):
    before = read_csv(get(s3, "day", date(2024, 6, 7))).set_index("ticker").loc["NVDA"]
    after = read_csv(get(s3, "day", date(2024, 6, 10))).set_index("ticker").loc["NVDA"]
    assert 7 < before["close"] / after["open"] < 14  # 10-for-1 around the model's own move
    assert before["close"] == rest.bars("d1", "NVDA", date(2024, 6, 7), adjusted=False)["close"].iloc[0]
    adjusted = rest.bars("d1", "NVDA", date(2024, 6, 7), adjusted=True)["close"].iloc[0]
    assert abs(before["close"] / adjusted - 10) < 0.01  # the files are not split-adjusted


def test_defective_day_files_carry_another_days_timestamps_or_duplicate_rows(files, s3):
    misdated = read_csv(get(s3, "day", date(2019, 8, 12)))
    assert (misdated["window_start"] == pd.Timestamp("2019-08-13", tz=NEW_YORK).value).all()
    doubled = read_csv(get(s3, "day", date(2019, 8, 13)))
    assert doubled.duplicated(["ticker", "window_start"]).any()
    assert doubled.duplicated().sum() == doubled.duplicated(["ticker", "window_start"]).sum()  # identical rows
    clean = read_csv(get(s3, "day", date(2019, 8, 14)))
    assert not clean.duplicated(["ticker", "window_start"]).any()
    assert (clean["window_start"] == pd.Timestamp("2019-08-14", tz=NEW_YORK).value).all()


def test_a_withheld_pair_is_absent_from_that_sessions_files_only(files, s3):
    assert "AAPL" not in set(read_csv(get(s3, "minute", date(2024, 3, 11)))["ticker"])
    assert "AAPL" not in set(read_csv(get(s3, "day", date(2024, 3, 11)))["ticker"])
    assert "AAPL" in set(read_csv(get(s3, "day", date(2024, 3, 12)))["ticker"])


# ---------------------------------------------------------------------- the decomposition alone
def test_decomposing_thin_bars_keeps_every_aggregate_exact():
    # Bars with fewer shares or trades than minutes, flat bars and a one-cent range.
    values = np.array([
        # open, high, low, close, volume, vwap, trades
        [10.00, 10.00, 10.00, 10.00, 3, 10.0, 1],
        [10.00, 10.01, 10.00, 10.01, 14, 10.0, 40],
        [5.55, 6.10, 5.01, 5.99, 100_000, 5.7, 7],
        [0.01, 0.02, 0.01, 0.01, 15, 0.01, 15],
    ])
    starts = np.arange(4, dtype=np.int64) * 15 * 60 * 10**9
    rng = np.random.default_rng(7)
    bar_of, (volume, open_, close, high, low, window_start, trades) = decompose(
        starts, values, rng.random((6, 4, 15)), rng.random(4))
    for i in range(4):
        mine = bar_of == i
        assert (open_[mine][0], high[mine].max(), low[mine].min(), close[mine][-1]) == tuple(
            round(v * 100) for v in values[i, :4])
        assert volume[mine].sum() == values[i, 4] and trades[mine].sum() == values[i, 6]
        assert (volume[mine] >= 1).all() and (trades[mine] >= 1).all()
        assert (high[mine] >= np.maximum(open_[mine], close[mine])).all()
        assert (low[mine] <= np.minimum(open_[mine], close[mine])).all()
        assert ((window_start[mine] - starts[i]) // (60 * 10**9) < 15).all()
    assert (bar_of == 0).sum() == 1  # a bar of one trade is one minute


# ---------------------------------------------------------------------- the command line
def test_the_command_line_serves_the_files_and_prints_what_a_client_needs(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "backfill_dagster.fakes", "flatfiles", "--port", "0", "--symbols", "AAPL",
         "--fillers", "0", "--now", "2024-12-04T17:00:00Z", "--cache-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        settings = dict(proc.stderr.readline().strip().split("=", 1) for _ in range(4))
        assert settings["FLATFILES_ENDPOINT_URL"] == url and settings["FLATFILES_BUCKET"] == "flatfiles"
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id=settings["FLATFILES_ACCESS_KEY_ID"],
                          aws_secret_access_key=settings["FLATFILES_SECRET_ACCESS_KEY"])
        body = s3.get_object(Bucket="flatfiles", Key=object_key("day", date(2024, 12, 3)))["Body"].read()
        assert "AAPL" in set(read_csv(body)["ticker"])
        assert (tmp_path.rglob("2024-12-03.csv.gz").__next__()).stat().st_size == len(body)  # kept in --cache-dir
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0


def test_settings_the_fake_cannot_honour_are_refused_naming_the_setting():
    with pytest.raises(ValueError, match="missing_key_status"):
        FlatFilesConfig(missing_key_status=500)
    with pytest.raises(ValueError, match="fillers"):
        FlatFilesConfig(fillers=-1)
    assert FlatFilesConfig().publish_time == time(11, 0)


# ---------------------------------------------------------------------- faults
def test_injected_faults_are_s3_errors_and_cut_off_bodies(market):
    config = FlatFilesConfig(symbols=("AAPL",), fillers=0, fault_rate=1.0, faults=("503",))
    with FakeFlatFiles(config, market) as files:
        s3 = client(files)
        with pytest.raises(ClientError) as caught:
            get(s3, "day", date(2024, 11, 29))
        assert caught.value.response["Error"]["Code"] == "SlowDown"
        config.faults = ("truncated",)
        answer = s3.get_object(Bucket="flatfiles", Key=object_key("day", date(2024, 11, 29)))
        with pytest.raises(Exception, match="(?i)incomplete|read|connection"):
            answer["Body"].read()
        config.fault_rate = 0.0
        whole = get(s3, "day", date(2024, 11, 29))
        assert answer["ContentLength"] == len(whole)
        assert [e.bytes_sent for e in files.log if e.status == 200] == [len(whole) // 2, len(whole)]
    with pytest.raises(ValueError, match="fault kind"):
        FlatFilesConfig(fault_rate=0.5, faults=("timeout",))


@given(
    open_=st.integers(1, 50_000), moves=st.lists(st.integers(0, 5_000), min_size=3, max_size=3),
    volume=st.integers(0, 10**9), trades=st.integers(1, 10**6), draw_seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=200, deadline=None)
def test_any_valid_bar_decomposes_into_minutes_that_aggregate_back_exactly(open_, moves, volume, trades, draw_seed):
    close = max(1, open_ + moves[0] - 2_500)
    high = max(open_, close) + moves[1]
    low = max(1, min(open_, close) - moves[2])
    values = np.array([[open_ / 100, high / 100, low / 100, close / 100, volume, 0.0, trades]])
    rng = np.random.default_rng(draw_seed)
    bar_of, (v, o, c, h, lo, ts, n) = decompose(np.array([0], np.int64), values, rng.random((6, 1, 15)), rng.random(1))
    assert (o[0], h.max(), lo.min(), c[-1]) == (open_, high, low, close)
    assert v.sum() == volume and n.sum() == trades
    assert (h >= np.maximum(o, c)).all() and (lo <= np.minimum(o, c)).all() and (lo >= 1).all()
    assert 1 <= len(ts) <= 15 and (np.diff(ts) > 0).all()


@pytest.mark.slow  # starts two worker processes
def test_warming_in_worker_processes_makes_the_files_a_get_then_serves_without_generating(market):
    sessions = [date(2024, 11, 25), date(2024, 11, 26), date(2024, 11, 27)]
    with FakeFlatFiles(FlatFilesConfig(symbols=("NVDA",), fillers=2), market) as files:
        assert files.warm(sessions, processes=2) == 6
        made = {path.name for path in files.file_path(object_key("day", sessions[0])).parent.iterdir()}
        assert {f"{d.isoformat()}.csv.gz" for d in sessions} <= made
        s3 = client(files)
        for session in sessions:  # the workers' files are the ones this process would have made
            body = get(s3, "minute", session)
            assert body == flatfile_data.csv_gz(files.rows("minute", session))

"""Polygon/Massive flat files: one gzip CSV per session with every US stock's aggregates, on S3.

`us_stocks_sip/minute_aggs_v1/YYYY/MM/YYYY-MM-DD.csv.gz` (minute bars, ~30 MB) and
`us_stocks_sip/day_aggs_v1/...` (day bars) on an S3-compatible endpoint (`https://files.massive.com`,
bucket `flatfiles`) with their own key pair, not the REST API key. One GET serves a session for any
number of symbols, so the planner asks once per session with every symbol of the run
(max_symbols_per_request large, one session a request): a run over a box of 500 symbols x 10
sessions costs 10 GETs of m15 and 10 of d1.

- Closed sessions only: a file is published the next morning (~11:00 New York); a file that is not
  there (404) or refused (403: not published yet, outside the plan's history, or no entitlement —
  S3 does not say which) makes the provider unavailable for that session, so the partition falls
  back to the next provider or fails saying why. It is never `empty`. A ticker absent from a
  published file is: the stock did not trade (halted, delisted), like an empty REST answer.
- The file is streamed: gunzipped and read in blocks of a few MB, other tickers' lines skipped on
  their first field without a Python step per line (domain/minute_aggs.py), so a run holds a
  block and the requested rows of one file at a time.
  With FLATFILES_CACHE_DIR set, each file fetched is kept there and read from disk next time (a
  re-derivation or a split repair needs no download).
- Rows are trusted one by one: a row stamped with another date than the file's, or a ticker's
  duplicate rows, are rejected (rejected_bars, with the reason) and fail that ticker's session.
  A minute file lacking the closing minute of a ticker that traded in nearly every other minute
  (a known defect) does not serve that ticker's m15 for the session: it falls back to the next
  provider, or fails saying why (domain/minute_aggs.py `lacking_closing_minute`).
- Prices are unadjusted. A split-adjusted store gets them on its basis with the splits the
  corporate-actions store knows (domain/split_factors.py); a symbol whose splits were never checked
  is not served (its partitions fall back or fail). A raw store gets them as they are.
- No VWAP in the files: flat-file bars store it empty (NULL).

Requests go through boto3 (SigV4, path-style addressing as the loopback fake needs), botocore's
standard retries, and the provider's shared budget. The key pair is read from FLATFILES_ACCESS_KEY_ID
and FLATFILES_SECRET_ACCESS_KEY and never written into a message.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK, SessionCalendar
from backfill_dagster.domain.minute_aggs import (
    BLOCK_BYTES,
    FileFormatError,
    check_rows,
    d1_bars,
    lacking_closing_minute,
    m15_bars,
    read_aggs_blocks,
)
from backfill_dagster.domain.provider_errors import ProviderError
from backfill_dagster.domain.split_factors import adjust_bars
from backfill_dagster.domain.symbols import provider_symbol, store_symbol
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.providers.base import (
    Adjustment,
    Capabilities,
    FetchRequest,
    FetchResult,
    Provider,
    ProviderConfigError,
    SplitLookup,
)
from backfill_dagster.providers.config import setting_secret, setting_url
from backfill_dagster.providers.http import Budget, RetryPolicy, Unlimited

DEFAULT_URL = "https://files.massive.com"
DEFAULT_BUCKET = "flatfiles"
PREFIX = "us_stocks_sip"
DATASETS = {Timeframe.M15: "minute_aggs_v1", Timeframe.D1: "day_aggs_v1"}
# Far beyond a whole market (~10k tickers): the planner then asks once per session.
MAX_SYMBOLS = 100_000
# botocore's standard retry mode, as Massive's examples use it; 5 attempts ride out a short outage.
DEFAULT_ATTEMPTS = 5
READ_CHUNK = 1 << 20
# Massive: "data for each trading day is available by approximately 11:00 AM ET the following day".
# Before then a GET is not sent (it would be refused): the session falls back at once.
PUBLISHED_AT = time(11, 0)
PUBLISHED_DAYS_AFTER = 1
# S3 error codes meaning "this file is not there for you (yet)": never a file without the ticker.
_UNAVAILABLE = {"403", "404", "AccessDenied", "NoSuchKey", "Forbidden", "NotFound"}


def file_key(timeframe: Timeframe, session: date, prefix: str = PREFIX) -> str:
    """The object key of a session's file: us_stocks_sip/minute_aggs_v1/2024/03/2024-03-15.csv.gz."""
    return f"{prefix}/{DATASETS[timeframe]}/{session:%Y}/{session:%m}/{session.isoformat()}.csv.gz"


def publication(session: date) -> pd.Timestamp:
    """When a session's files are expected to be there (UTC)."""
    day = session + timedelta(days=PUBLISHED_DAYS_AFTER)
    return pd.Timestamp(datetime.combine(day, PUBLISHED_AT), tz=NEW_YORK).tz_convert("UTC")


class FlatFilesProvider(Provider):
    """m15 and d1 bars of closed sessions from the flat files, every symbol of a session in one GET."""

    name = "flatfiles"

    def __init__(
        self,
        calendar: SessionCalendar,
        clock: Callable[[], pd.Timestamp],
        *,
        endpoint_url: str = DEFAULT_URL,
        bucket: str = DEFAULT_BUCKET,
        access_key_id: str,
        secret_access_key: str,
        cache_dir: str | Path | None = None,
        budget: Budget | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
        client: Any = None,
    ):
        """`client`: a boto3 S3 client to use instead of building one (tests)."""
        self._calendar = calendar
        self._clock = clock
        self._bucket = bucket
        self._endpoint = endpoint_url
        self._cache = Path(cache_dir) if cache_dir else None
        self._budget = budget or Unlimited()
        self._splits: SplitLookup | None = None
        self._client = client or _s3_client(endpoint_url, access_key_id, secret_access_key, attempts)
        self.bytes_read = 0  # compressed bytes downloaded (a benchmark's figure)
        self.gets = 0  # GETs sent, answered or not
        self.capabilities = Capabilities(
            timeframes=frozenset(DATASETS),
            adjustments=frozenset({Adjustment.SPLIT, Adjustment.RAW}),  # raw files, adjusted here
            max_symbols_per_request=MAX_SYMBOLS,
            max_sessions_per_request=1,  # one file a request: a missing file fails only its session
            serves_open_session=False,  # published the next morning
            serves_closed_sessions=True,
            extended_hours=True,  # the minute files hold 04:00-20:00
        )

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, str | None],
        calendar: SessionCalendar,
        clock: Callable[[], pd.Timestamp],
        budget: Budget | None = None,
        policy: RetryPolicy | None = None,
    ) -> FlatFilesProvider:
        attempts = policy.attempts if policy is not None else DEFAULT_ATTEMPTS
        return cls(calendar, clock, **cls.settings(config), budget=budget, attempts=attempts)

    @classmethod
    def settings(cls, config: Mapping[str, str | None]) -> dict[str, Any]:
        bucket = (config.get("FLATFILES_BUCKET") or "").strip() or DEFAULT_BUCKET
        if "/" in bucket or " " in bucket:
            raise ProviderConfigError("FLATFILES_BUCKET must be a bucket name (e.g. flatfiles), not a path")
        cache = (config.get("FLATFILES_CACHE_DIR") or "").strip() or None
        return {
            "endpoint_url": setting_url(config, "FLATFILES_ENDPOINT_URL", DEFAULT_URL),
            "bucket": bucket,
            "access_key_id": setting_secret(config, "FLATFILES_ACCESS_KEY_ID", cls.name),
            "secret_access_key": setting_secret(config, "FLATFILES_SECRET_ACCESS_KEY", cls.name),
            "cache_dir": Path(cache).expanduser() if cache else None,
        }

    def __repr__(self) -> str:
        return f"FlatFilesProvider({self._endpoint!r}, bucket={self._bucket!r})"

    def use_known_splits(self, lookup: SplitLookup) -> None:
        self._splits = lookup

    # ------------------------------------------------------------------ fetch
    def fetch(self, request: FetchRequest) -> FetchResult:
        if request.timeframe not in DATASETS or len(request.sessions) != 1:
            raise ProviderError(self.name, "serves m15 and d1 bars, one session a request", request=request)
        (session,) = request.sessions
        now = self._clock()
        if not self._calendar.has_closed(session, now, request.extended):
            raise ProviderError(self.name, "serves closed sessions only (files are published the next day)",
                                request=request)
        published = publication(session)
        if now < published:
            raise ProviderError(
                self.name, f"the session's files are published about {published.tz_convert(NEW_YORK):%Y-%m-%d %H:%M} "
                "New York (the next morning): not asked before then", request=request)
        symbols, unserved, factors = self._servable(request, now)
        if not symbols:
            first = next(iter(unserved.values()))
            raise ProviderError(self.name, f"no symbol can be served: {first}", request=request)
        key = file_key(request.timeframe, session)
        tickers = {provider_symbol(s, self.name): s for s in symbols}
        calls = 0
        with self._open(key, request) as (stream, fetched):
            calls += fetched
            try:
                rows = read_aggs_blocks(_blocks(stream), tickers)
            except (FileFormatError, OSError, EOFError, UnicodeDecodeError) as exc:
                raise ProviderError(self.name, f"{key} is not a readable aggregates file: {exc}",
                                    request=request) from None
        checked = check_rows(rows, session, key)
        unserved = dict(unserved)
        if request.timeframe is Timeframe.M15:
            bars = m15_bars(checked, request.start, request.end)
            close = self._calendar.close(session)
            lacking = lacking_closing_minute(checked, self._calendar.open(session), close)
            for ticker, (minutes, total) in lacking.items():
                unserved[tickers[ticker]] = (
                    f"{key} has no row for its closing minute ({close.tz_convert(NEW_YORK) - pd.Timedelta(minutes=1):%H:%M} "
                    f"New York) though it traded in {minutes} of the session's {total} regular minutes: a known "
                    "defect of the minute files (polygon-io/issues#329), which would leave its last quarter hour "
                    "closing on an earlier trade")
            bars = bars[~bars["symbol"].isin(list(lacking))]
        else:
            bars = d1_bars(checked)
        bars["symbol"] = [store_symbol(t, self.name) for t in bars["symbol"]]
        rejected = checked.rejected
        rejected["symbol"] = [store_symbol(t, self.name) for t in rejected["symbol"]]
        if factors:
            bars = adjust_bars(bars, factors)
        # A closed session's file is final: every bar in it is complete.
        return FetchResult(bars=bars, api_calls=calls, complete_through=now, rejected=rejected, unserved=unserved)

    def _servable(self, request: FetchRequest, now: pd.Timestamp):
        """The symbols this request may serve, those it may not (with why), and in a split-adjusted
        store each served symbol's split factor for the session as of today."""
        if request.adjustment is Adjustment.RAW:
            return list(request.symbols), {}, {}
        (session,) = request.sessions
        if self._splits is None:
            why = ("its prices are unadjusted and no corporate-actions store was given to adjust them "
                   "(set BACKFILL_ADJUSTMENT=raw, or run through Dagster)")
            return [], {s: why for s in request.symbols}, {}
        known = self._splits(list(request.symbols))
        today = now.tz_convert(NEW_YORK).date()
        unserved = {s: why for s in request.symbols if (why := known.unknown(s, session))}
        symbols = [s for s in request.symbols if s not in unserved]
        return symbols, unserved, {s: known.factor(s, session, today) for s in symbols}

    @contextmanager
    def _open(self, key: str, request: FetchRequest) -> Iterator[tuple[io.BufferedIOBase, int]]:
        """The file's compressed bytes as a stream, and how many GETs that took (0: from the cache)."""
        cached = self._cache / key if self._cache else None
        if cached is not None and cached.is_file():
            with cached.open("rb") as f:
                yield f, 0
            return
        body = self._get(key, request)
        try:
            if cached is None:
                yield _Counting(body, self), 1
                return
            # Download to a temporary file beside it and rename: a half-written file is never cached.
            cached.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=".part-")
            try:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(_Counting(body, self), out, READ_CHUNK)
                os.replace(tmp, cached)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except ProviderError:
            raise
        except Exception as exc:  # a connection dropped mid-body
            raise ProviderError(self.name, f"reading {key} failed: {type(exc).__name__}: {exc}",
                                request=request, retryable=True) from None
        finally:
            body.close()
        with cached.open("rb") as f:
            yield f, 1

    def _get(self, key: str, request: FetchRequest):
        from botocore.exceptions import BotoCoreError, ClientError

        self._budget.acquire()
        self.gets += 1  # sent, whatever the answer
        try:
            reply = self._client.get_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _UNAVAILABLE or status in (403, 404):
                raise ProviderError(
                    self.name,
                    f"s3://{self._bucket}/{key} is not available ({code or status}: not published yet "
                    "(files appear the next morning), outside the plan's history, or not entitled)",
                    status=status, request=request,
                ) from None
            raise ProviderError(self.name, f"GET s3://{self._bucket}/{key} failed: {code}", status=status,
                                request=request, retryable=True) from None
        except BotoCoreError as exc:
            raise ProviderError(self.name, f"GET s3://{self._bucket}/{key} failed: {type(exc).__name__}",
                                request=request, retryable=True) from None
        finally:
            self._budget.sent()
        return reply["Body"]

    def close(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            close()


class _Counting(io.RawIOBase):
    """A response body that counts the bytes read into its provider's `bytes_read`."""

    def __init__(self, body, provider: FlatFilesProvider):
        self._body = body
        self._provider = provider

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._body.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._provider.bytes_read += n
        return n


def _blocks(compressed) -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream, BLOCK_BYTES at a time, as they are read."""
    with gzip.GzipFile(fileobj=compressed) as gz:
        while block := gz.read(BLOCK_BYTES):
            yield block


def _lines(compressed) -> Iterator[str]:
    """The text lines of a gzip stream, decompressed as they are read (for `read_aggs`, the line
    by line reading that `read_aggs_blocks` reproduces: benchmarks compare the two)."""
    with gzip.GzipFile(fileobj=compressed) as gz:
        yield from io.TextIOWrapper(gz, encoding="utf-8", newline="")


def _s3_client(endpoint_url: str, access_key_id: str, secret_access_key: str, attempts: int):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "max_attempts": attempts},
            max_pool_connections=4,
            connect_timeout=10,
            read_timeout=60,
        ),
    )

"""A fake of Polygon/Massive flat files: a read-only S3 endpoint on loopback serving the bucket
`flatfiles` with one gzip CSV of every ticker's minute bars and one of their day bars per session,
generated on demand from the same synthetic market as the REST fakes (fakes/flatfile_data.py).

    with FakeFlatFiles(FlatFilesConfig(symbols=("AAPL", "MSFT")), market=fake_config) as files:
        s3 = boto3.client("s3", endpoint_url=files.url, aws_access_key_id=..., ...)   # files.env()
        s3.get_object(Bucket="flatfiles", Key="us_stocks_sip/minute_aggs_v1/2024/03/2024-03-15.csv.gz")
        assert files.gets() == 1

`python -m backfill_dagster.fakes flatfiles --port 9000` serves it until interrupted.

Why not moto's server: moto keeps every object in memory and needs every object put before it is
read. Two years of minute files for 500 symbols are ~3 GB gzipped, and a file costs about three
CPU seconds to generate (mostly gzip), so this server makes a file when it is first asked for
and keeps it in a bounded disk cache (a temporary folder unless `cache_dir` is set), streaming it
from there; everything else is the standard library's HTTP server, like the REST fakes
(fakes/server.py), with its own request log because S3 answers are streamed files and XML, not
JSON pages of bars.

What it does as S3 does (path-style addressing, any region):
- GetObject (streamed; Content-Length, ETag, Last-Modified; `Range: bytes=...` -> 206, an
  unsatisfiable range -> 416; If-Match -> 412, If-None-Match -> 304), HeadObject, HeadBucket,
  ListObjectsV2 (prefix, delimiter, start-after, max-keys, continuation token, 1000 keys a page,
  `encoding-type=url`), ListObjects (v1: marker) and ListBuckets. Anything else: 403 or 405.
- Every request must carry credentials (an `Authorization` header or a presigned query); the
  signature is not checked, the access key id is: another key -> 403 `AccessDenied` XML.
- Errors are S3's XML (`<Error><Code>NoSuchKey</Code>...`); HEAD errors have no body.

The pitfalls of the real service, each a setting of `FlatFilesConfig` (defaults as observed):
- a session's files appear at 11:00 New York the next day (`publish_days_after`,
  `publish_time`), by the market's clock (`FakeConfig.now`); asked before, 403 AccessDenied;
- a plan window (`plan_first_date`): older files answer 403;
- a key that does not exist (a holiday, a date before `history_start`, a minute file in
  `missing_minute_files`): 404 NoSuchKey, or 403 (`missing_key_status`) as S3 answers a caller
  that may not list the bucket;
- defective day files: `misdated_day_files` (the 2019-08-12 file carried 2019-08-13 timestamps) and
  `duplicated_day_files` (2019-08-13 carried duplicate rows);
- minute files missing some tickers' closing minute (`closing_minute_missing`: January 2025, ~0.4%
  of tickers a session, as observed);
- tickers absent from a session: the market's unknown symbols (`FakeConfig.unknown_symbols`, the
  ZZZ prefix) and withheld (symbol, session) pairs have no rows, as a delisted or halted stock;
- raw prices: a split symbol's prices jump by the ratio at its ex-date (fakes/actions.py);
- transport faults (`fault_rate`, `faults`: 500, 503 SlowDown, a body cut off) and a bandwidth
  cap (`bandwidth_bytes_per_s`), off by default.

Listings show only published keys, out-of-plan ones included (entitlement is checked on GET).
A listing's Size is exact for files already generated; for the others it is an estimate unless
`exact_listing_sizes` (which generates them: slow for long listings). ETag and LastModified never depend on whether a file was generated.
"""

from __future__ import annotations

import base64
import bisect
import dataclasses
import functools
import hashlib
import logging
import multiprocessing
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as clock_time
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.sax.saxutils import escape

import pandas as pd

from backfill_dagster.domain.calendar import NEW_YORK
from backfill_dagster.domain.synthetic import seed
from backfill_dagster.fakes import flatfile_data
from backfill_dagster.fakes.config import FakeConfig
from backfill_dagster.fakes.control import FaultDraws
from backfill_dagster.fakes.disk_cache import DiskCache
from backfill_dagster.fakes.s3_wire import (
    Answer,
    S3Handler,
    S3Server,
    byte_range,
    error,
    iso,
    list_buckets,
    not_modified_since,
    operation_of,
    send,
    xml,
)
from backfill_dagster.fakes.data import BarData

log = logging.getLogger(__name__)

BUCKET = "flatfiles"
MINUTE_PREFIX = "us_stocks_sip/minute_aggs_v1/"
DAY_PREFIX = "us_stocks_sip/day_aggs_v1/"
DATASETS = {"minute": MINUTE_PREFIX, "day": DAY_PREFIX}
PAGE_SIZE = 1000  # S3's most keys a listing page
FLATFILE_FAULTS = ("500", "503", "truncated")
_KEY = re.compile(r"^us_stocks_sip/(minute|day)_aggs_v1/(\d{4})/(\d{2})/(\d{4})-(\d{2})-(\d{2})\.csv\.gz$")

# Names a client may know from the REST fakes' demos, then filler names make the universe broad.
DEFAULT_SYMBOLS = (
    "AAPL", "AMD", "AMZN", "AVGO", "BAC", "COST", "CRM", "CSCO", "DIS", "GOOGL", "HD", "IBM", "INTC",
    "JNJ", "JPM", "KO", "MA", "META", "MSFT", "NFLX", "NVDA", "ORCL", "PEP", "PFE", "QQQ", "SPY",
    "TSLA", "UNH", "V", "WMT", "XOM",
)
# Keys the client needs (FakeFlatFiles.env()).
ENV_ENDPOINT, ENV_BUCKET, ENV_KEY_ID, ENV_SECRET = (
    "FLATFILES_ENDPOINT_URL", "FLATFILES_BUCKET", "FLATFILES_ACCESS_KEY_ID", "FLATFILES_SECRET_ACCESS_KEY",
)


def object_key(dataset: str, session: date) -> str:
    """The key of a session's file: `object_key("minute", date(2024, 3, 15))` ->
    `us_stocks_sip/minute_aggs_v1/2024/03/2024-03-15.csv.gz` (dataset "minute" or "day")."""
    iso = session.isoformat()
    return f"{DATASETS[dataset]}{iso[:4]}/{iso[5:7]}/{iso}.csv.gz"


def parse_key(key: str) -> tuple[str, date] | None:
    """(dataset, session) of a well-formed key whose folders match its date, else None."""
    match = _KEY.match(key)
    if match is None:
        return None
    kind, year, month, y, m, d = match.groups()
    if (year, month) != (y, m):
        return None
    try:
        return kind, date(int(y), int(m), int(d))
    except ValueError:
        return None


@dataclass
class FlatFilesConfig:
    """The flat-files fake's settings; read on every request, so a test may change them while it runs."""

    access_key_id: str = "fake-flatfiles-access-key"
    secret_access_key: str = "fake-flatfiles-secret-key"  # not checked: signatures are not verified
    bucket: str = BUCKET
    # The universe: these symbols, `fillers` made-up ones (XAAA, XAAB, ...) and, with
    # `pitfall_tickers`, NA, BCpA, AAp, BRK.B, TpC and TPC. A symbol outside it is absent from
    # every file (as a delisted stock), so put a run's watchlist here.
    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    fillers: int = 100
    pitfall_tickers: bool = True
    # The first file (peers list 2003-09-10); earlier keys do not exist.
    history_start: date = date(2003, 9, 10)
    # Files before this date are outside the plan: 403. None: the whole history.
    plan_first_date: date | None = None
    # A session's files are published at `publish_time` New York, `publish_days_after` calendar
    # days after the session; asked earlier: 403.
    publish_days_after: int = 1
    publish_time: clock_time = clock_time(11, 0)
    # The answer for a key that does not exist: 404 NoSuchKey, or 403 AccessDenied.
    missing_key_status: int = 404
    # Day files whose rows carry another session's window_start: file session -> date carried.
    misdated_day_files: dict[date, date] = field(default_factory=lambda: {date(2019, 8, 12): date(2019, 8, 13)})
    # Day files with some tickers' rows written twice.
    duplicated_day_files: frozenset[date] = frozenset({date(2019, 8, 13)})
    # Minute files in which some tickers lack their closing minute (the regular session's last:
    # 15:59, 12:59 on a half day), as ~40 of ~10,000 names a day did in January 2025
    # (polygon-io/issues#329): (first session, last session, share of tickers), each ticker drawn
    # per session reproducibly. Their last regular quarter hour then differs from the REST bar.
    closing_minute_missing: tuple[date, date, float] = (date(2025, 1, 2), date(2025, 1, 31), 0.004)
    # Sessions whose minute file is missing while the day file is there (as 2025-08-07/08 were for days).
    missing_minute_files: frozenset[date] = frozenset()
    gzip_level: int = flatfile_data.GZIP_LEVEL
    # Where generated files are kept (None: a temporary folder removed on stop), and how many bytes
    # at most (least recently used files go first).
    cache_dir: str | None = None
    cache_max_bytes: int = 4 * 1024**3
    exact_listing_sizes: bool = False
    # Probability that a GetObject that would succeed meets a fault from `faults` instead: "500"
    # (InternalError), "503" (SlowDown) or "truncated" (the full Content-Length announced, half the
    # body sent, the connection closed). Drawn per key reproducibly (`seed`); a retry draws afresh.
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FLATFILE_FAULTS
    seed: int = 0
    # Most body bytes a second per download (None: as fast as loopback goes); peers cap ~50 MB/s.
    bandwidth_bytes_per_s: float | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.missing_key_status not in (403, 404):
            raise ValueError(f"missing_key_status must be 403 or 404, not {self.missing_key_status}")
        if self.fillers < 0:
            raise ValueError("fillers cannot be negative")
        if self.publish_days_after < 0:
            raise ValueError("publish_days_after cannot be negative")
        if not 0 <= self.gzip_level <= 9:
            raise ValueError("gzip_level must be 0..9")
        if self.cache_max_bytes < 1:
            raise ValueError("cache_max_bytes must be positive")
        if not self.bucket:
            raise ValueError("bucket cannot be empty")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate {self.fault_rate} must be between 0 and 1")
        unknown = sorted(set(self.faults) - set(FLATFILE_FAULTS))
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}: use {', '.join(FLATFILE_FAULTS)}")
        if self.fault_rate > 0 and not self.faults:
            raise ValueError("fault_rate > 0 needs at least one fault kind in faults")
        if self.bandwidth_bytes_per_s is not None and not self.bandwidth_bytes_per_s > 0:
            raise ValueError("bandwidth_bytes_per_s must be positive (or None: unlimited)")

    def tickers(self, market: FakeConfig) -> list[str]:
        """The tickers files carry, in file order (unknown symbols of the market left out)."""
        names = flatfile_data.universe(self.symbols, self.fillers, pitfalls=self.pitfall_tickers)
        return [t for t in names if not market.is_unknown(t)]

    def without_closing_minute(self, tickers: Iterable[str], session: date) -> set[str]:
        """The tickers whose closing minute the session's minute file lacks."""
        first, last, share = self.closing_minute_missing
        if not (first <= session <= last) or share <= 0:
            return set()
        return {t for t in tickers if seed(t, session.isoformat(), "closing-minute") % 1_000_000 < share * 1_000_000}


@dataclass(frozen=True)
class S3Logged:
    """One request as the fake saw it; `bytes_sent` counts body bytes actually written."""

    method: str  # GET, HEAD, ...
    operation: str  # GetObject, HeadObject, ListObjectsV2, ...
    key: str | None
    status: int
    bytes_sent: int
    range: str | None
    at: float  # arrival, epoch seconds


class FakeFlatFiles:
    """The flat-files S3 fake on host:port; a context manager. `market` is the REST fakes'
    `FakeConfig` (clock, splits, unknown and withheld symbols, no-trade slots), so files carry
    the bars the REST fakes serve; pass the same object to both."""

    def __init__(
        self,
        config: FlatFilesConfig | None = None,
        market: FakeConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.config = config or FlatFilesConfig()
        self.market = market or FakeConfig()
        self.host = host
        self._requested_port = port
        self._data = BarData(withheld=lambda: self.market.withheld, actions=lambda: self.market.corporate_actions)
        self._lock = threading.Lock()
        self._log: list[S3Logged] = []
        # Requests being answered: a client can hold a whole answer before its handler has logged
        # it, so readers of the log wait (briefly) for those to finish.
        self._answering = 0
        self._answered = threading.Condition(self._lock)
        self._server: S3Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._faults = FaultDraws()
        self._keys_memo: tuple | None = None
        self._cache = DiskCache(self.config.cache_dir, self.config.cache_max_bytes)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeFlatFiles:
        if self._server is not None:
            return self
        self.config.validate()
        self.market.validate()
        self._server = S3Server((self.host, self._requested_port), S3Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-flatfiles", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with self._lock:
                for conn in list(self._connections):
                    try:
                        conn.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server, self._thread = None, None
        self._cache.close()

    def __enter__(self) -> FakeFlatFiles:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ what clients need
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the flat-files fake is not running: call start() or use `with`")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Endpoint, bucket and key pair a client needs."""
        return {
            ENV_ENDPOINT: self.url,
            ENV_BUCKET: self.config.bucket,
            ENV_KEY_ID: self.config.access_key_id,
            ENV_SECRET: self.config.secret_access_key,
        }

    # ------------------------------------------------------------------ what tests assert on
    @property
    def log(self) -> list[S3Logged]:
        """Every request answered so far, including those whose last bytes are being sent."""
        with self._answered:
            self._answered.wait_for(lambda: self._answering == 0, timeout=10)
            return list(self._log)

    def reset(self) -> None:
        """Forget the request log and the fault draws (generated files stay cached)."""
        with self._lock:
            self._log.clear()
        self._faults.clear()

    def gets(self, key: str | None = None, *, prefix: str = "") -> int:
        """GetObject requests (any status), of one key or of keys under a prefix."""
        return sum(1 for e in self.log if e.operation == "GetObject" and e.key is not None
                   and (e.key == key if key is not None else e.key.startswith(prefix)))

    def get_counts(self) -> Counter[str]:
        """GetObject requests per key."""
        return Counter(e.key for e in self.log if e.operation == "GetObject" and e.key is not None)

    def bytes_sent(self, *, prefix: str = "") -> int:
        """Object bytes sent by GetObject (ranges and cut-off downloads count what was written)."""
        return sum(e.bytes_sent for e in self.log if e.operation == "GetObject" and (e.key or "").startswith(prefix))

    # ------------------------------------------------------------------ the files
    def published_at(self, session: date) -> pd.Timestamp:
        """When a session's files appear (UTC)."""
        return _published_at(session, self.config.publish_days_after, self.config.publish_time)

    def rows(self, dataset: str, session: date) -> flatfile_data.Rows:
        """The rows of a session's file, defects included (whether or not it is published)."""
        tickers = self.config.tickers(self.market)
        if dataset == "minute":
            return flatfile_data.minute_rows(self._data, tickers, session, no_trade_rate=self.market.no_trade_rate,
                                             without_closing_minute=self.config.without_closing_minute(tickers, session))
        rows = flatfile_data.day_rows(self._data, tickers, session)
        carried = self.config.misdated_day_files.get(session)
        if carried is not None:
            midnight = pd.Timestamp(carried).tz_localize(NEW_YORK).value
            rows = flatfile_data.misdated(rows, midnight)
        if session in self.config.duplicated_day_files:
            rows = flatfile_data.with_duplicates(rows, session)
        return rows

    def file_path(self, key: str) -> Path:
        """The generated file of a key (generated now if need be), whatever its availability."""
        parsed = parse_key(key)
        if parsed is None or not self._exists(*parsed):
            raise KeyError(f"no such flat file: {key}")
        return self._generated(key, *parsed)

    def warm(self, sessions: Iterable[date], datasets: Iterable[str] = ("day", "minute"), *, processes: int = 1) -> int:
        """Generate the files of these sessions now, so a benchmark keeps generation out of its
        timing; returns how many files were made or found. A 500-ticker minute file costs ~3 CPU
        seconds; `processes` > 1 makes them in that many worker processes (each starts in ~2 s)."""
        todo = [(object_key(d, s), d, s) for s in sessions for d in datasets if self._exists(d, s)]
        if processes > 1 and len(todo) > 1:
            setup = (dataclasses.replace(self.config, cache_dir=str(self._cache.folder)),
                     dataclasses.replace(self.market, now=None, held_symbols=set()))
            context = multiprocessing.get_context("spawn")  # not fork: this process runs server threads
            with ProcessPoolExecutor(max_workers=processes, mp_context=context,
                                     initializer=_warm_worker_setup, initargs=setup) as pool:
                list(pool.map(_warm_worker_make, todo, chunksize=1))
        for job in todo:
            self._generated(*job)  # made by a worker: found on disk and counted in the cache
        return len(todo)

    def _exists(self, dataset: str, session: date) -> bool:
        calendar = self._data.calendar
        if not (max(self.config.history_start, calendar.first_day) <= session <= calendar.last_day):
            return False
        if not calendar.is_session(session):
            return False
        return not (dataset == "minute" and session in self.config.missing_minute_files)

    def _fingerprint(self) -> str:
        """What a file's content depends on besides its key: the cache and ETags follow it."""
        c, m = self.config, self.market
        actions = m.corporate_actions
        splits = [(s, actions.splits(s, date.min, date.max)) for s in actions.split_symbols()]
        text = repr((
            self.config.tickers(m), sorted(m.withheld), m.no_trade_rate, splits,
            sorted((k, repr(v)) for k, v in getattr(actions, "_gaps", {}).items()),
            sorted(c.misdated_day_files.items()), sorted(c.duplicated_day_files), c.gzip_level,
            c.closing_minute_missing, flatfile_data.GENERATOR,
        ))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _generated(self, key: str, dataset: str, session: date) -> Path:
        fingerprint = self._fingerprint()
        return self._cache.get(f"{fingerprint}/{key}", lambda path: self._write(path, dataset, session))

    def _write(self, path: Path, dataset: str, session: date) -> None:
        if dataset == "minute":  # in runs of tickers: memory stays flat however broad the universe
            tickers = self.config.tickers(self.market)
            pieces = flatfile_data.minute_csv_chunks(
                self._data, tickers, session, no_trade_rate=self.market.no_trade_rate,
                without_closing_minute=self.config.without_closing_minute(tickers, session))
        else:
            pieces = [flatfile_data.csv_bytes(self.rows(dataset, session))]
        flatfile_data.write_gz(pieces, path, self.config.gzip_level)

    def _etag(self, key: str, fingerprint: str | None = None) -> str:
        text = f"{fingerprint or self._fingerprint()}|{key}"
        return '"' + hashlib.md5(text.encode()).hexdigest() + '"'

    # ------------------------------------------------------------------ requests
    def _handle(self, handler: S3Handler) -> None:
        with self._lock:
            self._answering += 1
        try:
            self._answer_and_log(handler)
        finally:
            with self._answered:
                self._answering -= 1
                self._answered.notify_all()

    def _answer_and_log(self, handler: S3Handler) -> None:
        at = time.time()
        method = handler.command
        split = urlsplit(handler.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        path = unquote(split.path)
        bucket, _, key = path.lstrip("/").partition("/")
        operation = operation_of(method, bucket, key, query)
        fault = None
        try:
            answer = self._answer(method, operation, bucket, key, query, handler.headers)
            config = self.config
            if operation == "GetObject" and answer.status in (200, 206) and config.fault_rate > 0:
                request = f"{key}|{handler.headers.get('Range') or ''}"
                fault = self._faults.draw(config.seed, "flatfiles", request, config.fault_rate, tuple(config.faults))
                if fault == "500":
                    answer = error(500, "InternalError", "We encountered an internal error. Please try again.")
                elif fault == "503":
                    answer = error(503, "SlowDown", "Please reduce your request rate.")
        except Exception:  # a bug in the fake: say so rather than hang the client
            log.exception("flat-files fake failed on %s %s", method, handler.path)
            answer = error(500, "InternalError", "We encountered an internal error. Please try again.")
        sent = send(handler, answer, head=method == "HEAD", truncate=fault == "truncated",
                     bandwidth=self.config.bandwidth_bytes_per_s)
        entry = S3Logged(method, operation, key or None, answer.status, sent, handler.headers.get("Range"), at)
        with self._lock:
            self._log.append(entry)

    def _answer(self, method: str, operation: str, bucket: str, key: str, query: dict, headers) -> Answer:
        refused = self._authenticate(headers, query)
        if refused is not None:
            return refused
        if operation == "ListBuckets":
            return xml(200, list_buckets(self.config.bucket))
        if bucket != self.config.bucket:
            return error(404, "NoSuchBucket", "The specified bucket does not exist", BucketName=bucket)
        if operation == "HeadBucket":
            return Answer(200, {"x-amz-bucket-region": "us-east-1"})
        if operation in ("ListObjectsV2", "ListObjects"):
            return self._list(query, v2=operation == "ListObjectsV2")
        if operation in ("GetObject", "HeadObject"):
            return self._object(key, headers, head=operation == "HeadObject")
        # Other sub-resources and writes: the bucket is read-only for its customers.
        return error(403, "AccessDenied", "Access Denied")

    def _authenticate(self, headers, query: dict) -> Answer | None:
        auth = headers.get("Authorization") or ""
        found = re.search(r"Credential=([^/,\s]+)/", auth)
        if found is None and auth.startswith("AWS "):  # SigV2: "AWS key:signature"
            found = re.match(r"AWS ([^:]+):", auth)
        key_id = found.group(1) if found else None
        if key_id is None and "X-Amz-Credential" in query:  # a presigned URL
            key_id = query["X-Amz-Credential"].split("/", 1)[0]
        if key_id is None:
            return error(403, "AccessDenied", "Access Denied: the request carries no credentials")
        if key_id != self.config.access_key_id:
            return error(403, "AccessDenied", "Access Denied: the access key id is not known")
        return None

    def _availability(self, dataset: str, session: date) -> Answer | None:
        """The refusal for an existing key the caller may not read now, else None."""
        plan = self.config.plan_first_date
        if plan is not None and session < plan:
            return error(403, "AccessDenied", "Access Denied")
        if self.market.current_time() < self.published_at(session):
            return error(403, "AccessDenied", "Access Denied")
        return None

    def _object(self, key: str, headers, *, head: bool) -> Answer:
        parsed = parse_key(key)
        if parsed is None or not self._exists(*parsed):
            if self.config.missing_key_status == 403:
                return error(403, "AccessDenied", "Access Denied")
            return error(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        refused = self._availability(*parsed)
        if refused is not None:
            return refused
        etag = self._etag(key)
        modified = self.published_at(parsed[1])
        if_match, if_none = headers.get("If-Match"), headers.get("If-None-Match")
        if if_match is not None and if_match.strip() not in (etag, "*"):
            return error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                          Condition="If-Match")
        base = {
            "ETag": etag,
            "Last-Modified": format_datetime(modified.to_pydatetime(), usegmt=True),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if if_none is not None and if_none.strip() in (etag, "*"):
            return Answer(304, base)
        since = headers.get("If-Modified-Since")
        if since is not None and if_none is None and not_modified_since(modified, since):
            return Answer(304, base)
        path = self._generated(key, *parsed)
        size = path.stat().st_size
        wanted = headers.get("Range")
        if wanted is None or head:
            return Answer(200, {**base, "Content-Length": str(size)}, path=None if head else path, length=size)
        span = byte_range(wanted, size)
        if span is None:
            return error(416, "InvalidRange", "The requested range is not satisfiable", RangeRequested=wanted,
                          ActualObjectSize=str(size))
        if span is ...:  # a Range header S3 ignores (malformed): the whole object
            return Answer(200, {**base, "Content-Length": str(size)}, path=path, length=size)
        start, end = span
        return Answer(206, {**base, "Content-Length": str(end - start + 1),
                             "Content-Range": f"bytes {start}-{end}/{size}"}, path=path, start=start, length=end - start + 1)

    def _published_keys(self) -> list[str]:
        """Every published key, in key order (day_aggs_v1 < minute_aggs_v1); remembered until the
        clock publishes another session or the settings change."""
        calendar = self._data.calendar
        now = self.market.current_time()
        first = max(self.config.history_start, calendar.first_day)
        last = min(calendar.last_day, now.tz_convert(NEW_YORK).date())
        sessions = calendar.sessions(first, last) if first <= last else []
        while sessions and now < self.published_at(sessions[-1]):  # only the latest may be unpublished
            sessions.pop()
        signature = (first, sessions[-1] if sessions else None, frozenset(self.config.missing_minute_files))
        with self._lock:
            if self._keys_memo is not None and self._keys_memo[0] == signature:
                return self._keys_memo[1]
        missing = signature[2]
        keys = [object_key("day", s) for s in sessions] + [object_key("minute", s) for s in sessions if s not in missing]
        with self._lock:
            self._keys_memo = (signature, keys)
        return keys

    def _size(self, key: str, fingerprint: str, tickers: int) -> int:
        dataset, session = parse_key(key)
        cached = self._cache.size(f"{fingerprint}/{key}")
        if cached is not None:
            return cached
        if self.config.exact_listing_sizes:
            return self._generated(key, dataset, session).stat().st_size
        # Estimates: ~13 bytes a minute row gzipped, ~900 of them a ticker; ~30 bytes a day row.
        per_ticker = 13 * 900 if dataset == "minute" else 30
        return 60 + per_ticker * tickers

    def _list(self, query: dict, *, v2: bool) -> Answer:
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        url_encoded = query.get("encoding-type") == "url"
        try:
            max_keys = min(int(query.get("max-keys", PAGE_SIZE)), PAGE_SIZE)
        except ValueError:
            return error(400, "InvalidArgument", "max-keys must be a whole number")
        if max_keys < 0:
            return error(400, "InvalidArgument", "max-keys cannot be negative")
        token = query.get("continuation-token")
        if v2:
            after = query.get("start-after", "")
            if token is not None:
                try:
                    after = base64.urlsafe_b64decode(token.encode()).decode()
                except (ValueError, UnicodeDecodeError):
                    return error(400, "InvalidArgument", "The continuation token provided is incorrect")
        else:
            after = query.get("marker", "")
        entries: list[tuple[str, bool]] = []  # (key or common prefix, is prefix)
        seen_prefixes = set()
        truncated = False
        keys = self._published_keys()
        # Keys under a prefix are contiguous in key order: start at the later of the prefix and `after`.
        for key in keys[max(bisect.bisect_left(keys, prefix), bisect.bisect_right(keys, after)) :]:
            if not key.startswith(prefix):
                break
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
                    if common in seen_prefixes or common <= after:
                        continue
                    if len(entries) == max_keys:
                        truncated = True
                        break
                    seen_prefixes.add(common)
                    entries.append((common, True))
                    continue
            if len(entries) == max_keys:
                truncated = True
                break
            entries.append((key, False))
        return xml(200, self._list_xml(query, prefix, delimiter, max_keys, entries, truncated, url_encoded, v2, token))

    def _list_xml(self, query, prefix, delimiter, max_keys, entries, truncated, url_encoded, v2, token) -> str:
        def enc(text: str) -> str:
            return escape(quote(text, safe="/") if url_encoded else text)

        fingerprint, tickers = self._fingerprint(), len(self.config.tickers(self.market))
        parts = [f"<Name>{escape(self.config.bucket)}</Name>", f"<Prefix>{enc(prefix)}</Prefix>"]
        if v2:
            parts.append(f"<KeyCount>{len(entries)}</KeyCount>")
            if token is not None:
                parts.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
            if "start-after" in query:
                parts.append(f"<StartAfter>{enc(query['start-after'])}</StartAfter>")
        else:
            parts.append(f"<Marker>{enc(query.get('marker', ''))}</Marker>")
        parts.append(f"<MaxKeys>{max_keys}</MaxKeys>")
        if delimiter:
            parts.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
        if url_encoded:
            parts.append("<EncodingType>url</EncodingType>")
        parts.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        if truncated and entries:
            last = entries[-1][0]
            if v2:
                parts.append(f"<NextContinuationToken>{base64.urlsafe_b64encode(last.encode()).decode()}</NextContinuationToken>")
            elif delimiter:
                parts.append(f"<NextMarker>{enc(last)}</NextMarker>")
        for name, is_prefix in entries:
            if is_prefix:
                continue
            modified = iso(self.published_at(parse_key(name)[1]))
            parts.append(
                f"<Contents><Key>{enc(name)}</Key><LastModified>{modified}</LastModified>"
                f"<ETag>{escape(self._etag(name, fingerprint))}</ETag><Size>{self._size(name, fingerprint, tickers)}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
        for name, is_prefix in entries:
            if is_prefix:
                parts.append(f"<CommonPrefixes><Prefix>{enc(name)}</Prefix></CommonPrefixes>")
        return "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">" + "".join(parts) + "</ListBucketResult>"

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)


# ---------------------------------------------------------------------- warming in processes
_worker: FakeFlatFiles | None = None


def _warm_worker_setup(config: FlatFilesConfig, market: FakeConfig) -> None:
    global _worker
    _worker = FakeFlatFiles(config, market)  # never started: it only writes files into the shared folder


def _warm_worker_make(job: tuple[str, str, date]) -> None:
    _worker._generated(*job)


@functools.lru_cache(maxsize=16_384)
def _published_at(session: date, days_after: int, at: clock_time) -> pd.Timestamp:
    day = session + timedelta(days=days_after)
    return pd.Timestamp(datetime.combine(day, at), tz=NEW_YORK).tz_convert("UTC")

"""S3's wire protocol as the flat-files fake speaks it: which operation a request is, byte ranges,
XML answers and errors, and a threaded HTTP server that streams files from disk.

The server hands every request to its `owner` (`owner._handle(handler)`) and tells it about
connections (`owner._track(conn, add)`), so the fake itself only decides what to answer.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Protocol
from xml.sax.saxutils import escape

import pandas as pd

log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # bytes read from disk and written at a time


class Owner(Protocol):
    def _handle(self, handler: S3Handler) -> None: ...

    def _track(self, conn, add: bool) -> None: ...


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    path: Path | None = None  # a file to stream (GetObject)
    start: int = 0
    length: int = 0



class S3Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    owner: Owner


class S3Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: S3Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, False)

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # drain a body (a refused PUT) so the connection stays usable
        self.server.owner._handle(self)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any  # noqa: N815 (http.server's naming)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


def operation_of(method: str, bucket: str, key: str, query: dict) -> str:
    if not bucket:
        return "ListBuckets" if method == "GET" else "Unsupported"
    if not key:
        if method == "HEAD":
            return "HeadBucket"
        if method == "GET" and not (set(query) - {"list-type", "prefix", "delimiter", "max-keys", "continuation-token",
                                                  "start-after", "encoding-type", "fetch-owner", "marker"}):
            return "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"
        return "Unsupported"
    if method == "GET" and not (set(query) - {"partNumber", "versionId", "response-content-type"} - PRESIGN):
        return "GetObject"
    if method == "HEAD":
        return "HeadObject"
    return "Unsupported"


PRESIGN = {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
            "X-Amz-Signature", "X-Amz-Security-Token", "x-id"}


def byte_range(header: str, size: int):
    """(first, last) inclusive of a single `bytes=` range; None if unsatisfiable; ... if S3 would
    ignore the header (not a single byte range)."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if match is None or match.group(1) == match.group(2) == "":
        return ...
    first, last = match.groups()
    if first == "":  # the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            return None
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        return ...
    if start >= size:
        return None
    return start, end


def not_modified_since(modified: pd.Timestamp, header: str) -> bool:
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False
    return modified.to_pydatetime() <= since


@functools.lru_cache(maxsize=16_384)
def iso(ts: pd.Timestamp) -> str:
    return ts.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.000Z")


def xml(status: int, inner: str) -> Answer:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n' + inner).encode()
    return Answer(status, {"Content-Type": "application/xml"}, body=body)


def error(status: int, code: str, message: str, **extra: str) -> Answer:
    fields = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in extra.items())
    return xml(status, f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>{fields}"
                        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>")


def list_buckets(bucket: str) -> str:
    return (
        '<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        "<Owner><ID>flatfiles</ID><DisplayName>flatfiles</DisplayName></Owner>"
        f"<Buckets><Bucket><Name>{escape(bucket)}</Name><CreationDate>2020-01-01T00:00:00.000Z</CreationDate>"
        "</Bucket></Buckets></ListAllMyBucketsResult>"
    )


def send(handler: S3Handler, answer: Answer, *, head: bool, truncate: bool = False,
          bandwidth: float | None = None) -> int:
    """Write the answer (streaming a file from disk, at most `bandwidth` bytes a second); returns
    the body bytes written. `truncate`: announce the whole file, send half, hang up."""
    sent = 0
    started = time.monotonic()
    try:
        handler.send_response(answer.status)
        headers = {"x-amz-request-id": uuid.uuid4().hex[:16].upper(), "Server": "AmazonS3", **answer.headers}
        if "Content-Length" not in headers:
            headers["Content-Length"] = "0" if head or answer.status == 304 else str(len(answer.body))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        if head or answer.status == 304:
            return 0
        if answer.path is None:
            handler.wfile.write(answer.body)
            return len(answer.body)
        with open(answer.path, "rb") as f:
            f.seek(answer.start)
            left = answer.length // 2 if truncate else answer.length
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                handler.wfile.write(chunk)
                sent += len(chunk)
                left -= len(chunk)
                if bandwidth is not None:
                    ahead = started + sent / bandwidth - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
        handler.wfile.flush()
    except (BrokenPipeError, ConnectionResetError, OSError):
        handler.close_connection = True  # the client hung up mid-file
    if truncate:
        handler.close_connection = True
    return sent

"""`python -m backfill_dagster.fakes flatfiles`: serve the flat-files S3 fake until SIGINT/SIGTERM.

Prints the endpoint URL on one line (flushed) once it listens, then on stderr the settings a
client needs (endpoint, bucket, key pair):

    python -m backfill_dagster.fakes flatfiles --port 9000 --symbols AAPL,MSFT,NVDA --fillers 500
    python -m backfill_dagster.fakes flatfiles --now 2024-06-03T15:00:00Z --plan-first-date 2022-01-03
    aws --endpoint-url http://127.0.0.1:9000 s3 ls s3://flatfiles/us_stocks_sip/minute_aggs_v1/2024/03/
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import date

from backfill_dagster.fakes.__main__ import _fixed_now
from backfill_dagster.fakes.config import FakeConfig
from backfill_dagster.fakes.flatfiles import DEFAULT_SYMBOLS, FakeFlatFiles, FlatFilesConfig


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: use YYYY-MM-DD") from None


def _dates(text: str) -> frozenset[date]:
    return frozenset(_date(part.strip()) for part in text.split(",") if part.strip())


def _symbols(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = FlatFilesConfig()
    parser = argparse.ArgumentParser(prog="python -m backfill_dagster.fakes flatfiles", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--now", type=_fixed_now, default=None, help="a fixed 'now' (tz-aware); default the clock")
    parser.add_argument("--symbols", type=_symbols, default=DEFAULT_SYMBOLS, help="comma list of the universe's symbols")
    parser.add_argument("--fillers", type=int, default=defaults.fillers, help="made-up tickers added to the universe")
    parser.add_argument("--access-key-id", default=defaults.access_key_id)
    parser.add_argument("--secret-access-key", default=defaults.secret_access_key)
    parser.add_argument("--plan-first-date", type=_date, default=None, help="files before it answer 403")
    parser.add_argument("--missing-key-status", type=int, choices=(403, 404), default=defaults.missing_key_status)
    parser.add_argument("--missing-minute-files", type=_dates, default=frozenset(), help="comma list of sessions")
    parser.add_argument("--unknown", type=_symbols, default=(), help="comma list of symbols absent from every file")
    parser.add_argument("--gzip-level", type=int, default=defaults.gzip_level)
    parser.add_argument("--cache-dir", default=None, help="keep generated files here (default: a temporary folder)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        market = FakeConfig(now=args.now, unknown_symbols=frozenset(args.unknown))
        config = FlatFilesConfig(
            access_key_id=args.access_key_id, secret_access_key=args.secret_access_key, symbols=args.symbols,
            fillers=args.fillers, plan_first_date=args.plan_first_date, missing_key_status=args.missing_key_status,
            missing_minute_files=args.missing_minute_files, gzip_level=args.gzip_level, cache_dir=args.cache_dir,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with FakeFlatFiles(config, market, host=args.host, port=args.port) as files:
        print(files.url, flush=True)
        for name, value in files.env().items():
            print(f"{name}={value}", file=sys.stderr, flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

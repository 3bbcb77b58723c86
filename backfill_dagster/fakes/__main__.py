"""`python -m backfill_dagster.fakes`: serve the provider fakes until SIGINT/SIGTERM.

Prints the base URL on one line (flushed) once the server listens, so a parent process can read it:

    python -m backfill_dagster.fakes --host 127.0.0.1 --port 0 --rate-limit alpaca=200 --fault-rate 0.05
    python -m backfill_dagster.fakes --quota-exhausted alpaca=3600   # every Alpaca request: 429, Retry-After 3600
    python -m backfill_dagster.fakes --misdated alpaca=1 --polygon-epoch-seconds   # answers for the wrong dates

`python -m backfill_dagster.fakes flatfiles ...` serves the flat-files S3 fake instead (its URL on
one line, then the settings a client needs on stderr): see `flatfiles --help`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import pandas as pd

from backfill_dagster.fakes.config import ALL_FAULT_KINDS, FAULT_KINDS, MISDATED_PROVIDERS, PROVIDERS, FakeConfig
from backfill_dagster.fakes.server import FakeProviders


def _provider_value(text: str, providers, unit: str, parse, what: str, least: float, least_says: str):
    """`PROVIDER=VALUE` for a command-line switch: the provider and the parsed value, or why not."""
    provider, sep, raw = text.partition("=")
    provider = provider.strip().lower()
    if not sep or provider not in providers:
        raise argparse.ArgumentTypeError(f"{text!r}: use PROVIDER={unit} with PROVIDER one of {', '.join(providers)}")
    try:
        value = parse(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {unit} must be {what}") from None
    if not value >= least:
        raise argparse.ArgumentTypeError(f"{text!r}: {unit} {least_says}")
    return provider, value


def _rate_limit(text: str) -> tuple[str, int]:
    return _provider_value(text, PROVIDERS, "N", int, "a whole number of requests", 1, "must be at least 1")


def _quota(text: str) -> tuple[str, float]:
    return _provider_value(text, PROVIDERS, "SECONDS", float, "a number (the Retry-After sent)", 0, "cannot be negative")


def _misdated(text: str) -> tuple[str, int]:
    return _provider_value(text, MISDATED_PROVIDERS, "SESSIONS", int, "a whole number", 1, "must be at least 1")


def _faults(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in ALL_FAULT_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown fault kind(s) {unknown}: use {', '.join(ALL_FAULT_KINDS)}")
    return kinds


def _fixed_now(text: str):
    try:
        now = pd.Timestamp(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a timestamp: use e.g. 2024-06-03T15:00:00Z") from None
    if now.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset: add Z or +HH:MM")
    return lambda: now


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m backfill_dagster.fakes", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="probability a request gets a fault")
    parser.add_argument("--faults", type=_faults, default=FAULT_KINDS, help="comma list of fault kinds to draw")
    parser.add_argument("--timeout-sleep", type=float, default=5.0, help="seconds a 'timeout' fault stalls")
    parser.add_argument(
        "--rate-limit", type=_rate_limit, action="append", default=[], metavar="PROVIDER=N",
        help="most requests per rate window for a provider (repeatable); absent = unlimited",
    )
    parser.add_argument(
        "--quota-exhausted", type=_quota, action="append", default=[], metavar="PROVIDER=SECONDS",
        help="answer every request of a provider 429 with this Retry-After, a spent quota (repeatable)",
    )
    parser.add_argument(
        "--misdated", type=_misdated, action="append", default=[], metavar="PROVIDER=SESSIONS",
        help="answer every bar request with the bars of that many sessions earlier (a fault)",
    )
    parser.add_argument(
        "--polygon-epoch-seconds", action="store_true",
        help="Polygon aggregates carry `t` in Unix seconds, not milliseconds (a fault)",
    )
    parser.add_argument("--rate-window", type=float, default=60.0, help="rate window in seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--now", type=_fixed_now, default=None, help="a fixed 'now' (tz-aware); default the clock")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["flatfiles"]:
        from backfill_dagster.fakes.flatfiles_cli import main as flatfiles_main

        return flatfiles_main(argv[1:])
    args = parse_args(argv)
    try:
        config = FakeConfig(
            rate_limits=dict(args.rate_limit),
            quota_exhausted=dict(args.quota_exhausted),
            rate_window_s=args.rate_window,
            fault_rate=args.fault_rate,
            faults=args.faults,
            timeout_sleep_s=args.timeout_sleep,
            seed=args.seed,
            now=args.now,
            latency_s=args.latency,
            misdated=dict(args.misdated),
            polygon_epoch_seconds=args.polygon_epoch_seconds,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with FakeProviders(config, host=args.host, port=args.port) as fakes:
        print(fakes.url, flush=True)
        while not done.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What one flat file costs the flat-files fake: a 500-ticker minute file and its day file.

    python bench/flatfiles_generate.py [--tickers 500] [--sessions 3] [--gzip-level 6]

For each session (distinct, so no cache helps), in one run:
- baseline: the raw m15 bars of every ticker, as the REST fakes compute them (BarData);
- minute rows: the same bars decomposed into one-minute rows (includes the baseline's work);
- CSV: the rows as text (numpy, no per-row Python), then gzip at the given level;
- day file: the day rows, CSV and gzip;
- served: the finished minute file fetched over loopback with boto3 from a running fake (cached
  on disk by then), to compare generating with reading.
Prints seconds (wall and CPU of this process), rows, sizes and each phase's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date

import boto3
import pandas as pd
from botocore.config import Config

from backfill_dagster.fakes import flatfile_data
from backfill_dagster.fakes.config import FakeConfig
from backfill_dagster.fakes.data import BarData
from backfill_dagster.fakes.flatfiles import FakeFlatFiles, FlatFilesConfig, object_key


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickers", type=int, default=500, help="tickers in the file (pitfall ones included)")
    parser.add_argument("--sessions", type=int, default=3)
    parser.add_argument("--gzip-level", type=int, default=flatfile_data.GZIP_LEVEL)
    args = parser.parse_args()

    tickers = flatfile_data.universe([], args.tickers - len(flatfile_data.PITFALL_TICKERS))
    sessions = [d for d in BarData().calendar.sessions(date(2024, 10, 1), date(2024, 12, 31))][: args.sessions]
    phases: dict[str, list[tuple[float, float]]] = {}
    rows_count, sizes = [], []

    def note(name, wall, cpu):
        phases.setdefault(name, []).append((wall, cpu))

    for session in sessions:
        data = BarData()  # fresh caches: every phase pays its own generation
        end_ns = data.calendar.served_window(session)[1].value
        _, wall, cpu = timed(lambda: [data.session_slots(t, session, end_ns, adjusted=False) for t in tickers])
        note("baseline: raw m15 bars (REST fakes)", wall, cpu)
        data = BarData()
        rows, wall, cpu = timed(lambda: flatfile_data.minute_rows(data, tickers, session))
        note("minute rows (bars + decomposition)", wall, cpu)
        text, wall, cpu = timed(lambda: flatfile_data.csv_bytes(rows))
        note("minute CSV text", wall, cpu)
        gz, wall, cpu = timed(lambda: flatfile_data.gzip.compress(text, compresslevel=args.gzip_level, mtime=0))
        note(f"minute gzip (level {args.gzip_level})", wall, cpu)
        day_gz, wall, cpu = timed(lambda: flatfile_data.csv_gz(flatfile_data.day_rows(data, tickers, session), args.gzip_level))
        note("day file (rows + CSV + gzip)", wall, cpu)
        rows_count.append(len(rows))
        sizes.append((len(text), len(gz), len(day_gz)))

    market = FakeConfig(now=lambda: pd.Timestamp("2030-01-01", tz="UTC"))
    config = FlatFilesConfig(symbols=(), fillers=args.tickers - len(flatfile_data.PITFALL_TICKERS), gzip_level=args.gzip_level)
    with FakeFlatFiles(config, market) as files:
        s3 = boto3.client("s3", endpoint_url=files.url, region_name="us-east-1",
                          aws_access_key_id=config.access_key_id, aws_secret_access_key=config.secret_access_key,
                          config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
        for session in sessions:
            key = object_key("minute", session)
            _, wall, cpu = timed(lambda: s3.get_object(Bucket="flatfiles", Key=key)["Body"].read())
            note("first GET over loopback (generates)", wall, cpu)
            _, wall, cpu = timed(lambda: s3.get_object(Bucket="flatfiles", Key=key)["Body"].read())
            note("second GET over loopback (disk cache)", wall, cpu)

    base = statistics.median(w for w, _ in phases["baseline: raw m15 bars (REST fakes)"])
    print(f"{len(tickers)} tickers, {len(sessions)} sessions; median per file; ratio = wall / baseline wall")
    print(f"minute rows {statistics.median(rows_count):,.0f}; CSV {statistics.median(s[0] for s in sizes) / 1e6:.1f} MB, "
          f"gzip {statistics.median(s[1] for s in sizes) / 1e6:.2f} MB; day file {statistics.median(s[2] for s in sizes) / 1e3:.1f} KB")
    print(f"{'phase':42} {'wall s':>8} {'cpu s':>8} {'ratio':>7}")
    for name, values in phases.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"{name:42} {wall:8.2f} {cpu:8.2f} {wall / base:7.1f}")


if __name__ == "__main__":
    main()

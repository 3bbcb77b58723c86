"""Store-write benchmark on PostgreSQL: the project's write path vs raw COPY vs pandas to_sql.

    python bench/store_write.py [--symbols 20] [--sessions 250] [--repeat 3]
                                [--url postgresql://postgres@127.0.0.1:5432/postgres]

Every method writes the same m15 bar frame into an empty ohlc_bars table of a fresh database, in
the same run; each is repeated and the best time kept (this machine's disk is noisy):
- raw COPY: the frame serialised and streamed with COPY, nothing else, three ways: binary with the
  project's numpy encoder, text through DataFrame.to_csv, psycopg's row-by-row write_row. The
  fastest of the three is the baseline.
- pandas to_sql: DataFrame.to_sql(..., chunksize=10000) through SQLAlchemy (insertmanyvalues).
- project: BarStore.replace_partitions, what every asset step calls: advisory lock, delete the
  partitions' sessions, binary COPY, coverage-ledger upsert, one transaction.
    * one write: the whole frame in one call (one multi-symbol provider response);
    * per symbol: one call per symbol, 20 transactions (one request per symbol, as in a UI
      backfill with one run per symbol);
    * re-write: one write over partitions that already hold these bars (delete + insert).
- validate: validate_bars over the frame, which runs before every write (reported separately).
Prints bars/s and the ratios (targets: project >= 0.8 x raw COPY and >= 3 x to_sql).
"""

from __future__ import annotations

import argparse
import io
import time
import uuid
from collections import Counter

import pandas as pd
import psycopg

from backfill_dagster.domain.bars import validate_bars
from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.synthetic import synthetic_session_m15
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.store import BarStore, CoverageEntry, create_engine
from backfill_dagster.store.pg_copy import copy_frame
from backfill_dagster.store.schema import BAR_STORE_COLUMNS


def build_frame(symbols: list[str], sessions, calendar) -> pd.DataFrame:
    frames = []
    for symbol in symbols:
        for day in sessions:
            bars = synthetic_session_m15(symbol, day, calendar)
            lo, hi = calendar.window(day)
            frames.append(bars[(bars.ts >= lo) & (bars.ts < hi)])
    return pd.concat(frames, ignore_index=True)


def stored_rows(frame: pd.DataFrame) -> pd.DataFrame:
    rows = frame.copy()
    rows.insert(1, "timeframe", "m15")
    rows["provider"] = "bench"
    rows["adjustment"] = "split"
    return rows[BAR_STORE_COLUMNS]


def coverage_for(frame: pd.DataFrame, sessions, calendar) -> list[CoverageEntry]:
    counts = Counter(zip(frame["symbol"], frame["ts"].dt.tz_convert("America/New_York").dt.date))
    expected = dict(zip(sessions, calendar.expected_counts(sessions, Timeframe.M15)))
    return [
        CoverageEntry(symbol, day, counts.get((symbol, day), 0), int(expected[day]), True)
        for symbol in frame["symbol"].unique()
        for day in sessions
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    calendar = xnys()
    sessions = calendar.sessions("2023-01-01", "2026-12-31")[: args.sessions]
    symbols = [f"S{i:03d}" for i in range(args.symbols)]
    frame = build_frame(symbols, sessions, calendar)
    n = len(frame)
    print(f"frame: {n:,} m15 bars ({args.symbols} symbols x {len(sessions)} sessions), best of {args.repeat}")

    base, _, _ = args.url.rpartition("/")
    dbname = f"bench_write_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    url = f"{base}/{dbname}"
    engine = create_engine(url)
    store = BarStore(engine, calendar)
    now = pd.Timestamp.now(tz="UTC")
    by_symbol = [(s, g, coverage_for(g, sessions, calendar)) for s, g in frame.groupby("symbol", sort=False)]
    everything = coverage_for(frame, sessions, calendar)

    def empty():
        with engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE ohlc_bars, bar_coverage")

    def raw_copy_binary():
        with psycopg.connect(url) as conn:
            copy_frame(conn, stored_rows(frame))

    def raw_copy_text():
        rows = stored_rows(frame)
        buffer = io.StringIO()
        rows.to_csv(buffer, sep="\t", header=False, index=False, na_rep="\\N")
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            with cur.copy(f"COPY ohlc_bars ({', '.join(rows.columns)}) FROM STDIN") as copy:
                copy.write(buffer.getvalue())

    def raw_write_row():
        rows = stored_rows(frame)
        with psycopg.connect(url) as conn, conn.cursor() as cur:
            with cur.copy(f"COPY ohlc_bars ({', '.join(rows.columns)}) FROM STDIN") as copy:
                for record in rows.astype(object).where(rows.notna(), None).itertuples(index=False):
                    copy.write_row(record)

    def to_sql():
        stored_rows(frame).to_sql("ohlc_bars", engine, if_exists="append", index=False, chunksize=10000)

    def project_one_write():
        store.replace_partitions(Timeframe.M15, frame, everything, provider="bench", adjustment="split", fetched_at=now)

    def project_per_symbol():
        for _symbol, bars, coverage in by_symbol:
            store.replace_partitions(Timeframe.M15, bars, coverage, provider="bench", adjustment="split", fetched_at=now)

    def validate():
        validate_bars(frame, Timeframe.M15, calendar, now=now)

    methods = [
        ("raw COPY binary", raw_copy_binary, True),
        ("raw COPY text", raw_copy_text, True),
        ("raw COPY write_row", raw_write_row, True),
        ("pandas to_sql", to_sql, True),
        ("project: one write", project_one_write, True),
        ("project: per symbol", project_per_symbol, True),
        ("project: re-write", project_one_write, False),  # the table already holds these bars
        ("validate_bars", validate, False),
    ]
    results: dict[str, float] = {}
    try:
        for _ in range(args.repeat):
            for name, fn, start_empty in methods:
                if start_empty:
                    empty()
                elif name == "project: re-write":
                    empty()
                    project_one_write()
                start = time.perf_counter()
                fn()
                results[name] = min(results.get(name, float("inf")), time.perf_counter() - start)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM ohlc_bars").scalar() == n
    finally:
        engine.dispose()
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    print(f"{'method':<22} {'seconds':>8} {'bars/s':>12}")
    for name, seconds in results.items():
        print(f"{name:<22} {seconds:>8.3f} {n / seconds:>12,.0f}")
    raw = min(results["raw COPY binary"], results["raw COPY text"], results["raw COPY write_row"])
    for name in ("project: one write", "project: per symbol", "project: re-write"):
        print(
            f"{name:<22} {raw / results[name]:.2f} x raw COPY (target >= 0.8), "
            f"{results['pandas to_sql'] / results[name]:.1f} x pandas to_sql (target >= 3)"
        )


if __name__ == "__main__":
    main()

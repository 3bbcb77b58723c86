"""Gap-sensor benchmark on PostgreSQL: one evaluation of `coverage_gaps` over a million-row ledger,
against the naive baseline of reading the whole ledger into pandas, in the same run.

    python bench/gap_sensor.py [--symbols 500] [--sessions 504] [--repeat 3]
                               [--url postgresql://postgres@127.0.0.1:5432/postgres]

A fresh database gets a coverage ledger of symbols x sessions x 4 timeframes, generated in SQL
(INSERT ... SELECT over unnest/generate_series), with a realistic mix:
- most rows complete (fetched after the close);
- the newest session partial (fetched while open, never finalized) for 10% of the symbols;
- 0.2% failed rows, scattered;
- 10 symbols with a 30-session hole, 0.02% rows deleted at random, 1% of symbols newly added
  (no rows at all).
Then, with the watchlist and the symbol partitions holding every symbol:
- sensor (default horizons): the real sensor evaluated with build_sensor_context — m15 30 days,
  h1/h4 90, d1 365 — ledger queries, in-flight runs, planning, run requests;
- sensor (full horizon): the same with every timeframe's horizon over all sessions;
- find_gaps alone (full horizon): the three ledger queries;
- naive: SELECT * FROM bar_coverage into pandas, then the same gaps by a merge with the expected grid;
- all new: the ledger emptied, every symbol new, so every partition of every horizon is a gap (the
  sensor's worst case: ~220k gaps with the default horizons, 1M with the full one).
Each is repeated and the best time kept. Target: one evaluation < 2 s.
"""

from __future__ import annotations

import argparse
import time
import uuid
import warnings

import dagster as dg
import pandas as pd
import psycopg

from backfill_dagster.domain.calendar import NEW_YORK, xnys
from backfill_dagster.domain.gap_policy import GapPolicy, horizons, ledger_horizons
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.orchestration.gap_sensor import build_gap_sensor
from backfill_dagster.orchestration.partitions import SYMBOLS_PARTITIONS_NAME
from backfill_dagster.orchestration.resources import StoreResource
from backfill_dagster.store import Watchlist, create_engine, dispose_engine
from backfill_dagster.store.gaps import find_gaps

warnings.filterwarnings("ignore")

LEDGER_SQL = """
INSERT INTO bar_coverage (symbol, timeframe, session, status, bars, expected, provider, fetched_at,
                          session_closed, attempts, updated_at)
SELECT s.symbol, t.timeframe, d.session,
       CASE WHEN d.session = %(newest)s AND s.n %% 10 = 0 THEN 'partial'
            WHEN random() < 0.002 THEN 'failed' ELSE 'complete' END,
       t.expected, t.expected, 'bench', %(fetched)s,
       NOT (d.session = %(newest)s AND s.n %% 10 = 0), 1, %(fetched)s
FROM unnest(%(symbols)s::text[]) WITH ORDINALITY AS s(symbol, n)
CROSS JOIN unnest(%(sessions)s::date[]) AS d(session)
CROSS JOIN (VALUES ('m15', 26), ('h1', 7), ('h4', 2), ('d1', 1)) AS t(timeframe, expected)
WHERE s.n > %(new_symbols)s
"""
HOLES_SQL = """
DELETE FROM bar_coverage WHERE symbol = ANY(%(symbols)s::text[]) AND session = ANY(%(sessions)s::date[])
"""
SCATTER_SQL = "DELETE FROM bar_coverage WHERE random() < 0.0002"


def admin(url: str):
    return psycopg.connect(url, autocommit=True)


def database_url(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def naive_gaps(engine, symbols, wanted) -> int:
    """Read every ledger row into pandas and find the same gaps with a merge."""
    ledger = pd.read_sql("SELECT * FROM bar_coverage", engine)
    total = 0
    for timeframe, days in wanted.items():
        if not days:
            continue
        grid = pd.MultiIndex.from_product([symbols, days], names=["symbol", "session"]).to_frame(index=False)
        rows = ledger[ledger.timeframe == timeframe.value]
        merged = grid.merge(rows, on=["symbol", "session"], how="left")
        covered = (merged.status == "complete") & merged.session_closed.fillna(False).astype(bool)
        total += int((~covered).sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--sessions", type=int, default=504)
    parser.add_argument("--repeat", type=int, default=3)  # best of
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    calendar = xnys()
    now = pd.Timestamp("2025-12-31 12:00", tz=NEW_YORK).tz_convert("UTC")  # 2025-12-30 is the newest settled
    sessions = calendar.sessions("2023-01-01", "2025-12-30")[-args.sessions :]
    symbols = [f"S{i:04d}" for i in range(args.symbols)]
    new_symbols = max(1, args.symbols // 100)
    name = f"bfd_bench_{uuid.uuid4().hex[:8]}"
    url = database_url(args.url, name)
    with admin(args.url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    engine = None
    try:
        engine = create_engine(url)
        t0 = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT setseed(0.42)")
            conn.execute(LEDGER_SQL, {
                "symbols": symbols, "sessions": sessions, "newest": sessions[-1],
                "fetched": now.to_pydatetime(), "new_symbols": new_symbols,
            })
            mid = len(sessions) // 2
            conn.execute(HOLES_SQL, {"symbols": symbols[new_symbols : new_symbols + 10], "sessions": sessions[mid : mid + 30]})
            conn.execute(SCATTER_SQL)
            conn.execute("VACUUM ANALYZE bar_coverage")
            rows = conn.execute("SELECT count(*) FROM bar_coverage").fetchone()[0]
            mix = dict(conn.execute("SELECT status, count(*) FROM bar_coverage GROUP BY status").fetchall())
        load_s = time.perf_counter() - t0
        Watchlist(engine).add(symbols)
        print(f"ledger: {rows:,} rows ({args.symbols} symbols x {len(sessions)} sessions x 4 timeframes, "
              f"{new_symbols} new symbols without rows), {mix}, loaded in {load_s:.1f} s")

        full = GapPolicy(history_days={t: (now.date() - sessions[0]).days for t in Timeframe})
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, symbols)
            resources = {"store": StoreResource(database_url=url)}
            figures = {}
            for label, policy in (("sensor (default horizons)", GapPolicy()), ("sensor (full horizon)", full)):
                sensor = build_gap_sensor(sessions[0], policy, clock=lambda: now)

                def evaluate(sensor=sensor):
                    return sensor(dg.build_sensor_context(instance=instance, resources=resources))

                figures[label] = best_of(args.repeat, evaluate)
            wanted = horizons(full, calendar, now, sessions[0])
            figures["find_gaps alone (full horizon)"] = best_of(
                args.repeat, lambda: find_gaps(engine, symbols, ledger_horizons(wanted))
            )
            figures["naive: whole ledger into pandas"] = best_of(args.repeat, lambda: naive_gaps(engine, symbols, wanted))
            # The worst case for the sensor: every symbol new, so every partition is a gap.
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("TRUNCATE bar_coverage")
            for label, policy in (("all new: sensor (default horizons)", GapPolicy()),
                                  ("all new: sensor (full horizon)", full)):
                sensor = build_gap_sensor(sessions[0], policy, clock=lambda: now)
                figures[label] = best_of(args.repeat, lambda sensor=sensor: sensor(
                    dg.build_sensor_context(instance=instance, resources=resources)))

        print(f"{'':36} {'best of ' + str(args.repeat):>12}  result")
        for label, (seconds, value) in figures.items():
            if isinstance(value, list):
                what = f"{len(value)} run request(s)"
            elif isinstance(value, dict):
                what = f"{sum(len(g) for g in value.values()):,} gaps"
            elif isinstance(value, int):
                what = f"{value:,} gaps"
            else:
                what = str(value)
            print(f"{label:36} {seconds:10.3f} s  {what}")
        sensor_s = figures["sensor (full horizon)"][0]
        naive_s = figures["naive: whole ledger into pandas"][0]
        print(f"naive / sensor (full horizon): {naive_s / sensor_s:.1f}x; target < 2 s: "
              f"{'met' if max(figures['sensor (default horizons)'][0], sensor_s) < 2 else 'MISSED'}")
    finally:
        if engine is not None:
            engine.dispose()
        dispose_engine(url)
        with admin(args.url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()

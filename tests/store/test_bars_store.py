"""Partition replaces: atomic, idempotent, concurrent-safe; the ledger and quarantine beside them.
Every test runs on SQLite and on PostgreSQL."""

import threading
from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa

from backfill_dagster.domain.ledger import Decision
from backfill_dagster.domain.synthetic import synthetic_session_m15
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.store import BarStore, CoverageEntry, shared_engine
from backfill_dagster.store.schema import ohlc_bars
from tests.conftest import THANKSGIVING_WEEK, utc

NOW = utc("2025-01-01 00:00")


def m15(calendar, symbol, sessions):
    frames = []
    for d in sessions:
        day = synthetic_session_m15(symbol, d, calendar)
        lo, hi = calendar.window(d)
        frames.append(day[(day.ts >= lo) & (day.ts < hi)])
    return pd.concat(frames, ignore_index=True)


def write(store, symbol, sessions, bars=None, provider="demo:synthetic", closed=True, allow_fewer=False):
    bars = m15(store.calendar, symbol, sessions) if bars is None else bars
    counts = bars.groupby(bars.ts.dt.tz_convert("America/New_York").dt.date).size()
    coverage = [CoverageEntry(symbol, d, int(counts.get(d, 0)), int(store.calendar.expected_counts([d], Timeframe.M15)[0]), closed) for d in sessions]
    return store.replace_partitions(Timeframe.M15, bars, coverage, provider=provider, adjustment="split", fetched_at=NOW,
                                    run_id="r1", allow_fewer=allow_fewer)


def dump(store):
    with store.engine.connect() as conn:
        return conn.execute(sa.select(ohlc_bars).order_by(ohlc_bars.c.symbol, ohlc_bars.c.timeframe, ohlc_bars.c.ts)).all()


def test_replace_is_idempotent_and_round_trips_exactly(store):
    written = write(store, "AAPL", THANKSGIVING_WEEK)
    assert written.bars == 26 * 3 + 14 and written.written == [("AAPL", d) for d in THANKSGIVING_WEEK]
    first = dump(store)
    write(store, "AAPL", THANKSGIVING_WEEK)
    assert dump(store) == first
    back = store.read_bars(Timeframe.M15, [("AAPL", d) for d in THANKSGIVING_WEEK])
    source = m15(store.calendar, "AAPL", THANKSGIVING_WEEK)
    pd.testing.assert_frame_equal(back[list(source.columns)], source, check_exact=True)
    assert set(back["session"]) == set(THANKSGIVING_WEEK)
    assert (back["ts"].dt.tz is not None) and str(back["ts"].dt.tz) == "UTC"


def test_replace_only_touches_its_partitions(store):
    write(store, "AAPL", THANKSGIVING_WEEK)
    write(store, "MSFT", THANKSGIVING_WEEK)
    # Re-write one session of AAPL with fewer bars (the operator allows it): only that partition changes.
    fewer = m15(store.calendar, "AAPL", [date(2024, 11, 27)]).iloc[:5]
    write(store, "AAPL", [date(2024, 11, 27)], bars=fewer, allow_fewer=True)
    rows = dump(store)
    by = pd.DataFrame([r._mapping for r in rows]).assign(session=lambda f: f.ts.apply(lambda t: t.astimezone(pd.Timestamp(0, tz="America/New_York").tz).date()))
    counts = by.groupby(["symbol", "session"]).size()
    assert counts[("AAPL", date(2024, 11, 27))] == 5
    assert counts[("AAPL", date(2024, 11, 26))] == 26 and counts[("AAPL", date(2024, 11, 29))] == 14
    assert counts[("MSFT", date(2024, 11, 27))] == 26
    ledger = store.coverage(Timeframe.M15, ["AAPL"]).set_index("session")
    assert ledger.loc[date(2024, 11, 27), "bars"] == 5 and ledger.loc[date(2024, 11, 27), "attempts"] == 2


def test_a_non_contiguous_write_leaves_the_sessions_between_alone(store):
    write(store, "AAPL", THANKSGIVING_WEEK)
    ends = [date(2024, 11, 25), date(2024, 11, 29)]
    bars = m15(store.calendar, "AAPL", ends)
    few = bars.groupby(bars.ts.dt.tz_convert("America/New_York").dt.date).head(1)  # one bar of each
    write(store, "AAPL", ends, bars=few, allow_fewer=True)
    back = store.read_bars(Timeframe.M15, [("AAPL", d) for d in THANKSGIVING_WEEK])
    assert back.groupby("session").size().to_dict() == {
        date(2024, 11, 25): 1, date(2024, 11, 26): 26, date(2024, 11, 27): 26, date(2024, 11, 29): 1
    }


def test_a_failed_write_leaves_the_old_bars(store):
    write(store, "AAPL", THANKSGIVING_WEEK)
    before = dump(store)
    bad = m15(store.calendar, "AAPL", THANKSGIVING_WEEK)
    bad.loc[40, "high"] = bad.loc[40, "low"] - 1  # the database's own constraint refuses this
    with pytest.raises(sa.exc.IntegrityError if not store.is_postgres else Exception):
        write(store, "AAPL", THANKSGIVING_WEEK, bars=bad)
    assert dump(store) == before


@pytest.mark.parametrize(
    "column, value",
    [("open", -1.0), ("volume", -1.0), ("high", float("nan")), ("timeframe", "m5"), ("adjustment", "weird")],
)
def test_database_constraints_refuse_invalid_bars(store, column, value):
    row = {"symbol": "AAPL", "timeframe": "m15", "ts": utc("2024-11-25 14:30").to_pydatetime(), "open": 10.0, "high": 11.0,
           "low": 9.0, "close": 10.0, "volume": 1.0, "vwap": None, "trade_count": None, "provider": "x", "adjustment": "split"}
    row[column] = value
    with pytest.raises(sa.exc.IntegrityError):
        with store.engine.begin() as conn:
            conn.execute(ohlc_bars.insert(), [row])


def test_failures_keep_earlier_bars_and_counts(store):
    write(store, "AAPL", [date(2024, 11, 25)])
    store.record_failures(Timeframe.M15, {("AAPL", date(2024, 11, 25)): "alpaca: 503", ("AAPL", date(2024, 11, 26)): "alpaca: 503"},
                          expected={date(2024, 11, 25): 26, date(2024, 11, 26): 26}, at=NOW, run_id="r2")
    ledger = store.coverage(Timeframe.M15, ["AAPL"]).set_index("session")
    assert list(ledger["status"]) == ["failed", "failed"]
    assert ledger.loc[date(2024, 11, 25), "bars"] == 26 and ledger.loc[date(2024, 11, 25), "provider"] == "demo:synthetic"
    assert ledger.loc[date(2024, 11, 26), "bars"] == 0 and ledger.loc[date(2024, 11, 26), "error"] == "alpaca: 503"
    assert len(store.read_bars(Timeframe.M15, [("AAPL", date(2024, 11, 25))])) == 26


def test_quarantine_keeps_rejected_bars_with_reasons(store):
    rejected = pd.DataFrame({"symbol": ["AAPL", None], "ts": [utc("2024-11-25 14:30"), pd.NaT], "open": [1.0, float("nan")],
                             "high": [0.5, None], "low": [1.0, None], "close": [1.0, None], "volume": [1.0, None], "vwap": [None, None],
                             "trade_count": pd.array([3, None], dtype="Int64"), "session": [date(2024, 11, 25), None],
                             "reason": ["high is below low", "missing or unparseable timestamp"]})
    assert store.quarantine(rejected, Timeframe.M15, provider="alpaca", at=NOW, run_id="r1") == 2
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT symbol, reason, open, trade_count FROM rejected_bars ORDER BY id")).all()
    assert rows[0] == ("AAPL", "high is below low", 1.0, 3)
    assert rows[1][0] is None and rows[1][2] is None


def test_concurrent_overlapping_replaces_never_duplicate_or_lose(store_url, calendar):
    stores = [BarStore(shared_engine(store_url), calendar) for _ in range(4)]
    sessions = calendar.sessions("2024-10-01", "2024-11-29")
    errors = []

    def worker(i):
        try:
            for _ in range(3):
                write(stores[i], "AAPL", sessions[i * 5 : i * 5 + 20])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    back = stores[0].read_bars(Timeframe.M15, [("AAPL", d) for d in sessions])
    assert not back.duplicated(["symbol", "ts"]).any()
    covered = sorted(set(back["session"]))
    assert covered == sessions[: 3 * 5 + 20]
    expected = m15(calendar, "AAPL", covered)
    assert len(back) == len(expected)


# ---------------------------------------------------------------- a worse answer never replaces better bars
DAY = date(2024, 11, 26)


def ledger_row(store, session=DAY):
    return store.coverage(Timeframe.M15, ["AAPL"]).set_index("session").loc[session]


def test_a_final_answer_with_fewer_bars_keeps_the_final_stored_ones(store):
    write(store, "AAPL", [DAY])
    result = write(store, "AAPL", [DAY], bars=m15(store.calendar, "AAPL", [DAY]).iloc[:20])
    assert result.written == [] and result.refused() == {("AAPL", DAY): Decision.FEWER}
    assert len(store.read_bars(Timeframe.M15, [("AAPL", DAY)])) == 26
    assert (ledger_row(store).status, ledger_row(store).bars) == ("complete", 26)
    allowed = write(store, "AAPL", [DAY], bars=m15(store.calendar, "AAPL", [DAY]).iloc[:20], allow_fewer=True)
    assert allowed.written == [("AAPL", DAY)] and len(store.read_bars(Timeframe.M15, [("AAPL", DAY)])) == 20


def test_a_final_answer_without_bars_never_deletes_stored_bars(store):
    write(store, "AAPL", [DAY])
    for allow_fewer in (False, True):
        result = write(store, "AAPL", [DAY], bars=m15(store.calendar, "AAPL", [DAY]).iloc[:0], allow_fewer=allow_fewer)
        assert result.refused() == {("AAPL", DAY): Decision.EMPTY}
    assert len(store.read_bars(Timeframe.M15, [("AAPL", DAY)])) == 26


def test_a_provisional_answer_never_replaces_final_bars(store):
    write(store, "AAPL", [DAY])
    more = m15(store.calendar, "AAPL", [DAY])
    result = write(store, "AAPL", [DAY], bars=more.iloc[:25], closed=False, allow_fewer=True)
    assert result.kept() == [("AAPL", DAY)] and not result.refused()
    assert (ledger_row(store).status, ledger_row(store).bars) == ("complete", 26)


def test_refusals_say_empty_unless_final_bars_are_stored(store):
    write(store, "AAPL", [DAY])
    other = date(2024, 11, 27)
    notes = {("AAPL", DAY): "x answered no bars", ("AAPL", other): "x answered no bars"}
    for _ in range(2):
        store.record_refusals(Timeframe.M15, notes, expected={DAY: 26, other: 26}, at=NOW, run_id="r2")
    kept, empty = ledger_row(store), ledger_row(store, other)
    assert (kept.status, kept.bars, kept.error) == ("complete", 26, "x answered no bars")
    assert (empty.status, empty.bars, bool(empty.session_closed), empty.attempts) == ("empty", 0, True, 2)
    write(store, "AAPL", [other])  # bars at last: complete, and the count of attempts starts again
    assert (ledger_row(store, other).status, ledger_row(store, other).attempts) == ("complete", 1)


@pytest.mark.postgres
def test_an_m15_writer_waits_while_a_derivation_reads_and_writes(pg_url, calendar):
    store = BarStore(shared_engine(pg_url), calendar)
    write(store, "AAPL", [DAY])
    inside, release, finished = threading.Event(), threading.Event(), threading.Event()

    def derive():
        with store.derivation(Timeframe.M15, Timeframe.H1, ["AAPL"]) as tx:
            tx.read_source([("AAPL", DAY)])
            inside.set()
            release.wait(10)

    def rewrite():
        write(store, "AAPL", [DAY], bars=m15(calendar, "AAPL", [DAY]).iloc[:20], allow_fewer=True)
        finished.set()

    deriver = threading.Thread(target=derive)
    deriver.start()
    assert inside.wait(10)
    writer = threading.Thread(target=rewrite)
    writer.start()
    assert not finished.wait(1.0), "the m15 write went through while a derivation held m15"
    release.set()
    deriver.join(10)
    assert finished.wait(10)
    writer.join(10)


def test_the_ledger_keeps_why_a_partition_was_rewritten_until_another_reason_replaces_it(store):
    """A repair run's reason is written with its bars; an ordinary fetch later does not erase it."""
    day = [date(2024, 11, 26)]
    write(store, "AAPL", day)
    assert store.coverage(Timeframe.M15, ["AAPL"])["rewrite_reason"].tolist() == [None]

    def rewrite(reason):
        bars = m15(store.calendar, "AAPL", day)
        entry = [CoverageEntry("AAPL", day[0], len(bars), 26, True)]
        store.replace_partitions(Timeframe.M15, bars, entry, provider="demo:synthetic", adjustment="split",
                                 fetched_at=NOW, run_id="r2", rewrite_reason=reason)
        return store.coverage(Timeframe.M15, ["AAPL"])["rewrite_reason"].tolist()

    assert rewrite("split 4:1 ex 2024-12-02") == ["split 4:1 ex 2024-12-02"]
    assert rewrite(None) == ["split 4:1 ex 2024-12-02"]
    assert rewrite("split 1:10 ex 2025-01-06") == ["split 1:10 ex 2025-01-06"]


def test_a_split_repair_accepts_fewer_bars_only_where_the_new_basis_explains_them(store):
    """Repairing a 1-for-10 reverse split: a bar of fewer than 10 shares is under one share on the new
    basis and may drop out of the answer; an answer that lacks any other bar is partial and refused,
    naming how many the split explains, and the stored bars stay."""
    from fractions import Fraction

    day = date(2024, 11, 26)
    old = m15(store.calendar, "AAPL", [day])
    old.loc[old.index[[3, 7]], "volume"] = [4.0, 9.0]  # 0.4 and 0.9 shares after a 1:10 split
    write(store, "AAPL", [day], bars=old)
    rebased = old.assign(**{c: old[c] * 10 for c in ("open", "high", "low", "close", "vwap")},
                         volume=old.volume / 10)

    def repair(answer, ratio):
        coverage = [CoverageEntry("AAPL", day, len(answer), 26, True)]
        return store.replace_partitions(Timeframe.M15, answer, coverage, provider="alpaca:sip", adjustment="split",
                                        fetched_at=NOW, run_id="repair", split_ratio=ratio)

    partial = repair(rebased.iloc[8:18], Fraction(1, 10))  # 10 of 26, two of the missing under one share
    assert partial.decisions == {("AAPL", day): Decision.FEWER} and partial.written == []
    assert partial.unexplained[("AAPL", day)] == (
        "the split 1:10 explains 2 of the 16 missing (only a bar under one share on the new basis may drop out)")
    assert len(store.read_bars(Timeframe.M15, [("AAPL", day)])) == 26
    # A forward split multiplies volume: it explains no missing bar at all.
    assert repair(rebased.drop(index=old.index[[3, 7]]), Fraction(4)).decisions[("AAPL", day)] is Decision.FEWER
    # Exactly the bars under one share on the new basis missing: the new basis explains it, written.
    explained = repair(rebased.drop(index=old.index[[3, 7]]), Fraction(1, 10))
    assert explained.written == [("AAPL", day)] and explained.unexplained == {}
    assert len(store.read_bars(Timeframe.M15, [("AAPL", day)])) == 24


@pytest.mark.postgres
def test_postgres_reads_bars_by_copy_exactly_as_sqlite_reads_rows(pg_url, sqlite_url, calendar):
    # PostgreSQL reads bars back by one COPY parsed by pandas; SQLite row by row. The same writes
    # must read back identical: tickers that read like missing values, NULL vwap and trade count,
    # floats with no short decimal form, several ranges per symbol, ranges in the store's order.
    sessions = [date(2024, 11, 25), date(2024, 11, 26), date(2024, 11, 29), date(2024, 12, 3)]
    frames = []
    for n, symbol in enumerate(["NULL", "NA", "nan", "BRK.B", "AAPL"]):
        bars = m15(calendar, symbol, sessions)
        bars[["open", "high", "low", "close", "vwap"]] *= 1 / 3 + n
        bars["volume"] = bars["volume"] * 1e6 + 0.1
        if symbol in ("NA", "nan"):
            bars.loc[bars.index[::3], "vwap"] = float("nan")
            bars["trade_count"] = bars["trade_count"].astype("Int64")
            bars.loc[bars.index[1::4], "trade_count"] = pd.NA
        frames.append(bars)
    wanted = [(s, d) for s in ["NULL", "NA", "nan", "BRK.B", "AAPL"] for d in (sessions[0], sessions[1], sessions[3])]
    backs = []
    for url in (pg_url, sqlite_url):
        store = BarStore(shared_engine(url), calendar)
        for bars in frames:
            write(store, bars.symbol.iloc[0], sessions, bars=bars)
        backs.append(store.read_bars(Timeframe.M15, wanted))
    on_pg, on_sqlite = backs
    assert len(on_pg) == 5 * (26 * 2 + 26) and on_pg["symbol"].tolist()[:1] == ["AAPL"]
    pd.testing.assert_frame_equal(on_pg, on_sqlite, check_exact=True)
    assert on_pg["vwap"].isna().sum() > 0 and on_pg["trade_count"].isna().sum() > 0
    assert set(on_pg["symbol"]) == {"NULL", "NA", "nan", "BRK.B", "AAPL"}
    source = pd.concat(frames, ignore_index=True)
    source = source[[(s, d) in set(wanted) for s, d in zip(source.symbol, source.ts.dt.tz_convert("America/New_York").dt.date)]]
    merged = on_pg.merge(source, on=["symbol", "ts"], suffixes=("", "_written"))
    assert len(merged) == len(on_pg)
    for column in ("open", "high", "low", "close", "volume"):
        assert (merged[column] == merged[f"{column}_written"]).all(), column


def test_bars_are_written_and_read_in_parts_exactly_as_whole(store, monkeypatch):
    """COPY data goes out a part at a time and stored rows come back a batch at a time (memory
    follows the part): with parts of 7 rows and batches of 10, what is stored and read back is what
    one part and one batch give, NULL vwap and trade_count included."""
    from backfill_dagster.store import bars as bar_module, pg_copy

    sessions = THANKSGIVING_WEEK
    frames = {s: m15(store.calendar, s, sessions) for s in ("AAPL", "MSFT")}
    frames["MSFT"].loc[3:9, "vwap"] = float("nan")
    frames["MSFT"].loc[5:20, "trade_count"] = pd.NA

    def write_and_read():
        for symbol, bars in frames.items():
            write(store, symbol, sessions, bars=bars)
        stored = dump(store)
        partitions = [(s, d) for s in frames for d in sessions]
        return stored, store.read_bars(Timeframe.M15, partitions)

    whole_rows, whole = write_and_read()
    monkeypatch.setattr(pg_copy, "PART_ROWS", 7)
    monkeypatch.setattr(bar_module, "READ_BATCH_ROWS", 10)
    with store.engine.begin() as conn:
        conn.execute(sa.delete(ohlc_bars))
    parts_rows, parts = write_and_read()
    assert parts_rows == whole_rows and len(whole_rows) == 2 * (26 * 3 + 14)
    pd.testing.assert_frame_equal(parts, whole, check_exact=True)
    source = pd.concat(frames.values(), ignore_index=True)
    pd.testing.assert_frame_equal(parts[list(source.columns)], source, check_exact=True)
    assert list(parts.columns) == [*source.columns, "provider", "adjustment", "session"]
    assert set(parts["provider"]) == {"demo:synthetic"} and set(parts["adjustment"]) == {"split"}
    assert list(parts["session"]) == [d for s in frames for d in sessions for _ in range(26 if d != date(2024, 11, 29) else 14)]


def test_coverage_can_be_read_for_a_span_of_sessions(store):
    write(store, "AAPL", THANKSGIVING_WEEK)
    write(store, "MSFT", THANKSGIVING_WEEK)
    every = store.coverage(Timeframe.M15, ["AAPL"])
    span = store.coverage(Timeframe.M15, ["AAPL"], sessions=(date(2024, 11, 26), date(2024, 11, 27)))
    assert list(every["session"]) == list(THANKSGIVING_WEEK)
    assert list(span["session"]) == [date(2024, 11, 26), date(2024, 11, 27)] and set(span["symbol"]) == {"AAPL"}
    pd.testing.assert_frame_equal(span.reset_index(drop=True), every.iloc[[1, 2]].reset_index(drop=True))

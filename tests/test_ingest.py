"""Filling partitions without Dagster: fetch with fallback, validation, atomic writes, derive."""

from datetime import date

import pandas as pd
import pytest

from backfill_dagster.domain.calendar import SessionNotOpenError
from backfill_dagster.domain.provider_errors import ProviderError
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.ingest import derive_partitions, fetch_partitions
from backfill_dagster.providers.base import FetchResult
from backfill_dagster.providers.demo import DemoProvider
from backfill_dagster.providers.router import Router
from tests.conftest import THANKSGIVING_WEEK, fixed_clock, utc

LATER = fixed_clock("2025-01-02 00:00")


class Scripted(DemoProvider):
    """The demo provider with a twist applied to its output, counting calls."""

    def __init__(self, calendar, name, twist=None, clock=LATER):
        super().__init__(calendar, clock)
        self.name = name
        self.twist = twist
        self.calls = 0

    @property
    def provenance(self):
        return self.name

    def fetch(self, request):
        self.calls += 1
        result = super().fetch(request)
        bars = self.twist(result.bars.copy(), request) if self.twist else result.bars
        return FetchResult(bars=bars, api_calls=1)


def fail(_bars, request):
    raise ProviderError("down", "HTTP 503 from the server", status=503, request=request)


def corrupt_one(target_session):
    def twist(bars, _request):
        day = bars.ts.dt.tz_convert("America/New_York").dt.date == target_session
        i = bars.index[day & (bars.symbol == "AAPL")][3]
        bars.loc[i, "high"] = bars.loc[i, "low"] / 2
        return bars
    return twist


def box(symbols, sessions):
    return [(s, d) for s in symbols for d in sessions]


def test_demo_fills_a_box_in_one_request(store, calendar):
    provider = Scripted(calendar, "demo")
    report = fetch_partitions(box(["AAPL", "MSFT"], THANKSGIVING_WEEK), Timeframe.M15, Router([provider], calendar), store, clock=LATER)
    assert report.ok and provider.calls == 1
    assert report.bars_written == report.bars_expected == 2 * (26 * 3 + 14)
    ledger = store.coverage(Timeframe.M15)
    assert set(ledger["status"]) == {"complete"} and len(ledger) == 8


def test_a_failing_provider_falls_back_to_the_next(store, calendar):
    down, backup = Scripted(calendar, "down", fail), Scripted(calendar, "backup")
    report = fetch_partitions(box(["AAPL"], THANKSGIVING_WEEK), Timeframe.M15, Router([down, backup], calendar), store, clock=LATER)
    assert report.ok and down.calls == 1 and backup.calls == 1
    assert dict(report.served_by) == {"backup": 4}
    assert set(store.coverage(Timeframe.M15)["provider"]) == {"backup"}


def test_an_invalid_bar_fails_only_its_partition_and_is_quarantined(store, calendar):
    bad_day = date(2024, 11, 26)
    provider = Scripted(calendar, "flaky", corrupt_one(bad_day))
    report = fetch_partitions(box(["AAPL", "MSFT"], THANKSGIVING_WEEK), Timeframe.M15, Router([provider], calendar), store, clock=LATER)
    assert set(report.failures) == {("AAPL", bad_day)}
    assert "flaky returned 1 invalid bar(s)" in report.failures[("AAPL", bad_day)]
    assert "high is below low" in report.failures[("AAPL", bad_day)]
    assert report.rejected_bars == 1
    assert store.read_bars(Timeframe.M15, [("AAPL", bad_day)]).empty  # nothing of it written
    assert len(store.read_bars(Timeframe.M15, box(["MSFT"], THANKSGIVING_WEEK))) == 26 * 3 + 14
    ledger = store.coverage(Timeframe.M15).set_index(["symbol", "session"])
    assert ledger.loc[("AAPL", bad_day), "status"] == "failed"
    assert "high is below low" in ledger.loc[("AAPL", bad_day), "error"]
    with store.engine.connect() as conn:
        reasons = [r[0] for r in conn.exec_driver_sql("SELECT reason FROM rejected_bars").all()]
    assert len(reasons) == 1 and "high is below low" in reasons[0]


def test_an_invalid_partition_is_retried_with_the_next_provider(store, calendar):
    bad_day = date(2024, 11, 26)
    flaky, backup = Scripted(calendar, "flaky", corrupt_one(bad_day)), Scripted(calendar, "backup")
    report = fetch_partitions(box(["AAPL"], THANKSGIVING_WEEK), Timeframe.M15, Router([flaky, backup], calendar), store, clock=LATER)
    assert report.ok
    assert dict(report.served_by) == {"flaky": 3, "backup": 1}


def test_a_foreign_symbol_taints_the_whole_request(store, calendar):
    def foreign(bars, _r):
        extra = bars.iloc[:1].copy()
        extra["symbol"] = "EVIL"
        return pd.concat([bars, extra], ignore_index=True)

    report = fetch_partitions(box(["AAPL"], THANKSGIVING_WEEK[:2]), Timeframe.M15, Router([Scripted(calendar, "x", foreign)], calendar), store, clock=LATER)
    assert len(report.failures) == 2 and not report.written
    assert "symbol was not requested" in next(iter(report.failures.values()))
    with store.engine.connect() as conn:
        kept = conn.exec_driver_sql("SELECT symbol, reason FROM rejected_bars").all()
    assert kept == [("EVIL", "symbol was not requested")]


def test_when_every_provider_fails_earlier_bars_stay(store, calendar):
    fetch_partitions(box(["AAPL"], THANKSGIVING_WEEK), Timeframe.M15, Router([Scripted(calendar, "demo")], calendar), store, clock=LATER)
    report = fetch_partitions(box(["AAPL"], THANKSGIVING_WEEK), Timeframe.M15, Router([Scripted(calendar, "down", fail)], calendar), store, clock=LATER)
    assert len(report.failures) == 4
    assert "down for m15 AAPL 2024-11-25..2024-11-29: HTTP 503 from the server (last HTTP status 503)" in report.failure_summary()
    assert len(store.read_bars(Timeframe.M15, box(["AAPL"], THANKSGIVING_WEEK))) == 26 * 3 + 14
    assert set(store.coverage(Timeframe.M15)["status"]) == {"failed"}


def test_a_session_that_has_not_opened_is_refused_before_anything_happens(store, calendar):
    provider = Scripted(calendar, "demo")
    with pytest.raises(SessionNotOpenError, match="2024-11-29 has not opened yet"):
        fetch_partitions(box(["AAPL"], THANKSGIVING_WEEK), Timeframe.M15, Router([provider], calendar), store, clock=fixed_clock("2024-11-29 12:00"))
    assert provider.calls == 0 and store.coverage().empty


def test_an_open_session_is_partial_then_complete(store, calendar):
    day = [date(2024, 11, 29)]
    during = fixed_clock("2024-11-29 16:00")
    fetch_partitions(box(["AAPL"], day), Timeframe.M15, Router([Scripted(calendar, "demo", clock=during)], calendar), store, clock=during)
    row = store.coverage(Timeframe.M15).iloc[0]
    assert (row.status, row.bars, row.expected, bool(row.session_closed)) == ("partial", 6, 14, False)
    fetch_partitions(box(["AAPL"], day), Timeframe.M15, Router([Scripted(calendar, "demo")], calendar), store, clock=LATER)
    row = store.coverage(Timeframe.M15).iloc[0]
    assert (row.status, row.bars, bool(row.session_closed)) == ("complete", 14, True)


def test_derive_h1_h4_from_stored_m15(store, calendar):
    parts = box(["AAPL"], THANKSGIVING_WEEK)
    fetch_partitions(parts, Timeframe.M15, Router([Scripted(calendar, "demo")], calendar), store, clock=LATER)
    h1 = derive_partitions(parts, Timeframe.H1, store, clock=LATER)
    h4 = derive_partitions(parts, Timeframe.H4, store, clock=LATER)
    assert h1.ok and h4.ok
    assert h1.bars_written == 7 * 3 + 4 and h4.bars_written == 2 * 3 + 1
    bars = store.read_bars(Timeframe.H4, parts)
    assert list(bars[bars.session == date(2024, 11, 29)]["ts"]) == [utc("2024-11-29 14:30")]
    assert set(bars["provider"]) == {"resample:demo"}


def test_derive_refuses_partitions_whose_m15_is_missing(store, calendar):
    parts = box(["AAPL"], THANKSGIVING_WEEK)
    fetch_partitions(parts[:2], Timeframe.M15, Router([Scripted(calendar, "demo")], calendar), store, clock=LATER)
    report = derive_partitions(parts, Timeframe.H1, store, clock=LATER)
    assert sorted(report.written) == parts[:2]
    assert "its m15 partition is never fetched; materialize bars_m15 for it first" in report.failures[parts[2]]



def test_derive_chunks_hold_at_most_their_symbols_and_partitions():
    from backfill_dagster.ingest import derive_chunks

    wanted = sorted(box([f"S{i:02d}" for i in range(7)], THANKSGIVING_WEEK))
    for max_symbols, max_partitions in ((3, 100), (25, 5), (2, 3), (1, 1)):
        chunks = derive_chunks(wanted, max_symbols, max_partitions)
        assert [p for c in chunks for p in c] == wanted
        assert all(len(c) <= max_partitions and len({s for s, _ in c}) <= max_symbols for c in chunks)
    assert [len(c) for c in derive_chunks(wanted, 3, 100)] == [12, 12, 4]  # whole symbols while they fit
    assert [len(c) for c in derive_chunks(wanted, 25, 5)] == [5] * 5 + [3]  # a symbol's sessions split


def test_derive_in_chunks_writes_what_one_chunk_writes(store, calendar, monkeypatch):
    """A derivation is a transaction over a chunk of at most DERIVE_PARTITIONS_PER_CHUNK partitions
    (memory follows the chunk): chunks of 3 write the bars and ledger rows one chunk writes, and
    report the same, a partition whose m15 is missing included."""
    import sqlalchemy as sa

    from backfill_dagster import ingest
    from backfill_dagster.store.schema import bar_coverage, ohlc_bars

    parts = box(["AAPL", "MSFT"], THANKSGIVING_WEEK)
    fetch_partitions(parts[1:], Timeframe.M15, Router([Scripted(calendar, "demo")], calendar), store, clock=LATER)

    def derived():
        out = []
        for timeframe in (Timeframe.H1, Timeframe.H4):
            report = derive_partitions(parts, timeframe, store, clock=LATER)
            out.append((sorted(report.written), report.bars_written, report.failures, dict(report.served_by)))
        with store.engine.connect() as conn:
            bars = conn.execute(sa.select(ohlc_bars).where(ohlc_bars.c.timeframe != "m15")
                                .order_by(ohlc_bars.c.symbol, ohlc_bars.c.timeframe, ohlc_bars.c.ts)).all()
            ledger = conn.execute(sa.select(*[c for c in bar_coverage.c if c.name not in ("updated_at", "attempts")])
                                  .where(bar_coverage.c.timeframe != "m15")
                                  .order_by(bar_coverage.c.symbol, bar_coverage.c.timeframe, bar_coverage.c.session)).all()
        with store.engine.begin() as conn:
            conn.execute(sa.delete(ohlc_bars).where(ohlc_bars.c.timeframe != "m15"))
            conn.execute(sa.delete(bar_coverage).where(bar_coverage.c.timeframe != "m15"))
        return out, bars, ledger

    whole = derived()
    monkeypatch.setattr(ingest, "DERIVE_PARTITIONS_PER_CHUNK", 3)
    chunked = derived()
    assert chunked == whole
    h1_written, h1_bars, h1_failures, _ = whole[0][0]
    assert h1_written == parts[1:] and h1_bars == 2 * (7 * 3 + 4) - 7  # AAPL 2024-11-25 never fetched
    assert list(h1_failures) == [parts[0]] and "never fetched" in h1_failures[parts[0]]


# ---------------------------------------------------------------- coverage you can trust
class Clock:
    """A shared virtual clock: the provider reads it before it answers, and the answer takes time."""

    def __init__(self, text, latency_s=0.0):
        self.now = utc(text)
        self.latency = pd.Timedelta(seconds=latency_s)

    def __call__(self):
        return self.now


class Slow(Scripted):
    """The demo provider cutting unfinished bars at the moment the request left, answering later."""

    def __init__(self, calendar, name, clock, twist=None, delay=None):
        super().__init__(calendar, name, twist, clock=clock)
        self.delay = delay  # the provider's own data delay (Alpaca's free SIP: 15 minutes)

    def fetch(self, request):
        sent = self._clock()
        result = super().fetch(request)
        self._clock.now = sent + self._clock.latency
        cut = sent - self.delay if self.delay is not None else sent
        if self.delay is not None:
            result.bars = result.bars[result.bars.ts + pd.Timedelta(minutes=15) <= cut].reset_index(drop=True)
        result.complete_through = cut
        return result


@pytest.mark.parametrize("timeframe, bars", [(Timeframe.M15, 25), (Timeframe.D1, 0)])
def test_a_fetch_straddling_the_close_is_partial_not_complete(store, calendar, timeframe, bars):
    # Sent at 15:59:58 New York, answered at 16:00:03: the 15:45 bar (and the d1 bar) were not final.
    clock = Clock("2024-11-26 20:59:58", latency_s=5)
    provider = Slow(calendar, "demo", clock)
    fetch_partitions([("AAPL", date(2024, 11, 26))], timeframe, Router([provider], calendar), store, clock=clock)
    row = store.coverage(timeframe).iloc[0]
    assert (row.status, row.bars, bool(row.session_closed)) == ("partial", bars, False)


def test_a_provider_data_delay_keeps_a_closed_session_partial(store, calendar):
    # 16:05 New York, but the provider serves data up to 15 minutes old: its last bars are not final.
    clock = Clock("2024-11-26 21:05")
    provider = Slow(calendar, "alpaca", clock, delay=pd.Timedelta(minutes=15))
    fetch_partitions([("AAPL", date(2024, 11, 26))], Timeframe.M15, Router([provider], calendar), store, clock=clock)
    row = store.coverage(Timeframe.M15).iloc[0]
    assert (row.status, row.bars) == ("partial", 25)


def no_bars(bars, _request):
    return bars.iloc[:0]


def test_an_empty_answer_never_deletes_stored_bars_nor_says_complete(store, calendar):
    parts = box(["AAPL"], THANKSGIVING_WEEK[:2])
    fetch_partitions(parts, Timeframe.M15, Router([Scripted(calendar, "demo")], calendar), store, clock=LATER)
    report = fetch_partitions(parts, Timeframe.M15, Router([Scripted(calendar, "hollow", no_bars)], calendar), store, clock=LATER)
    assert set(report.failures) == set(parts)
    assert "AAPL 2024-11-25 m15: hollow answered no bars for this closed session; kept the 26 stored bar(s)" in report.failure_summary()
    assert len(store.read_bars(Timeframe.M15, parts)) == 52
    ledger = store.coverage(Timeframe.M15)
    assert set(ledger["status"]) == {"complete"} and set(ledger["bars"]) == {26}


def test_an_empty_answer_is_its_own_status_after_every_provider_tried(store, calendar):
    first, second = Scripted(calendar, "hollow", no_bars), Scripted(calendar, "void", no_bars)
    report = fetch_partitions([("AAPL", date(2024, 11, 26))], Timeframe.M15, Router([first, second], calendar), store, clock=LATER)
    assert first.calls == second.calls == 1
    assert report.failures[("AAPL", date(2024, 11, 26))] == (
        "hollow answered no bars for this closed session | then void answered no bars for this closed session"
    )
    row = store.coverage(Timeframe.M15).iloc[0]
    assert (row.status, row.bars, row.provider) == ("empty", 0, None)


def test_an_empty_answer_is_tried_on_the_next_provider(store, calendar):
    hollow, backup = Scripted(calendar, "hollow", no_bars), Scripted(calendar, "backup")
    report = fetch_partitions(box(["AAPL"], THANKSGIVING_WEEK), Timeframe.M15, Router([hollow, backup], calendar), store, clock=LATER)
    assert report.ok and dict(report.served_by) == {"backup": 4}


def fewer(bars, _request):
    return bars.iloc[:-3]


def test_fewer_bars_never_replace_final_ones_unless_allowed(store, calendar):
    parts = [("AAPL", date(2024, 11, 26))]
    fetch_partitions(parts, Timeframe.M15, Router([Scripted(calendar, "demo")], calendar), store, clock=LATER)
    report = fetch_partitions(parts, Timeframe.M15, Router([Scripted(calendar, "short", fewer)], calendar), store, clock=LATER)
    assert "short answered 23 bar(s), fewer than the 26 stored" in report.failures[parts[0]]
    assert "backfill/replace_fewer_bars=true" in report.failures[parts[0]]
    assert len(store.read_bars(Timeframe.M15, parts)) == 26
    allowed = fetch_partitions(parts, Timeframe.M15, Router([Scripted(calendar, "short", fewer)], calendar), store,
                               clock=LATER, allow_fewer=True)
    assert allowed.ok and len(store.read_bars(Timeframe.M15, parts)) == 23


def test_derived_rows_record_the_m15_fetch_they_were_built_from(store, calendar):
    parts = [("AAPL", date(2024, 11, 26))]
    fetch_partitions(parts, Timeframe.M15, Router([Scripted(calendar, "demo")], calendar), store, clock=fixed_clock("2025-01-02 00:00"))
    derive_partitions(parts, Timeframe.H1, store, clock=fixed_clock("2025-01-02 00:05"))
    m15, h1 = store.coverage(Timeframe.M15).iloc[0], store.coverage(Timeframe.H1).iloc[0]
    assert pd.Timestamp(h1.source_fetched_at) == pd.Timestamp(m15.fetched_at) == utc("2025-01-02 00:00")

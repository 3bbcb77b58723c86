"""The shared request budget: a sliding window in the store's database, on SQLite and PostgreSQL;
pauses and unavailability on the database's clock, a bounded and logged wait; the HTTP client
against a scripted server with the real budget."""

import logging
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pytest
import sqlalchemy as sa

from backfill_dagster.domain.provider_errors import ProviderError
from backfill_dagster.providers.http import HttpClient, RetryPolicy
from backfill_dagster.providers.ratelimit import RateLimit
from backfill_dagster.settings import Settings
from backfill_dagster.store import create_engine, shared_engine
from backfill_dagster.store.budget import SharedBudget
from backfill_dagster.store.database import apply_schema
from tests.providers.scripted import Answer, ScriptedServer

FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05, max_server_wait_s=60.0)


def max_in_window(times, window):
    times = np.sort(np.asarray(times))
    return int(max(np.searchsorted(times, t + window, side="left") - i for i, t in enumerate(times)))


def test_workers_in_separate_connections_share_one_window(store_url):
    rate = RateLimit(limit=5, window_s=3.0)  # long enough that commits under load are small beside it
    shared_engine(store_url)  # schema
    engines = [create_engine(store_url) for _ in range(3)]  # three "processes", three pools
    budgets = [SharedBudget(e, "alpaca", rate) for e in engines]
    sent: list[float] = []
    lock = threading.Lock()

    def worker(budget):
        for _ in range(4):
            budget.acquire()
            with lock:
                sent.append(time.monotonic())

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(b,)) for b in budgets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.monotonic() - start
    assert len(sent) == 12
    booked = budgets[0].booked()
    assert max_in_window(booked, rate.window_s) <= 5  # never over the limit, by the database clock
    # Read after acquire() returned, so a worker descheduled under load records its slot late: the
    # database's clock above is exact, this one gets a quarter window of slack.
    assert max_in_window(sent, rate.window_s - 0.25) <= 5
    # 12 requests at 5 per window need two full windows and no more (the budget is used, not idle)
    assert 2 * rate.window_s <= elapsed < 2 * (rate.window_s + rate.margin_s) + 2.0
    for e in engines:
        e.dispose()


def test_a_429_pauses_everyone_until_its_reset(store_url):
    engine = shared_engine(store_url)
    first = SharedBudget(engine, "tradier", RateLimit(limit=100, window_s=60))
    other = SharedBudget(engine, "tradier", RateLimit(limit=100, window_s=60))
    first.acquire()
    # each clock starts before the pause is written: its commit under load is not part of the wait
    start = time.monotonic()
    first.pause_for(0.6)
    other.acquire()
    assert time.monotonic() - start >= 0.5
    # an earlier pause never shortens a later one
    start = time.monotonic()
    first.pause_for(0.5)
    first.pause_for(0.0)
    other.acquire()
    assert time.monotonic() - start >= 0.4
    # an unlimited budget books nothing, but it too holds off while paused
    free = SharedBudget(engine, "tradier", RateLimit(limit=0))
    start = time.monotonic()
    first.pause_for(0.4)
    free.acquire()
    assert time.monotonic() - start >= 0.3


def test_budgets_are_per_provider_and_unlimited_books_nothing(store_url):
    engine = shared_engine(store_url)
    alpaca = SharedBudget(engine, "alpaca", RateLimit(limit=1, window_s=30))
    polygon = SharedBudget(engine, "polygon", RateLimit(limit=1, window_s=30))
    alpaca.acquire()
    start = time.monotonic()
    polygon.acquire()  # alpaca's full window does not hold polygon back
    assert time.monotonic() - start < 10  # far from alpaca's 30 s, whatever the load
    free = SharedBudget(engine, "yahoo", RateLimit(limit=0))
    for _ in range(50):
        free.acquire()
    assert free.booked() == []


class Enough(Exception):
    pass


def test_a_full_window_waits_in_short_steps(store_url):
    engine = shared_engine(store_url)
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 3:
            raise Enough

    budget = SharedBudget(engine, "alpaca", RateLimit(limit=2, window_s=30), sleep=sleep)
    budget.acquire()
    budget.acquire()
    with pytest.raises(Enough):  # full for ~30 s: it keeps waiting, waking every 2 s at most
        budget.acquire()
    assert slept == [2.0, 2.0, 2.0] and budget.waited_s == 6.0
    assert len(budget.booked()) == 2  # nothing booked while waiting


def test_a_full_window_waits_only_until_its_oldest_slot_leaves(store_url):
    engine = shared_engine(store_url)
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        time.sleep(seconds)

    rate = RateLimit(limit=2, window_s=1.0)
    budget = SharedBudget(engine, "alpaca", rate, sleep=sleep)
    budget.acquire()
    budget.acquire()
    first = budget.booked()[0]
    budget.acquire()  # waits for the first slot to leave the window (which then drops it)
    third = budget.booked()[-1]
    assert third >= first + rate.window_s  # never early
    # Each wait is asked from the database's clock afresh, and real sleeps never end early, so the
    # waits asked for add up to at most what the oldest slot had left: never a second window.
    assert slept and sum(slept) <= rate.window_s + rate.margin_s + 0.001 * len(slept)


@pytest.mark.parametrize("limit, window", [(-1, 60), (10, 0)])
def test_bad_rate_limits_are_refused(limit, window):
    with pytest.raises(ValueError, match="rate limit"):
        RateLimit(limit, window)


def test_a_slot_counts_from_the_answer_not_the_booking(store_url):
    engine = shared_engine(store_url)
    budget = SharedBudget(engine, "alpaca", RateLimit(limit=5, window_s=30))
    budget.acquire()
    booked = budget.booked()
    time.sleep(0.2)  # the request is slow to be answered
    budget.sent()
    moved = budget.booked()
    assert len(booked) == len(moved) == 1 and moved[0] >= booked[0] + 0.15
    budget.sent()  # nothing booked since: a no-op
    assert budget.booked() == moved


# ---------------------------------------------------------------------------- clocks
class WaitedTooLong(Exception):
    pass


def sleep_at_most(total_s: float):
    """A real sleep that gives up once `total_s` seconds have been slept in all."""
    slept = []

    def sleep(seconds):
        if sum(slept) + seconds > total_s:
            raise WaitedTooLong(f"asked to sleep {sum(slept) + seconds:.0f} s in all")
        slept.append(seconds)
        time.sleep(seconds)

    return sleep


def test_a_worker_whose_clock_runs_an_hour_fast_pauses_the_others_only_as_the_server_said(store_url):
    """A 429 with `Retry-After: 1` seen by a worker whose clock is an hour fast pauses the shared
    budget for one second of the database's clock, not for an hour."""
    engine = shared_engine(store_url)
    skewed = SharedBudget(engine, "alpaca", RateLimit(limit=100, window_s=60), sleep=sleep_at_most(5))
    with ScriptedServer() as server:
        server.script(Answer(429, {"message": "too many requests"}, {"Retry-After": "1"}), Answer())
        with HttpClient("alpaca", budget=skewed, policy=FAST, clock=lambda: time.time() + 3600,
                        sleep=lambda _s: None) as http:
            assert http.get_json(server.url + "/v2/stocks/bars").attempts == 2
    other = SharedBudget(create_engine(store_url), "alpaca", RateLimit(limit=100, window_s=60), sleep=sleep_at_most(5))
    start = time.monotonic()
    other.acquire()  # another process: the pause (1 s at most) has about ended already, not an hour
    assert time.monotonic() - start < 4
    other.engine.dispose()


def test_an_absolute_reset_from_a_fast_worker_pauses_for_the_servers_delay(store_url):
    """Alpaca's epoch reset, read by a worker an hour fast, is measured on the server's Date header."""
    engine = shared_engine(store_url)
    budget = SharedBudget(engine, "alpaca", RateLimit(limit=100, window_s=60))
    with ScriptedServer() as server:
        server.script(Answer(429, {"message": "too many requests"}, {"X-RateLimit-Reset": str(int(time.time()) + 30)}))
        with HttpClient("alpaca", budget=budget, policy=RetryPolicy(attempts=1), clock=lambda: time.time() + 3600) as http:
            with pytest.raises(ProviderError, match="HTTP 429"):
                http.get_json(server.url + "/v2/stocks/bars")
    with engine.connect() as conn:
        paused_until, now = conn.execute(sa.text(
            "SELECT paused_until, " + _db_epoch(engine) + " FROM provider_budget WHERE provider = 'alpaca'"
        )).one()
    assert 25 <= paused_until - now <= 31  # on the database's clock, everyone waits those 30 s


def _db_epoch(engine) -> str:
    if engine.dialect.name == "postgresql":
        return "extract(epoch from clock_timestamp())::float"
    return "(julianday('now') - 2440587.5) * 86400.0"


def test_acquire_gives_up_past_its_bound_naming_the_setting(store_url, monkeypatch):
    monkeypatch.setenv("BACKFILL_RATE_MAX_WAIT_SECONDS", "45")
    engine = shared_engine(store_url)
    slept = []
    max_wait_s = Settings.from_env().rate_max_wait_s  # as the providers resource hands it over
    budget = SharedBudget(engine, "polygon", RateLimit(limit=100, window_s=60), sleep=slept.append,
                          max_wait_s=max_wait_s)
    budget.pause_for(80)  # a 429 paused everyone for longer than a request may wait
    with pytest.raises(ProviderError) as raised:
        budget.acquire()
    message = str(raised.value)
    assert raised.value.provider == "polygon" and message.startswith("polygon: ")
    assert "paused after a 429" in message and "BACKFILL_RATE_MAX_WAIT_SECONDS" in message
    assert "45 s" in message and "not sent" in message
    assert slept == []  # it knew it could not make it: no point waiting 45 s first


def test_a_long_wait_is_logged_at_its_start_and_every_half_minute(store_url, caplog):
    engine = shared_engine(store_url)
    SharedBudget(engine, "polygon", RateLimit(limit=1, window_s=70)).acquire()  # the window's one slot
    slept = []

    def sleep(seconds):  # recorded, not slept: the slot never frees, so stop after ~66 s of "waiting"
        slept.append(seconds)
        if sum(slept) > 66:
            raise WaitedTooLong

    waiting = SharedBudget(engine, "polygon", RateLimit(limit=1, window_s=70), sleep=sleep, max_wait_s=600)
    with caplog.at_level(logging.WARNING, logger="backfill_dagster.store.budget"):
        with pytest.raises(WaitedTooLong):
            waiting.acquire()
    waits = [r.getMessage() for r in caplog.records if "waiting for its shared request budget" in r.getMessage()]
    # at the start, after 30 s and after 60 s of waiting: provider, why, how long more, the bound
    assert len(waits) == 3, waits
    assert all(w.startswith("polygon: waiting for its shared request budget (window full: 1 per 70 s): ")
               for w in waits)
    assert "0 s waited so far (gives up after 600 s, BACKFILL_RATE_MAX_WAIT_SECONDS)" in waits[0]
    assert "30 s waited so far" in waits[1] and "60 s waited so far" in waits[2]

    # a full window that would outlast the bound fails at once, saying why
    # (a window booked just now: the one above has aged by however long the waits above took)
    SharedBudget(engine, "tradier", RateLimit(limit=1, window_s=70)).acquire()
    impatient = SharedBudget(engine, "tradier", RateLimit(limit=1, window_s=70), sleep=sleep, max_wait_s=65)
    slept.clear()
    with pytest.raises(ProviderError, match=r"window full: 1 per 70 s.*raise BACKFILL_RATE_MAX_WAIT_SECONDS"):
        impatient.acquire()
    assert slept == []


def test_a_bad_wait_bound_is_refused_naming_the_setting(store_url, monkeypatch):
    engine = shared_engine(store_url)
    for bad in ("soon", "0", "-5", "inf"):
        monkeypatch.setenv("BACKFILL_RATE_MAX_WAIT_SECONDS", bad)
        with pytest.raises(ValueError, match="BACKFILL_RATE_MAX_WAIT_SECONDS"):
            Settings.from_env()
    for bad in (0, -5, float("inf")):
        with pytest.raises(ValueError, match="max_wait_s"):
            SharedBudget(engine, "alpaca", RateLimit(limit=5), max_wait_s=bad)


# ---------------------------------------------------------------------------- a spent quota
def test_a_wait_too_long_to_sit_out_makes_the_provider_unavailable_to_every_process_until_then(store_url, caplog):
    """`Retry-After` beyond what a retry waits: the request fails at once, not retryable; every
    process sharing the budget refuses the provider's requests without sending them until then, and
    after that requests flow again."""
    engine = shared_engine(store_url)
    policy = RetryPolicy(attempts=6, backoff_s=0.01, max_backoff_s=0.05, max_server_wait_s=1.0)
    with ScriptedServer() as server:
        server.script(Answer(429, {"message": "quota exhausted"}, {"Retry-After": "3"}))
        first = HttpClient("alpaca", budget=SharedBudget(engine, "alpaca", RateLimit(limit=100)), policy=policy,
                           sleep=lambda _s: None)
        # another process (its own engine), opened before the clock starts: the 3 s must cover the
        # refusal below, not connecting and creating a schema
        other_engine = create_engine(store_url)
        other_budget = SharedBudget(other_engine, "alpaca", RateLimit(limit=0))
        other = HttpClient("alpaca", budget=other_budget, policy=policy, sleep=lambda _s: None)
        started = time.time()
        with pytest.raises(ProviderError) as raised:
            first.get_json(server.url + "/v2/stocks/bars")
        assert len(server.requests) == 1  # not retried
        error = raised.value
        assert not error.retryable and error.status == 429
        assert "unavailable until" in str(error) and "HTTP 429 with Retry-After 3 s: quota exhausted" in str(error)

        # the other process, an unlimited budget even: refused at once, nothing sent
        with caplog.at_level(logging.WARNING):
            with pytest.raises(ProviderError) as refused:
                other.get_json(server.url + "/v2/stocks/bars")
        assert len(server.requests) == 1 and not refused.value.retryable
        assert str(refused.value).startswith("alpaca: unavailable until ")
        assert str(refused.value).endswith("UTC: HTTP 429 with Retry-After 3 s: quota exhausted; not sent")
        assert "alpaca is unavailable until" in caplog.text  # the log says why
        shown = other_budget.unavailable()
        assert shown is not None and shown.reason == "HTTP 429 with Retry-After 3 s: quota exhausted"
        assert started + 2 <= shown.until.timestamp() <= time.time() + 3.5
        assert str(error).split("unavailable until ")[1][:19] == f"{shown.until:%Y-%m-%d %H:%M:%S}"

        # after the time the server gave, requests flow again
        time.sleep(max(0.0, shown.until.timestamp() - time.time()) + 0.2)
        assert other_budget.unavailable() is None
        server.script(Answer(body={"ok": 1}))
        assert other.get_json(server.url + "/v2/stocks/bars").payload == {"ok": 1}
        assert len(server.requests) == 2
        first.close()
        other.close()
    other_engine.dispose()


def test_a_later_shorter_unavailability_never_shortens_an_earlier_one(store_url):
    budget = SharedBudget(shared_engine(store_url), "polygon", RateLimit(limit=5))
    long = budget.unavailable_for(3600, "HTTP 429 with Retry-After 3600 s")
    short = budget.unavailable_for(120, "HTTP 503 with Retry-After 120 s")
    assert short == long == budget.unavailable()
    assert 3590 <= (long.until - datetime.now(UTC)).total_seconds() <= 3610
    assert SharedBudget(shared_engine(store_url), "alpaca", RateLimit(limit=5)).unavailable() is None  # per provider


def test_a_store_from_before_the_unavailability_columns_gains_them(store_url):
    engine = shared_engine(store_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM provider_budget")
        conn.exec_driver_sql("ALTER TABLE provider_budget DROP COLUMN unavailable_reason")
        conn.exec_driver_sql("ALTER TABLE provider_budget DROP COLUMN unavailable_until")
    apply_schema(engine)  # what every process does when it opens the store
    columns = [c["name"] for c in sa.inspect(engine).get_columns("provider_budget")]
    assert columns == ["provider", "paused_until", "unavailable_until", "unavailable_reason"]
    budget = SharedBudget(engine, "alpaca", RateLimit(limit=5))
    budget.unavailable_for(60, "HTTP 429 with Retry-After 60 s")
    assert budget.unavailable().reason == "HTTP 429 with Retry-After 60 s"

"""The shared request budget: a sliding window in the store's database, on SQLite and PostgreSQL."""

import threading
import time

import numpy as np
import pytest

from backfill_dagster.providers.ratelimit import RateLimit, SharedBudget
from backfill_dagster.store import create_engine, shared_engine


def max_in_window(times, window):
    times = np.sort(np.asarray(times))
    return int(max(np.searchsorted(times, t + window, side="left") - i for i, t in enumerate(times)))


def test_workers_in_separate_connections_share_one_window(store_url):
    rate = RateLimit(limit=5, window_s=1.0)
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
    assert max_in_window(sent, rate.window_s) <= 5
    # 12 requests at 5 per window need two full windows and no more (the budget is used, not idle)
    assert 2 * rate.window_s <= elapsed < 2 * (rate.window_s + rate.margin_s) + 1.0
    for e in engines:
        e.dispose()


def test_a_429_pauses_everyone_until_its_reset(store_url):
    engine = shared_engine(store_url)
    first = SharedBudget(engine, "tradier", RateLimit(limit=100, window_s=60))
    other = SharedBudget(engine, "tradier", RateLimit(limit=100, window_s=60))
    first.acquire()
    first.pause_until(time.time() + 0.6)
    start = time.monotonic()
    other.acquire()
    assert time.monotonic() - start >= 0.5
    # an earlier pause never shortens a later one
    first.pause_until(time.time() + 0.5)
    first.pause_until(time.time() - 10)
    start = time.monotonic()
    other.acquire()
    assert time.monotonic() - start >= 0.4


def test_budgets_are_per_provider_and_unlimited_books_nothing(store_url):
    engine = shared_engine(store_url)
    alpaca = SharedBudget(engine, "alpaca", RateLimit(limit=1, window_s=30))
    polygon = SharedBudget(engine, "polygon", RateLimit(limit=1, window_s=30))
    alpaca.acquire()
    start = time.monotonic()
    polygon.acquire()  # alpaca's full window does not hold polygon back
    assert time.monotonic() - start < 1
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

"""A provider's request budget, shared by every run and process that uses the same store.

A provider's rate limit is per account, not per process: a UI backfill runs several runs at once,
and the sensors and schedules add their own. So every request is booked in the store's database
before it is sent: a sliding window of booked requests per provider (at most `limit` in any
`window_s` seconds), plus a pause a 429 sets for everyone. Booking is one short transaction, held
on the provider's budget row (PostgreSQL row lock; SQLite's single writer), and times come from
the database's clock, so processes on several machines agree on them.

Why not an in-process limiter (pyrate-limiter, a token bucket): it cannot see the other
processes, which is the whole problem; its SQL backends do not hold a lock across check-and-book,
so two processes can both take the last slot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from backfill_dagster.store.schema import provider_budget, provider_requests

# Requests per window each provider allows by default: Alpaca's Basic plan (200/min), Polygon's
# free tier (5/min), Tradier's market-data limit (120/min); Yahoo publishes none, so stay polite.
# Override with <PROVIDER>_RATE_LIMIT (0 = unlimited, e.g. a paid Polygon plan).
DEFAULT_RATE_LIMITS = {"alpaca": 200, "polygon": 5, "tradier": 120, "yahoo": 60}
DEFAULT_WINDOW_S = 60.0

# Seconds of a window kept free on top: a slot counts from its request's answer (`sent`), which
# already orders arrivals a full window apart; the margin only absorbs clock reading jitter.
MAX_MARGIN_S = 0.25
# Longest single sleep while waiting, so a freed slot or a lifted pause is noticed promptly.
MAX_SLEEP_S = 2.0


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` requests in any `window_s` seconds (limit 0: unlimited)."""

    limit: int
    window_s: float = 60.0

    def __post_init__(self):
        if self.limit < 0 or self.window_s <= 0:
            raise ValueError(f"a rate limit needs limit >= 0 and window > 0, not {self.limit}/{self.window_s}s")

    @property
    def margin_s(self) -> float:
        return min(MAX_MARGIN_S, 0.01 * self.window_s)


class SharedBudget:
    """The `Budget` (providers.http) of one provider, kept in the store's database."""

    def __init__(
        self,
        engine: Engine,
        provider: str,
        rate: RateLimit,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.engine = engine
        self.provider = provider
        self.rate = rate
        self.sleep = sleep
        self.waited_s = 0.0  # total time this process spent waiting for a slot (reported)
        self._last = threading.local()  # this thread's last booking, moved to its answer time

    def acquire(self) -> None:
        """Block until a request may be sent, and book it."""
        if self.rate.limit == 0:
            return
        while True:
            wait = self._try_book()
            if wait <= 0:
                return
            step = min(wait, MAX_SLEEP_S)
            self.waited_s += step
            self.sleep(step)

    def sent(self) -> None:
        """Move this thread's last booking to now, when its answer has arrived.

        A booking is made a moment before the request leaves, and the request may reach the
        provider late (a slow connection, a busy machine). Counting the slot from the answer makes
        the next request to take it arrive a full window after this one, however late it was."""
        booked = getattr(self._last, "at", None)
        if booked is None:
            return
        self._last.at = None
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(provider_requests)
                .where(provider_requests.c.provider == self.provider, provider_requests.c.sent_at == booked)
                .values(sent_at=sa.func.greatest(booked, _db_now(self.engine))
                        if self.engine.dialect.name == "postgresql"
                        else sa.func.max(booked, _db_now(self.engine)))
            )

    def pause_until(self, epoch_s: float) -> None:
        """Nobody sends to this provider before `epoch_s` (a 429 said so)."""
        with self.engine.begin() as conn:
            current = self._lock_row(conn)
            if current is None or current < epoch_s:  # an earlier pause never shortens a later one
                conn.execute(
                    sa.update(provider_budget)
                    .where(provider_budget.c.provider == self.provider)
                    .values(paused_until=epoch_s)
                )

    def booked(self, since_s: float | None = None) -> list[float]:
        """Booking times (DB clock, epoch seconds) still in the table, oldest first."""
        query = sa.select(provider_requests.c.sent_at).where(provider_requests.c.provider == self.provider)
        if since_s is not None:
            query = query.where(provider_requests.c.sent_at >= since_s)
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(query.order_by(provider_requests.c.sent_at))]

    # ------------------------------------------------------------------ internals
    def _try_book(self) -> float:
        """Book one request now and return 0, or return how long to wait before trying again."""
        rate = self.rate
        with self.engine.begin() as conn:
            paused_until = self._lock_row(conn)
            now = conn.execute(sa.select(_db_now(self.engine))).scalar_one()
            if paused_until is not None and paused_until > now:
                return paused_until - now
            horizon = now - rate.window_s - rate.margin_s
            conn.execute(
                sa.delete(provider_requests)
                .where(provider_requests.c.provider == self.provider)
                .where(provider_requests.c.sent_at <= horizon)
            )
            count, oldest = conn.execute(
                sa.select(sa.func.count(), sa.func.min(provider_requests.c.sent_at))
                .where(provider_requests.c.provider == self.provider)
            ).one()
            if count < rate.limit:
                conn.execute(sa.insert(provider_requests).values(provider=self.provider, sent_at=now))
                self._last.at = now
                return 0.0
            # The oldest booking leaves the window (plus margin) at oldest + window + margin.
            return max(oldest + rate.window_s + rate.margin_s - now, 0.001)

    def _lock_row(self, conn: Connection) -> float | None:
        """Create the provider's budget row if needed and lock it for this transaction."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert

            conn.execute(insert(provider_budget).values(provider=self.provider).on_conflict_do_nothing())
            return conn.execute(
                sa.select(provider_budget.c.paused_until)
                .where(provider_budget.c.provider == self.provider)
                .with_for_update()
            ).scalar_one()
        # SQLite: the transaction began with BEGIN IMMEDIATE, the database's one write lock.
        from sqlalchemy.dialects.sqlite import insert

        conn.execute(insert(provider_budget).values(provider=self.provider).on_conflict_do_nothing())
        return conn.execute(
            sa.select(provider_budget.c.paused_until).where(provider_budget.c.provider == self.provider)
        ).scalar_one()


def _db_now(engine: Engine) -> sa.ColumnElement[float]:
    """The database server's clock as epoch seconds (one clock for every machine)."""
    if engine.dialect.name == "postgresql":
        return sa.func.extract("epoch", sa.func.clock_timestamp()).cast(sa.Float)
    return (sa.func.julianday("now") - 2440587.5) * 86400.0

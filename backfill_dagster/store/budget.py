"""A provider's request budget, kept in the store's database so every run and process shares it.

A provider's rate limit is per account, not per process, so each request is booked here before it
is sent: a sliding window per provider, a pause a 429 sets for everyone, and an unavailability a
server wait too long to sit out sets. Booking is one short transaction on the provider's budget
row, and every time is the database's clock, so machines whose clocks disagree still agree on when
a pause ends. (An in-process limiter cannot see the other processes: README, "Providers".)

Implements the `Budget` protocol of providers/http.py with the rule of providers/ratelimit.py.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from backfill_dagster.domain.provider_errors import BudgetWaitExceeded, ProviderUnavailable, Unavailability, utc_text
from backfill_dagster.store.schema import provider_budget, provider_requests

log = logging.getLogger(__name__)

# Longest a request waits for its slot before failing (a full window is at most a minute, a 429's
# pause at most RetryPolicy.max_server_wait_s; ten minutes means something is wrong). The setting
# is read in settings.py and reaches the budget through the providers resource.
MAX_WAIT_SETTING = "BACKFILL_RATE_MAX_WAIT_SECONDS"
DEFAULT_MAX_WAIT_S = 600.0
# A wait at least this long is logged as a warning, then again every LOG_EVERY_S while it lasts.
LONG_WAIT_S = 10.0
LOG_EVERY_S = 30.0

# Longest single sleep while waiting, so a freed slot or a lifted pause is noticed promptly.
MAX_SLEEP_S = 2.0


class Rate(Protocol):
    """The rule a budget enforces (providers.ratelimit.RateLimit)."""

    limit: int  # at most this many requests (0: unlimited)
    window_s: float  # in any window of this many seconds
    margin_s: float  # seconds of a window kept free on top


@dataclass(frozen=True)
class _Wait:
    seconds: float
    why: str  # "window full: 5 per 60 s", "paused after a 429 from the provider"


class SharedBudget:
    """The `Budget` (providers.http) of one provider, kept in the store's database."""

    def __init__(
        self,
        engine: Engine,
        provider: str,
        rate: Rate,
        *,
        sleep: Callable[[float], None] = time.sleep,
        max_wait_s: float | None = None,
    ):
        self.engine = engine
        self.provider = provider
        self.rate = rate
        self.sleep = sleep
        self.max_wait_s = DEFAULT_MAX_WAIT_S if max_wait_s is None else max_wait_s
        if not 0 < self.max_wait_s < math.inf:
            raise ValueError(f"max_wait_s must be a number of seconds above 0, not {self.max_wait_s}")
        self.waited_s = 0.0  # total time this process spent waiting for a slot (reported)
        self._last = threading.local()  # this thread's last booking, moved to its answer time
        self._told_until: float | None = None  # the unavailability this process last logged

    def acquire(self) -> None:
        """Wait until a request may be sent, and book it (an unlimited budget books nothing).

        Raises ProviderUnavailable at once while the provider is unavailable, and
        BudgetWaitExceeded rather than wait past `max_wait_s`."""
        waited, logged_at = 0.0, None
        while True:
            wait = self._try_book()
            if wait is None:
                if logged_at is not None:
                    log.info("%s: request budget free again after %.0f s", self.provider, waited)
                return
            if waited + wait.seconds > self.max_wait_s:
                raise BudgetWaitExceeded(
                    self.provider,
                    f"waited {waited:.0f} s for its shared request budget ({wait.why}) and would wait "
                    f"{wait.seconds:.0f} s more, past the {self.max_wait_s:.0f} s a request may wait: "
                    f"raise {MAX_WAIT_SETTING} to wait longer; not sent",
                )
            if waited + wait.seconds >= LONG_WAIT_S and (logged_at is None or waited - logged_at >= LOG_EVERY_S):
                log.warning(
                    "%s: waiting for its shared request budget (%s): %.0f s more, %.0f s waited so far "
                    "(gives up after %.0f s, %s)", self.provider, wait.why, wait.seconds, waited,
                    self.max_wait_s, MAX_WAIT_SETTING,
                )
                logged_at = waited
            step = min(wait.seconds, MAX_SLEEP_S)
            self.waited_s += step
            waited += step
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

    def pause_for(self, seconds: float) -> None:
        """Nobody sends to this provider for `seconds` from now, by the database's clock (a 429)."""
        with self.engine.begin() as conn:
            row = self._lock_row(conn)
            end = self._now(conn) + seconds
            if row.paused_until is None or row.paused_until < end:  # never shortens a later pause
                conn.execute(
                    sa.update(provider_budget)
                    .where(provider_budget.c.provider == self.provider)
                    .values(paused_until=end)
                )

    def unavailable_for(self, seconds: float, reason: str) -> Unavailability:
        """Requests to this provider fail at once for `seconds` from now (database clock), in every
        process; returns the unavailability in force (an earlier, longer one is never shortened)."""
        with self.engine.begin() as conn:
            row = self._lock_row(conn)
            end = self._now(conn) + seconds
            if row.unavailable_until is None or row.unavailable_until < end:
                conn.execute(
                    sa.update(provider_budget)
                    .where(provider_budget.c.provider == self.provider)
                    .values(unavailable_until=end, unavailable_reason=reason)
                )
                return Unavailability(_utc(end), reason)
            return Unavailability(_utc(row.unavailable_until), row.unavailable_reason or reason)

    def unavailable(self) -> Unavailability | None:
        """Until when (and why) the provider is unavailable, or None if it is not (any more)."""
        with self.engine.begin() as conn:
            row = self._read_row(conn, lock=False)
            if row is None or row.unavailable_until is None or row.unavailable_until <= self._now(conn):
                return None
            return Unavailability(_utc(row.unavailable_until), row.unavailable_reason or "")

    def booked(self, since_s: float | None = None) -> list[float]:
        """Booking times (DB clock, epoch seconds) still in the table, oldest first."""
        query = sa.select(provider_requests.c.sent_at).where(provider_requests.c.provider == self.provider)
        if since_s is not None:
            query = query.where(provider_requests.c.sent_at >= since_s)
        with self.engine.connect() as conn:
            return [row[0] for row in conn.execute(query.order_by(provider_requests.c.sent_at))]

    # ------------------------------------------------------------------ internals
    def _try_book(self) -> _Wait | None:
        """Book one request now and return None, or say how long to wait before trying again."""
        rate = self.rate
        with self.engine.begin() as conn:
            # An unlimited budget books nothing, so it need not hold the row: it only reads it.
            row = self._read_row(conn, lock=rate.limit > 0)
            now = self._now(conn)
            if row is not None and row.unavailable_until is not None and row.unavailable_until > now:
                raise self._refusal(row)
            if row is not None and row.paused_until is not None and row.paused_until > now:
                return _Wait(row.paused_until - now, "paused after a 429 from the provider")
            if rate.limit == 0:
                return None
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
                return None
            # The oldest booking leaves the window (plus margin) at oldest + window + margin.
            wait = max(oldest + rate.window_s + rate.margin_s - now, 0.001)
            return _Wait(wait, f"window full: {rate.limit} per {rate.window_s:g} s")

    def _refusal(self, row) -> ProviderUnavailable:
        unavailability = Unavailability(_utc(row.unavailable_until), row.unavailable_reason or "no reason recorded")
        if self._told_until != row.unavailable_until:  # once per unavailability per process
            self._told_until = row.unavailable_until
            log.warning(
                "%s is unavailable until %s (%s): its requests fail at once, runs fall back to the "
                "next provider", self.provider, utc_text(unavailability.until), unavailability.reason,
            )
        return ProviderUnavailable(self.provider, unavailability, sent=False)

    def _now(self, conn: Connection) -> float:
        return conn.execute(sa.select(_db_now(self.engine))).scalar_one()

    def _read_row(self, conn: Connection, *, lock: bool):
        """The provider's budget row (None if it has none yet); with `lock`, created if needed and
        held for this transaction."""
        columns = (provider_budget.c.paused_until, provider_budget.c.unavailable_until,
                   provider_budget.c.unavailable_reason)
        query = sa.select(*columns).where(provider_budget.c.provider == self.provider)
        if not lock:
            return conn.execute(query).one_or_none()
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert

            conn.execute(insert(provider_budget).values(provider=self.provider).on_conflict_do_nothing())
            return conn.execute(query.with_for_update()).one()
        # SQLite: the transaction began with BEGIN IMMEDIATE, the database's one write lock.
        from sqlalchemy.dialects.sqlite import insert

        conn.execute(insert(provider_budget).values(provider=self.provider).on_conflict_do_nothing())
        return conn.execute(query).one()

    def _lock_row(self, conn: Connection):
        return self._read_row(conn, lock=True)


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


def _db_now(engine: Engine) -> sa.ColumnElement[float]:
    """The database server's clock as epoch seconds (one clock for every machine)."""
    if engine.dialect.name == "postgresql":
        return sa.func.extract("epoch", sa.func.clock_timestamp()).cast(sa.Float)
    return (sa.func.julianday("now") - 2440587.5) * 86400.0

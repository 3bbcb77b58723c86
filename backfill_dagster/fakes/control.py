"""The fakes' bookkeeping: the request log, the per-provider rate windows, fault draws.

All three are shared by the server's handler threads, so each guards its state with a lock.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Logged:
    """One request as the fakes saw it; `status` is what was finally sent."""

    provider: str  # "alpaca", "polygon", "tradier", "yahoo", or "unknown" for a path no fake serves
    path: str
    query: dict
    status: int
    at: float  # arrival, epoch seconds
    # Bars the answer carried, where the fake counts them (Alpaca): a benchmark's floor,
    # ceil(bars returned / page size), is then a sum over the log, not a rebuild of every bar.
    bars: int | None = None


class RequestLog:
    """Every request received, in arrival order."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: list[Logged] = []

    def add(self, entry: Logged) -> None:
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[Logged]:
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def calls(self, provider: str) -> int:
        with self._lock:
            return sum(1 for e in self._entries if e.provider == provider)

    def max_in_window(self, provider: str, window_s: float) -> int:
        """Most requests to `provider` that arrived within any sliding window of `window_s`."""
        times = sorted(e.at for e in self.entries() if e.provider == provider)
        best = 0
        for i, start in enumerate(times):
            # requests in [start, start + window): a window that starts at an arrival is maximal
            best = max(best, bisect.bisect_left(times, start + window_s, lo=i) - i)
        return best


@dataclass(frozen=True)
class WindowState:
    """A provider's rate window after counting one request."""

    limit: int | None  # None: unlimited
    used: int
    resets_at: float  # epoch seconds the window ends
    exhausted: bool = False  # an injected 429: report nothing left, whatever was used

    @property
    def exceeded(self) -> bool:
        return self.limit is not None and self.used > self.limit

    def remaining(self, nominal: int) -> int:
        """Requests left in the window; `nominal` stands in for an unlimited budget."""
        if self.exhausted:
            return 0
        return max(0, (self.limit if self.limit is not None else nominal) - self.used)


class RateWindows:
    """Fixed windows per provider, each starting with the first request after the last one ended
    (Tradier's documented scheme; it also bounds Alpaca's and Polygon's per-minute budgets)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}  # provider -> (start, used)

    def hit(self, provider: str, now: float, limit: int | None, window_s: float) -> WindowState:
        """Count one request and say whether it is over the limit."""
        with self._lock:
            start, used = self._windows.get(provider, (-math.inf, 0))
            if now >= start + window_s:
                start, used = now, 0
            used += 1
            self._windows[provider] = (start, used)
        return WindowState(limit, used, start + window_s)

    def peek(self, provider: str, now: float, limit: int | None, window_s: float) -> WindowState:
        """The window as it is, without counting (for headers on uncounted answers)."""
        with self._lock:
            start, used = self._windows.get(provider, (-math.inf, 0))
        if now >= start + window_s:
            start, used = now, 0
        return WindowState(limit, used, start + window_s)

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()


class FaultDraws:
    """Which request gets which fault, reproducibly.

    Each draw comes from `random.Random` seeded with (seed, provider, exact request, how many times
    that exact request came before), so the same sequence of requests meets the same faults run
    after run, whatever order concurrent clients' requests interleave in, and a retry of a faulted
    request gets a fresh draw.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._seen: Counter[str] = Counter()

    def draw(self, seed: int, provider: str, request_key: str, rate: float, kinds: tuple[str, ...]) -> str | None:
        if rate <= 0 or not kinds:
            return None
        key = f"{provider}|{request_key}"
        with self._lock:
            occurrence = self._seen[key]
            self._seen[key] += 1
        rng = random.Random(f"{seed}|{key}|{occurrence}")
        if rng.random() >= rate:
            return None
        return rng.choice(list(kinds))

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

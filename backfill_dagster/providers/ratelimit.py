"""A provider's rate limit, the rule its shared budget (store/budget.py) enforces, and the defaults.

Requests per window each provider allows by default: Alpaca's Basic plan (200/min), Polygon's free
tier (5/min), Tradier's market-data limit (120/min); Yahoo publishes none, so stay polite. Override
with <PROVIDER>_RATE_LIMIT (0 = unlimited, e.g. a paid Polygon plan).
"""

from __future__ import annotations

from dataclasses import dataclass

# The flat files publish no request limit (a GET serves a whole session): unmetered by default.
DEFAULT_RATE_LIMITS = {"alpaca": 200, "polygon": 5, "tradier": 120, "yahoo": 60, "flatfiles": 0}
DEFAULT_WINDOW_S = 60.0

# Seconds of a window kept free on top: a slot counts from its request's answer (`sent`), which
# already orders arrivals a full window apart; the margin only absorbs clock reading jitter.
MAX_MARGIN_S = 0.25


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

"""What the fake providers are told: keys, rate budgets, fault injection, the clock.

`FakeConfig` is mutable on purpose: a test (or a benchmark) may change `fault_rate` or
`rate_limits` while the servers run, and every request reads the current values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import pandas as pd

from backfill_dagster.fakes.actions import CorporateActions

PROVIDERS = ("alpaca", "polygon", "tradier", "yahoo")
# Transport faults a client must ride out (the default draw), and "invalid": a well-formed answer
# carrying one impossible bar (high below low), which validation must reject with its reason.
FAULT_KINDS = ("429", "500", "503", "timeout", "truncated")
ALL_FAULT_KINDS = (*FAULT_KINDS, "invalid")
# Providers whose fake can answer for the wrong dates (FakeConfig.misdated).
MISDATED_PROVIDERS = ("alpaca",)
# Symbols starting with this are unknown to every provider (handy in tests).
UNKNOWN_PREFIX = "ZZZ"


@dataclass
class FakeConfig:
    """Behaviour of the fake providers; read on every request, so it may change at runtime."""

    alpaca_key: str = "fake-alpaca-key"
    alpaca_secret: str = "fake-alpaca-secret"
    polygon_key: str = "fake-polygon-key"
    tradier_token: str = "fake-tradier-token"
    # provider -> most requests per rate window; an absent provider is unlimited.
    rate_limits: dict[str, int] = field(default_factory=dict)
    rate_window_s: float = 60.0
    # provider -> Retry-After seconds: a spent quota. Every authenticated request to that provider
    # is answered 429 with that Retry-After (and its rate headers saying so), as a real API does
    # when a daily or monthly allowance is used up.
    quota_exhausted: dict[str, float] = field(default_factory=dict)
    # Probability that a request (authenticated, within budget) gets a fault drawn from `faults`.
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULT_KINDS
    timeout_sleep_s: float = 5.0  # how long a "timeout" fault stalls before answering
    seed: int = 0
    unknown_symbols: frozenset[str] = frozenset()
    # () -> tz-aware pd.Timestamp used as "now" (open session, history windows); None = real clock.
    now: Callable[[], pd.Timestamp] | None = None
    latency_s: float = 0.0  # added to every request

    # Documented plan limits, each a switch.
    # Alpaca free plan: SIP data of the latest 15 minutes is refused (403); 0 turns it off.
    alpaca_sip_delay_s: float = 900.0
    # Polygon free plan: ~2 years of history; a window entirely older is refused (403), one that
    # merely starts earlier is clipped. None = full history.
    polygon_history_days: int | None = 730
    # Share of extended-hours m15 slots without trades (no bar; a null row at Yahoo).
    no_trade_rate: float = 0.0
    # (symbol, session) pairs every fake answers without bars, as a provider that has not published a
    # session (or has nothing for it) does; the rest of the answer is unchanged.
    withheld: set[tuple[str, date]] = field(default_factory=set)
    # Answers for the wrong dates, as providers have sent them: provider -> sessions. Each bar
    # request is answered with the bars of the sessions that many sessions earlier (a stale cache,
    # an off-by-one date at the provider): Alpaca answering the 26 bars of Friday for Monday.
    # Alpaca only.
    misdated: dict[str, int] = field(default_factory=dict)
    # Polygon's aggregates carry `t` in Unix seconds instead of the documented milliseconds (a unit
    # change a client must refuse, not read as bars of January 1970).
    polygon_epoch_seconds: bool = False
    # Symbols (as a request spells them) whose bar and action requests wait, unanswered, until the
    # symbol is taken out of this set (or the servers stop): a test holds a run at a known point,
    # e.g. after it committed every other symbol, to kill it there.
    held_symbols: set[str] = field(default_factory=set)
    # Dividends and splits the fakes report (Yahoo's `events`); the bars are not adjusted for them.
    corporate_actions: CorporateActions = field(default_factory=CorporateActions)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Refuse settings the fakes cannot honour, naming the setting and the fix."""
        unknown = sorted(set(self.rate_limits) - set(PROVIDERS))
        if unknown:
            raise ValueError(f"rate_limits names unknown provider(s) {unknown}: use {', '.join(PROVIDERS)}")
        bad = [p for p, n in self.rate_limits.items() if int(n) < 1]
        if bad:
            raise ValueError(f"rate_limits for {bad} must be at least 1 request per window")
        unknown = sorted(set(self.quota_exhausted) - set(PROVIDERS))
        if unknown:
            raise ValueError(f"quota_exhausted names unknown provider(s) {unknown}: use {', '.join(PROVIDERS)}")
        bad = [p for p, s in self.quota_exhausted.items() if not float(s) >= 0]
        if bad:
            raise ValueError(f"quota_exhausted for {bad} must be a Retry-After of at least 0 seconds")
        unknown = sorted(set(self.misdated) - set(MISDATED_PROVIDERS))
        if unknown:
            raise ValueError(f"misdated names provider(s) {unknown} the fakes cannot misdate: use {', '.join(MISDATED_PROVIDERS)}")
        bad = [p for p, n in self.misdated.items() if int(n) < 1]
        if bad:
            raise ValueError(f"misdated for {bad} must be at least 1 session")
        if self.rate_window_s <= 0:
            raise ValueError("rate_window_s must be positive")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate {self.fault_rate} must be between 0 and 1")
        kinds = sorted(set(self.faults) - set(ALL_FAULT_KINDS))
        if kinds:
            raise ValueError(f"unknown fault kind(s) {kinds}: use {', '.join(ALL_FAULT_KINDS)}")
        if self.fault_rate > 0 and not self.faults:
            raise ValueError("fault_rate > 0 needs at least one fault kind in faults")

    def current_time(self) -> pd.Timestamp:
        """Now, in UTC."""
        if self.now is None:
            return pd.Timestamp.now(tz="UTC")
        now = pd.Timestamp(self.now())
        if now.tzinfo is None:
            raise ValueError("FakeConfig.now must return a timezone-aware timestamp")
        return now.tz_convert("UTC")

    def is_unknown(self, symbol: str) -> bool:
        return symbol.upper().startswith(UNKNOWN_PREFIX) or symbol in self.unknown_symbols

    def rate_limit(self, provider: str) -> int | None:
        limit = self.rate_limits.get(provider)
        return None if limit is None else int(limit)

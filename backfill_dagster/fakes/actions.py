"""Corporate actions the fake providers know: cash dividends and splits, per symbol.

One registry (`FakeConfig.corporate_actions`) serves every fake, so each API's view of a symbol's
actions tells the same story: Yahoo's chart `events`, Alpaca's `/v1/corporate-actions`, Polygon's
`/stocks/v1/splits` and `/stocks/v1/dividends`, and the split-adjusted bars of all four. Symbols
are in the store's spelling (BRK.B), like the bars.

By default two symbols in three (chosen by a hash of the symbol, so any symbol works) pay a
deterministic quarterly cash dividend, and nothing splits. Explicit actions replace the default
schedule of their symbol:

    FakeConfig(corporate_actions=CorporateActions(
        splits=[Split("NVDA", ex_date=date(2024, 6, 10), numerator=10, denominator=1,
                      announced=date(2024, 5, 22))]))

An action is known from its `announced` date on — which may be after its ex-date, as a feed that
lists a split late does; asked earlier, a fake does not list it.

The bars (fakes/data.py) model the series adjusted for every split of the registry; what a fake
serves is that series times `price_factor` (volume divided by it): raw answers carry every split after the session (pre-split prices are higher by the ratio),
split-adjusted answers leave out the splits a provider has applied — announced and effective
(ex-date reached) by the day asked. So before a split is announced a provider serves the history on
the old basis, as a real one does, and once it is, the new basis.

A `PriceGap` is not a corporate action but a move of the market (an earnings gap): every price
from its session on is multiplied by its factor, in raw and adjusted answers alike, volume
unchanged, and no endpoint lists it. Tests use it to tell a split from news.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from fractions import Fraction

from backfill_dagster.domain.calendar import SessionCalendar, xnys
from backfill_dagster.domain.synthetic import seed

ANNOUNCED_DAYS_BEFORE = 28  # the default dividends are declared four weeks before their ex-date
PAYABLE_DAYS_AFTER = 14  # and paid two weeks after it
ONE = Fraction(1)


@dataclass(frozen=True)
class CashDividend:
    """A cash dividend of `amount` USD per share, paid to holders before `ex_date` (a session)."""

    symbol: str
    ex_date: date
    amount: float
    announced: date

    def __post_init__(self):
        if not self.amount > 0:
            raise ValueError(f"dividend of {self.symbol} on {self.ex_date}: amount must be positive, not {self.amount}")

    @property
    def payable(self) -> date:
        return self.ex_date + timedelta(days=PAYABLE_DAYS_AFTER)

    @property
    def id(self) -> str:
        return _id("dividend", self.symbol, self.ex_date)


@dataclass(frozen=True)
class Split:
    """`numerator` new shares for `denominator` old ones from `ex_date` on (4-for-1: 4 and 1; a
    1-for-10 reverse split: 1 and 10). `announced` may come after the ex-date (a late listing)."""

    symbol: str
    ex_date: date
    numerator: float
    denominator: float
    announced: date

    def __post_init__(self):
        if not (self.numerator > 0 and self.denominator > 0):
            raise ValueError(
                f"split of {self.symbol} on {self.ex_date}: numerator and denominator must be positive"
            )

    @property
    def ratio(self) -> float:
        """New shares per old share: prices before the ex-date divide by it."""
        return self.numerator / self.denominator

    @property
    def fraction(self) -> Fraction:
        """The ratio exactly (3-for-2 is 3/2)."""
        return Fraction(str(self.numerator)) / Fraction(str(self.denominator))

    @property
    def id(self) -> str:
        return _id("split", self.symbol, self.ex_date)

    def applied_on(self, day: date) -> bool:
        """Whether a split-adjusting provider has re-based the history by `day`: it knows the split
        (announced) and the split is effective (its ex-date has come)."""
        return self.announced <= day and self.ex_date <= day

    @property
    def booked(self) -> date:
        """Alpaca's process_date: the ex-date, or the day the split was listed if later."""
        return max(self.ex_date, self.announced)


@dataclass(frozen=True)
class PriceGap:
    """Prices from `session` on are `factor` times the model's (1.3: a 30% gap up overnight)."""

    symbol: str
    session: date
    factor: float

    def __post_init__(self):
        if not self.factor > 0:
            raise ValueError(f"price gap of {self.symbol} on {self.session}: factor must be positive, not {self.factor}")


def _id(kind: str, symbol: str, ex_date: date) -> str:
    """A stable id per action, as the feeds give one (a UUID at Alpaca)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"backfill-dagster-fake/{kind}/{symbol}/{ex_date.isoformat()}"))


def pays_default_dividends(symbol: str) -> bool:
    """Whether `symbol` pays the default quarterly dividend (two symbols in three)."""
    return seed(symbol, "dividends") % 3 != 0


class CorporateActions:
    """The actions the fakes know, queried per symbol and ex-date window."""

    def __init__(
        self,
        dividends: Iterable[CashDividend] = (),
        splits: Iterable[Split] = (),
        *,
        gaps: Iterable[PriceGap] = (),
        default_dividends: bool = True,
        calendar: SessionCalendar | None = None,
    ):
        self._calendar = calendar
        self._dividends = _by_symbol(dividends, self.calendar)
        self._splits = _by_symbol(splits, self.calendar)
        self._gaps: dict[str, list[PriceGap]] = {}
        for gap in gaps:
            self.calendar.require_session(gap.session)
            self._gaps.setdefault(gap.symbol, []).append(gap)
        self.default_dividends = default_dividends

    @property
    def calendar(self) -> SessionCalendar:
        if self._calendar is None:
            self._calendar = xnys()
        return self._calendar

    def dividends(self, symbol: str, first: date, last: date, *, known_on: date | None = None) -> list[CashDividend]:
        """Cash dividends of `symbol` with ex-dates first..last (inclusive), announced by `known_on`."""
        if symbol in self._dividends:
            listed = self._dividends[symbol]
        elif self.default_dividends and pays_default_dividends(symbol):
            listed = _quarterly_dividends(symbol, first, last, self.calendar)
        else:
            listed = []
        return _window(listed, first, last, known_on)

    def splits(self, symbol: str, first: date, last: date, *, known_on: date | None = None) -> list[Split]:
        """Splits of `symbol` with ex-dates first..last (inclusive), announced by `known_on`."""
        return _window(self._splits.get(symbol, []), first, last, known_on)

    def split_symbols(self) -> list[str]:
        """Symbols with explicit splits (a request that names no symbol lists theirs)."""
        return sorted(self._splits)

    def moves_prices(self, symbol: str) -> bool:
        """Whether `symbol` has splits or price gaps (the others are served as the model)."""
        return symbol in self._splits or symbol in self._gaps

    def gap_factor(self, symbol: str, session: date) -> Fraction:
        """What the price gaps up to `session` multiply its prices by."""
        factor = ONE
        for gap in self._gaps.get(symbol, ()):
            if gap.session <= session:
                factor *= Fraction(str(gap.factor))
        return factor

    def price_factor(self, symbol: str, session: date, today: date, *, adjusted: bool) -> Fraction:
        """What the model's prices of `session` are multiplied by when served on `today` (volume is
        divided by it): every split after the session, less — for split-adjusted answers — those
        applied by `today`."""
        factor = ONE
        for split in self._splits.get(symbol, ()):
            if session < split.ex_date and not (adjusted and split.applied_on(today)):
                factor *= split.fraction
        return factor


def _by_symbol(actions, calendar: SessionCalendar) -> dict[str, list]:
    out: dict[str, list] = {}
    for action in actions:
        calendar.require_session(action.ex_date)
        out.setdefault(action.symbol, []).append(action)
    return {symbol: sorted(listed, key=lambda a: a.ex_date) for symbol, listed in out.items()}


def _window(actions: list, first: date, last: date, known_on: date | None) -> list:
    return [
        a for a in actions if first <= a.ex_date <= last and (known_on is None or a.announced <= known_on)
    ]


def _quarterly_dividends(symbol: str, first: date, last: date, calendar: SessionCalendar) -> list[CashDividend]:
    """One dividend a quarter, in the symbol's own months (Jan/Apr/Jul/Oct, Feb/May/... or
    Mar/Jun/...), on the first session from its own day of the month, of its own amount."""
    drawn = seed(symbol, "dividends")
    months = [drawn // 3 % 3 + 1 + 3 * q for q in range(4)]
    day = 1 + drawn // 9 % 20
    amount = round(0.05 + drawn // 180 % 96 / 100, 2)
    out = []
    for year in range(first.year, last.year + 1):
        for month in months:
            start = date(year, month, day)
            if not (calendar.first_day <= start and start + timedelta(days=7) <= calendar.last_day):
                continue
            ex_date = calendar.sessions(start, start + timedelta(days=7))[0]
            if first <= ex_date <= last:
                out.append(CashDividend(symbol, ex_date, amount, ex_date - timedelta(days=ANNOUNCED_DAYS_BEFORE)))
    return out

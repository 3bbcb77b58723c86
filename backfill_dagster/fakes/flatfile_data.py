"""The rows of Polygon/Massive flat files (`day_aggs_v1`, `minute_aggs_v1`) for one session, made
from the same synthetic market as the REST fakes (fakes/data.py), as gzip CSV.

- Prices are raw (unadjusted): the corporate-actions registry's raw price factor, as the REST fakes
  answer `adjusted=false`, so a split symbol's prices jump by the ratio at the ex-date.
- Day rows are the REST fakes' raw d1 bars (the regular-hours aggregate), labelled 00:00 New York.
- Minute rows decompose every m15 bar the REST fakes serve (04:00-20:00, no-trade slots left out)
  into up to 15 one-minute rows, deterministically per (symbol, session), such that aggregating
  the minutes present (first open, max high, min low, last close, sum volume, sum transactions)
  gives back exactly the raw m15 bar. One or two minutes of most buckets have no trade (no row),
  sometimes the bucket's first or last minute, so bucketing must work from the minutes present;
  the regular session's closing minute always has one (unless a defect removes it).
- Columns `ticker,volume,open,close,high,low,window_start,transactions` (no vwap), window_start in
  Unix nanoseconds, rows sorted by ticker (code-point order: `TPC` before `TpC`) then time.

Work is in integer cents and whole shares, vectorised with numpy over all of a session's bars;
prices print as `k/100` floats, which parse back to exactly the REST fakes' 2-decimal prices.
"""

from __future__ import annotations

import gzip
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np

from backfill_dagster.domain.synthetic import CLOSE, HIGH, LOW, OPEN, TRADES, VOLUME, seed
from backfill_dagster.fakes.data import BarData

HEADER = "ticker,volume,open,close,high,low,window_start,transactions"
MINUTE_NS = 60 * 1_000_000_000
MINUTES_PER_BAR = 15
# Tickers real files carry that trip naive readers: `NA` (pandas reads it as NaN), preferreds with
# a lowercase `p` (`BCpA`, `AAp`), a class share with a dot, and a pair equal but for case.
PITFALL_TICKERS = ("NA", "BCpA", "AAp", "BRK.B", "TpC", "TPC")
GZIP_LEVEL = 6
# The version of how rows are made: generated files cached under an older one are not reused.
GENERATOR = 2


@dataclass(frozen=True)
class Rows:
    """Aggregate rows in file order; tickers as indices into `names`, prices in integer cents."""

    names: tuple[str, ...]
    code: np.ndarray  # int64 index into names
    volume: np.ndarray  # int64
    open: np.ndarray  # int64 cents
    close: np.ndarray
    high: np.ndarray
    low: np.ndarray
    window_start: np.ndarray  # int64 UTC ns
    transactions: np.ndarray  # int64

    COLUMNS = ("code", "volume", "open", "close", "high", "low", "window_start", "transactions")

    def __len__(self) -> int:
        return len(self.window_start)

    @property
    def tickers(self) -> list[str]:
        return [self.names[i] for i in self.code.tolist()]

    def take(self, index) -> Rows:
        return Rows(self.names, *(getattr(self, f)[index] for f in self.COLUMNS))

    def replace(self, **columns) -> Rows:
        return Rows(self.names, *(columns.get(f, getattr(self, f)) for f in self.COLUMNS))


def filler_tickers(count: int) -> list[str]:
    """`count` ticker-like names (XAAA, XAAB, ...), the same every time, to make the universe big."""
    out = []
    for i in range(count):
        letters, n = "", i
        for _ in range(3):
            letters = chr(ord("A") + n % 26) + letters
            n //= 26
        out.append(f"X{letters}" if i < 26**3 else f"X{i}")
    return out


def universe(symbols: Iterable[str], fillers: int = 0, *, pitfalls: bool = True) -> list[str]:
    """The tickers a file may carry, in file order: the symbols, filler names and the pitfall
    tickers, without duplicates, sorted by code point (as the real files are)."""
    names = set(symbols) | set(filler_tickers(fillers))
    if pitfalls:
        names |= set(PITFALL_TICKERS)
    return sorted(names)


def cents(values: np.ndarray) -> np.ndarray:
    return np.rint(values * 100).astype(np.int64)


def day_rows(data: BarData, tickers: Sequence[str], session: date) -> Rows:
    """One row per ticker with a raw d1 bar for the session (BarData leaves out withheld pairs)."""
    tickers = tuple(tickers)
    end_ns = data.calendar.served_window(session)[1].value  # after the close: the whole day
    codes, values = [], []
    for i, ticker in enumerate(tickers):
        row = data.session_day(ticker, session, end_ns, adjusted=False)
        if row is not None:
            codes.append(i)
            values.append(row)
    v = np.array(values, dtype=np.float64).reshape(-1, 7)
    midnight = data.calendar.midnight(session).value
    return Rows(
        tickers, np.array(codes, dtype=np.int64),
        np.rint(v[:, VOLUME]).astype(np.int64),
        cents(v[:, OPEN]), cents(v[:, CLOSE]), cents(v[:, HIGH]), cents(v[:, LOW]),
        np.full(len(codes), midnight, dtype=np.int64),
        np.rint(v[:, TRADES]).astype(np.int64),
    )


def minute_rows(data: BarData, tickers: Sequence[str], session: date, *, no_trade_rate: float = 0.0,
                without_closing_minute: Collection[str] = ()) -> Rows:
    """The session's minute rows of every ticker: each traded raw m15 bar the REST fakes serve,
    split into the minutes that had trades. The regular session's last minute (15:59, 12:59 on a
    half day) always trades, as the closing minute of a listed stock does; the tickers of
    `without_closing_minute` lose that row (a defect of real files), so their last quarter hour no
    longer aggregates to the REST bar."""
    tickers = tuple(tickers)
    end_ns = data.calendar.served_window(session)[1].value
    closing_ns = data.calendar.close(session).value - MINUTE_NS
    codes, starts, values, draws, quiet = [], [], [], [], []
    for i, ticker in enumerate(tickers):
        slots = data.session_slots(ticker, session, end_ns, no_trade_rate=no_trade_rate, adjusted=False).traded_only()
        if len(slots):
            # Each ticker's own stream: its minutes do not change with the rest of the universe.
            rng = np.random.default_rng(seed(ticker, session.isoformat(), "flat-file-minutes"))
            codes.append(np.full(len(slots), i, dtype=np.int64))
            starts.append(slots.ts)
            values.append(slots.values)
            draws.append(rng.random((6, len(slots), MINUTES_PER_BAR)))
            quiet.append(rng.random(len(slots)))
    if not codes:
        return Rows(tickers, *(np.empty(0, np.int64) for _ in Rows.COLUMNS))
    code, starts = np.concatenate(codes), np.concatenate(starts)
    draws = np.concatenate(draws, axis=1)
    # The closing minute's draw outranks its bucket's others: it is always among the minutes kept.
    draws[0][starts == closing_ns - (MINUTES_PER_BAR - 1) * MINUTE_NS, MINUTES_PER_BAR - 1] = 2.0
    bar_of, minutes = decompose(starts, np.concatenate(values), draws, np.concatenate(quiet))
    rows = Rows(tickers, code[bar_of], *minutes)
    if without_closing_minute:
        lost = np.isin(rows.code, [i for i, t in enumerate(tickers) if t in without_closing_minute])
        rows = rows.take(~(lost & (rows.window_start == closing_ns)))
    return rows


def decompose(starts: np.ndarray, values: np.ndarray, draws: np.ndarray, quiet_draw: np.ndarray):
    """Minute rows whose aggregate per m15 bar is exactly that bar (values: columns VALUE_COLUMNS,
    prices with 2 decimals, whole volumes), from uniform draws (6 x bars x 15 and one per bar).

    Returns (the bar of each minute row, (volume, open, close, high, low, window_start,
    transactions)), bars in order and minutes ascending within each."""
    o, h, l, c = cents(values[:, OPEN]), cents(values[:, HIGH]), cents(values[:, LOW]), cents(values[:, CLOSE])
    volume = np.rint(values[:, VOLUME]).astype(np.int64)
    trades = np.rint(values[:, TRADES]).astype(np.int64)
    # How many minutes traded: 15 less 0-2 quiet ones, and never more than the shares or trades
    # (every minute row has at least one share and one trade).
    quiet = np.searchsorted([0.45, 0.8], quiet_draw, side="right")  # 0: 45%, 1: 35%, 2: 20%
    m = np.clip(np.minimum(MINUTES_PER_BAR - quiet, np.minimum(volume, trades)), 1, MINUTES_PER_BAR)
    # Which minutes: the m with the highest random ranks (any minute may be quiet, first and last too).
    ranks = np.argsort(np.argsort(draws[0], axis=1), axis=1)
    present = ranks >= (MINUTES_PER_BAR - m)[:, None]
    bar_of, minute_of = np.nonzero(present)  # row-major: bars in order, minutes ascending in each
    k = np.cumsum(present, axis=1)[bar_of, minute_of]  # 1..m: position among the bar's minutes
    mb = m[bar_of]
    ob, hb, lb, cb = o[bar_of], h[bar_of], l[bar_of], c[bar_of]
    last, first = k == mb, k == 1
    # Closes: a noisy path from open to close inside [low, high]; the last minute closes the bar.
    span = hb - lb
    path = ob + (cb - ob) * k / mb + (draws[1][bar_of, minute_of] - 0.5) * 0.6 * span
    close = np.where(last, cb, np.clip(np.rint(path).astype(np.int64), lb, hb))
    # Opens: the bar's open, then each minute opens at the previous minute's close.
    open_ = np.where(first, ob, np.r_[0, close[:-1]])
    # Wicks inside [low, high]; one minute reaches the bar's high, one its low.
    hi_minute = 1 + (draws[2][:, 0] * m).astype(np.int64)
    lo_minute = 1 + (draws[3][:, 0] * m).astype(np.int64)
    wick = np.rint(draws[4][bar_of, minute_of] * 0.3 * span).astype(np.int64)
    high = np.where(k == hi_minute[bar_of], hb, np.minimum(hb, np.maximum(open_, close) + wick))
    low = np.where(k == lo_minute[bar_of], lb, np.maximum(lb, np.minimum(open_, close) - wick))
    # Shares and trades: at least one each a minute, the rest by random weights, summing exactly.
    weights = 0.2 + draws[5][bar_of, minute_of]
    bar_start = np.flatnonzero(first)
    minute_volume = _allocate(volume, m, bar_of, bar_start, weights)
    minute_trades = _allocate(trades, m, bar_of, bar_start, 1.4 - weights)
    window_start = starts[bar_of] + minute_of.astype(np.int64) * MINUTE_NS
    return bar_of, (minute_volume, open_, close, high, low, window_start, minute_trades)


def _allocate(total: np.ndarray, m: np.ndarray, bar_of: np.ndarray, bar_start: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Split each bar's whole `total` over its m minutes: at least 1 each (0 when the total is 0),
    the rest in proportion to the weights, by flooring cumulative shares so the parts sum exactly."""
    least = np.minimum(1, total)
    spare = (total - least * m)[bar_of]
    cum = np.cumsum(weights)
    counts = np.diff(np.r_[bar_start, len(bar_of)])
    before = np.repeat(cum[bar_start] - weights[bar_start], counts)
    share = cum - before
    whole = np.repeat(share[np.r_[bar_start[1:] - 1, len(bar_of) - 1]], counts)
    upto = np.minimum(spare, np.floor(spare * share / whole).astype(np.int64))
    upto[np.r_[bar_start[1:] - 1, len(bar_of) - 1]] = spare[np.r_[bar_start[1:] - 1, len(bar_of) - 1]]
    prev = np.r_[0, upto[:-1]]
    prev[bar_start] = 0
    return upto - prev + least[bar_of]


# ---------------------------------------------------------------------- defects
def misdated(rows: Rows, window_start_ns: int) -> Rows:
    """The same rows carrying another day's window_start (the 2019-08-12 day file's defect)."""
    return rows.replace(window_start=np.full(len(rows), window_start_ns, dtype=np.int64))


def with_duplicates(rows: Rows, session: date, share: int = 5) -> Rows:
    """Rows of about one ticker in `share` written twice, adjacent (the 2019-08-13 day file's defect)."""
    if len(rows) == 0:
        return rows
    chosen = np.array([seed(t, session.isoformat(), "duplicate") % share == 0 for t in rows.names], dtype=bool)
    dup = chosen[rows.code]
    if not dup.any():
        dup[0] = True
    return rows.take(np.repeat(np.arange(len(rows)), np.where(dup, 2, 1)))


# ---------------------------------------------------------------------- CSV
# Text built with numpy, not a Python format per value: each row is laid out in a fixed-width byte
# matrix whose unused cells are masked, and the kept cells, read row by row, are the file. Digits
# come four at a time from a table ("0000".."9999"): integer division is the slow part.
_POW10 = 10 ** np.arange(19, dtype=np.int64)  # 1 .. 10^18
_QUADS = np.frombuffer("".join(f"{i:04d}" for i in range(10_000)).encode(), np.uint8).reshape(10_000, 4)


def _digit_count(x: np.ndarray) -> np.ndarray:
    return np.maximum(1, np.searchsorted(_POW10, x, side="right"))


class _Line:
    """A fixed-width row layout being filled: cells (uint8) and which of them are kept."""

    def __init__(self, n: int, width: int):
        self.cells = np.zeros((n, width), np.uint8)
        self.keep = np.zeros((n, width), bool)
        self.at = 0

    def literal(self, text: bytes, keep=True) -> None:
        w = len(text)
        self.cells[:, self.at : self.at + w] = np.frombuffer(text, np.uint8)
        self.keep[:, self.at : self.at + w] = keep if np.ndim(keep) == 0 else np.asarray(keep)[:, None]
        self.at += w

    def integers(self, x: np.ndarray, width: int) -> None:
        """Non-negative integers of at most `width` digits (a multiple of 4), right-aligned."""
        quads = width // 4
        rest = x
        for q in range(quads - 1, -1, -1):
            rest, part = np.divmod(rest, 10_000) if q else (rest, rest)
            self.cells[:, self.at + 4 * q : self.at + 4 * q + 4] = _QUADS[part if q else rest]
        self.keep[:, self.at : self.at + width] = np.arange(width) >= (width - _digit_count(x))[:, None]
        self.at += width

    def bytes(self) -> bytes:
        return self.cells[:, : self.at][self.keep[:, : self.at]].tobytes()


def _width(x: np.ndarray) -> int:
    digits = int(_digit_count(np.array([x.max() if len(x) else 0]))[0])
    return -(-digits // 4) * 4


def csv_bytes(rows: Rows, *, header: bool = True) -> bytes:
    """The CSV (header, and a newline after every row) of the rows. Prices print as the shortest
    decimal of their cents (172.5, 75, 73.44), which reads back as exactly that 2-decimal double."""
    header = (HEADER + "\n").encode() if header else b""
    n = len(rows)
    if n == 0:
        return header
    if (rows.window_start < 0).any() or (rows.volume < 0).any():
        raise ValueError("flat-file rows carry non-negative volumes and timestamps")
    names = np.array([name.encode("ascii") for name in rows.names], dtype="S")
    name_cells = names.view(np.uint8).reshape(len(names), -1)
    prices = (rows.open, rows.close, rows.high, rows.low)
    whole_width = max(_width(p // 100) for p in prices)
    # window_start is whole seconds (minute starts, midnights): its last nine digits are zeros.
    seconds = rows.window_start % 1_000_000_000 == 0
    ts_digits = rows.window_start // 1_000_000_000 if seconds.all() else rows.window_start
    widths = (_width(rows.volume), _width(ts_digits), _width(rows.transactions))
    line = _Line(n, name_cells.shape[1] + 8 + widths[0] + 4 * (whole_width + 3) + widths[1] + 9 + widths[2] + 1)
    w = name_cells.shape[1]
    line.cells[:, :w] = name_cells[rows.code]
    line.keep[:, :w] = line.cells[:, :w] != 0
    line.at = w
    line.literal(b",")
    line.integers(rows.volume, widths[0])
    for price in prices:
        line.literal(b",")
        line.integers(price // 100, whole_width)
        fraction = price % 100
        tens, ones = np.divmod(fraction, 10)
        line.literal(b".", fraction != 0)
        line.cells[:, line.at] = tens + ord("0")
        line.cells[:, line.at + 1] = ones + ord("0")
        line.keep[:, line.at] = fraction != 0
        line.keep[:, line.at + 1] = ones != 0
        line.at += 2
    line.literal(b",")
    line.integers(ts_digits, widths[1])
    if seconds.all():
        line.literal(b"000000000")
    line.literal(b",")
    line.integers(rows.transactions, widths[2])
    line.literal(b"\n")
    return header + line.bytes()


def csv_text(rows: Rows) -> str:
    return csv_bytes(rows).decode("ascii")


def csv_gz(rows: Rows, level: int = GZIP_LEVEL) -> bytes:
    """The gzip file of the rows' CSV (mtime 0: the same bytes every time)."""
    return gzip.compress(csv_bytes(rows), compresslevel=level, mtime=0)


# Tickers whose minute rows are made, formatted and compressed at a time: a file's peak memory
# is that many tickers' rows (~60 MB for 100), whatever the universe's size.
TICKERS_PER_CHUNK = 100


def minute_csv_chunks(data: BarData, tickers: Sequence[str], session: date, *, no_trade_rate: float = 0.0,
                      without_closing_minute: Collection[str] = (),
                      per_chunk: int = TICKERS_PER_CHUNK) -> Iterator[bytes]:
    """The minute file's CSV in pieces, a run of consecutive tickers each (the tickers in file order)."""
    for i in range(0, max(len(tickers), 1), per_chunk):
        rows = minute_rows(data, tickers[i : i + per_chunk], session, no_trade_rate=no_trade_rate,
                           without_closing_minute=without_closing_minute)
        yield csv_bytes(rows, header=i == 0)


def write_gz(pieces: Iterable[bytes], path, level: int = GZIP_LEVEL) -> None:
    """A gzip file of the concatenated pieces (no name, mtime 0: the same bytes every time)."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=level, mtime=0) as gz:
        for piece in pieces:
            gz.write(piece)

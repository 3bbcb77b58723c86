"""Flat-file aggregates (one gzip CSV per session, every US stock) into the store's bars (pure).

A file's rows are `ticker,volume,open,close,high,low,window_start,transactions`: `window_start` in
Unix nanoseconds (UTC, the window's start), prices raw. Columns are taken by name from the header
(unknown extra columns are ignored), tickers compared exactly — `TpC` is not `TPC`, and the ticker
`NA` is a ticker, never a missing value — and volume read as a number (fractional volume exists).

Reading streams: lines of other tickers are skipped on their first field without being parsed, so
the cost of a file is one pass over its text and the memory is the requested tickers' rows only.

A file is trusted row by row, never as a whole: a row whose `window_start` is not on the file's
own date in New York (a known defective day file carried the next day's stamps), two rows of one
ticker with one `window_start` (the same file's duplicates), or a row that does not parse is
rejected with the reason, and the ticker's session with it (its bars are not half-written).

m15 bars come from the minutes present (no forward fill): a bucket is open + k x 15 min, which is
the clock's quarter hour, since 04:00, 09:30, 13:00, 16:00 and 20:00 are all quarter hours and New
York's offset from UTC is whole hours; the minutes kept are the request's window (regular hours,
or 04:00-20:00 with extended hours, an early close's 13:00 included: the calendar says). d1 bars
are the day file's rows as they are.
"""

from __future__ import annotations

import csv
import io
from array import array
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pandas as pd

from backfill_dagster.domain.bars import bars_frame, empty_bars
from backfill_dagster.domain.calendar import NEW_YORK

HEADER = ("ticker", "volume", "open", "close", "high", "low", "window_start", "transactions")
REQUIRED = HEADER  # every aggregate column is needed; extra ones are ignored
M15_NS = 15 * 60 * 1_000_000_000
CHUNK_ROWS = 50_000  # requested rows parsed together (a few MB of text held at a time)
# A row's numbers, in this order (transactions may be empty: NaN).
_NUMBERS = ("open", "high", "low", "close", "volume", "transactions")


class FileFormatError(ValueError):
    """A file that is not an aggregates CSV (no header, a required column missing)."""


@dataclass
class FileRows:
    """The rows of one file for the requested tickers in compact typed arrays (a row costs ~60
    bytes, not a tuple of Python floats: 500 symbols' minutes of a session are ~30 MB), and the rows
    rejected on reading, with their reasons."""

    names: dict[str, int] = field(default_factory=dict)  # ticker -> its code
    codes: array = field(default_factory=lambda: array("i"))
    window_start: array = field(default_factory=lambda: array("q"))
    flat_values: array = field(default_factory=lambda: array("d"))  # open, high, low, close, volume, transactions
    rejected: list[tuple[str, int | None, tuple[float, ...] | None, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def tickers(self) -> list[str]:
        by_code = {code: name for name, code in self.names.items()}
        return [by_code[c] for c in self.codes]

    @property
    def values(self) -> list[tuple[float, ...]]:
        w = len(_NUMBERS)
        return [tuple(self.flat_values[i : i + w]) for i in range(0, len(self.flat_values), w)]


def read_aggs(lines: Iterable[str], tickers: Collection[str]) -> FileRows:
    """The rows of `tickers` (exact, case-sensitive) from an aggregates CSV's lines, header first."""
    wanted = set(tickers)
    it = iter(lines)
    try:
        header_line = next(it)
    except StopIteration:
        raise FileFormatError("the file is empty: no header") from None
    header = [h.strip().lower() for h in next(csv.reader([header_line]))]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise FileFormatError(f"the header lacks {', '.join(missing)} (it has {', '.join(header)})")
    at = {c: header.index(c) for c in REQUIRED}
    ticker_at = at["ticker"]
    width = len(header)
    out = FileRows()
    chunk: list[str] = []
    for line in it:
        if ticker_at == 0:
            # Skip other tickers on the first field alone: most lines of a whole-market file.
            ticker = line[: line.find(",")]
            if ticker not in wanted and ticker[:1] != '"':
                continue
            if '"' not in line and line.count(",") == width - 1:
                chunk.append(line)
                if len(chunk) >= CHUNK_ROWS:
                    _take_chunk(chunk, at, header, out)
                    chunk = []
                continue
        if not line.strip():
            continue
        fields = next(csv.reader([line]))  # quoted fields, a short or long row, ticker not first
        if fields and fields[ticker_at] in wanted:
            _take(fields, at, width, out)
    if chunk:
        _take_chunk(chunk, at, header, out)
    return out


def _take_chunk(lines: list[str], at: Mapping[str, int], header: list[str], out: FileRows) -> None:
    """Plain rows of requested tickers parsed together by pandas' C parser (a per-row Python parse
    would cost most of a file's time); a chunk with any value that does not parse goes row by row,
    so each bad row is rejected with its own reason."""
    columns = list(range(len(header)))
    dtypes = {at[name]: "float64" for name in _NUMBERS} | {at["ticker"]: str, at["window_start"]: "int64"}
    try:
        frame = pd.read_csv(io.StringIO("".join(lines)), header=None, names=columns, dtype=dtypes, engine="c",
                            keep_default_na=False, na_values={at["transactions"]: [""]})
    except (ValueError, TypeError, pd.errors.ParserError):
        for line in lines:
            _take(line.rstrip("\r\n").split(","), at, len(header), out)
        return
    local, uniques = pd.factorize(frame[at["ticker"]])
    codes = np.array([out.names.setdefault(name, len(out.names)) for name in uniques], dtype=np.int32)
    out.codes.frombytes(codes[local].astype(np.int32).tobytes())
    out.window_start.frombytes(frame[at["window_start"]].to_numpy(dtype=np.int64).tobytes())
    values = np.column_stack([frame[at[name]].to_numpy(dtype=np.float64) for name in _NUMBERS])
    out.flat_values.frombytes(np.ascontiguousarray(values).tobytes())


def _take(fields: list[str], at: Mapping[str, int], width: int, out: FileRows) -> None:
    ticker = fields[at["ticker"]]
    if len(fields) != width:
        out.rejected.append((ticker, None, None, f"row has {len(fields)} fields, the header {width}"))
        return
    raw_ts = fields[at["window_start"]].strip()
    try:
        ts = int(raw_ts)
    except ValueError:
        out.rejected.append((ticker, None, None, f"window_start {raw_ts!r} is not an integer of nanoseconds"))
        return
    numbers = []
    for name in _NUMBERS:
        text = fields[at[name]].strip()
        if name == "transactions" and text == "":
            numbers.append(float("nan"))
            continue
        try:
            numbers.append(float(text))
        except ValueError:
            out.rejected.append((ticker, ts, None, f"{name} {text!r} is not a number"))
            return
    out.codes.append(out.names.setdefault(ticker, len(out.names)))
    out.window_start.append(ts)
    out.flat_values.extend(numbers)


@dataclass(frozen=True)
class Checked:
    """A file's rows after the whole-file checks: the accepted rows (arrays, sorted by ticker then
    window_start) and the rejected rows as a bar-shaped frame with `session` and `reason`."""

    tickers: np.ndarray  # object
    window_start: np.ndarray  # int64 ns
    values: np.ndarray  # n x 6: open, high, low, close, volume, transactions
    rejected: pd.DataFrame

    @property
    def rejected_tickers(self) -> set[str]:
        return set(self.rejected["symbol"])


def check_rows(rows: FileRows, file_date: date, what: str) -> Checked:
    """Reject the rows that make the file untrustworthy for their ticker: a `window_start` whose
    New York date is not `file_date`, duplicates of (ticker, window_start), rows that did not parse.
    Every row of a ticker with a rejected row is rejected with it (its session is never written
    from part of its rows). `what` names the file in the reasons."""
    n = len(rows)
    names = np.empty(len(rows.names), dtype=object)
    for name, code in rows.names.items():
        names[code] = name
    tickers = names[np.frombuffer(rows.codes, dtype=np.int32)] if n else np.empty(0, dtype=object)
    ts = np.frombuffer(rows.window_start, dtype=np.int64).copy()
    values = np.frombuffer(rows.flat_values, dtype=np.float64).reshape(n, len(_NUMBERS)).copy()
    reasons: list[str | None] = [None] * n
    lo = pd.Timestamp(file_date).tz_localize(NEW_YORK).value
    hi = pd.Timestamp(file_date + pd.Timedelta(days=1)).tz_localize(NEW_YORK).value
    off_date = (ts < lo) | (ts >= hi)
    for i in np.flatnonzero(off_date):
        day = _ny_date(int(ts[i]))
        reasons[i] = f"{what}: window_start is on {day} in New York, not on the file's date {file_date.isoformat()}"
    if n:
        order = np.lexsort((ts, _codes(tickers)))
        same = (tickers[order][1:] == tickers[order][:-1]) & (ts[order][1:] == ts[order][:-1])
        for i in np.flatnonzero(same):
            for j in (order[i], order[i + 1]):
                reasons[j] = reasons[j] or f"{what}: more than one row for this ticker and window_start"
    bad_tickers = {t for t, r in zip(tickers, reasons) if r} | {t for t, *_ in rows.rejected}
    rejected_rows = []
    for ticker, start, numbers, reason in rows.rejected:
        rejected_rows.append((ticker, start, numbers, f"{what}: {reason}"))
    for i in range(n):
        if tickers[i] in bad_tickers:
            reason = reasons[i] or f"{what}: another row of {tickers[i]} in this file is defective"
            rejected_rows.append((tickers[i], int(ts[i]), tuple(values[i]), reason))
    keep = ~np.isin(tickers, list(bad_tickers)) if n else np.zeros(0, bool)
    tickers, ts, values = tickers[keep], ts[keep], values[keep]
    order = np.lexsort((ts, _codes(tickers))) if len(ts) else np.zeros(0, np.int64)
    return Checked(tickers[order], ts[order], values[order], _rejected_frame(rejected_rows, file_date))


def _codes(tickers: np.ndarray) -> np.ndarray:
    """Each ticker's rank by name (so sorting by it sorts by ticker, then by what follows)."""
    return np.unique(tickers.astype(str), return_inverse=True)[1].reshape(-1)


def _rejected_frame(rows: list, session: date) -> pd.DataFrame:
    if not rows:
        frame = empty_bars()
        frame["session"] = pd.Series([], dtype=object)
        frame["reason"] = pd.Series([], dtype=object)
        return frame
    data = {
        "symbol": [r[0] for r in rows],
        "ts": pd.to_datetime([r[1] for r in rows], unit="ns", utc=True),
    }
    for i, name in enumerate(("open", "high", "low", "close", "volume", "trade_count")):
        data[name] = [np.nan if r[2] is None else r[2][i] for r in rows]
    frame = bars_frame(data)
    frame["session"] = session
    frame["reason"] = [r[3] for r in rows]
    return frame


def _ny_date(ns: int) -> str:
    return pd.Timestamp(ns, tz="UTC").tz_convert(NEW_YORK).date().isoformat()


def m15_bars(rows: Checked, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """m15 bars (a bar frame, vwap missing) of the minutes with start <= window_start < end.

    open: the first minute's open, close: the last minute's close, high/low: extremes, volume and
    trade count: sums; a quarter hour with no minute has no bar."""
    keep = (rows.window_start >= start.value) & (rows.window_start < end.value)
    tickers, ts, values = rows.tickers[keep], rows.window_start[keep], rows.values[keep]
    if not len(ts):
        return empty_bars()
    bucket = ts - ts % M15_NS
    change = np.ones(len(ts), dtype=bool)
    change[1:] = (tickers[1:] != tickers[:-1]) | (bucket[1:] != bucket[:-1])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(ts)) - 1
    return bars_frame({
        "symbol": tickers[starts],
        "ts": pd.to_datetime(bucket[starts], unit="ns", utc=True),
        "open": values[starts, 0],
        "high": np.maximum.reduceat(values[:, 1], starts),
        "low": np.minimum.reduceat(values[:, 2], starts),
        "close": values[ends, 3],
        "volume": np.add.reduceat(values[:, 4], starts),
        "vwap": np.nan,
        "trade_count": np.add.reduceat(values[:, 5], starts),
    })


def d1_bars(rows: Checked) -> pd.DataFrame:
    """d1 bars (a bar frame, vwap missing): the day file's rows, labelled by their window_start
    (00:00 New York of the session; validation rejects any other stamp)."""
    if not len(rows.window_start):
        return empty_bars()
    v = rows.values
    return bars_frame({
        "symbol": rows.tickers,
        "ts": pd.to_datetime(rows.window_start, unit="ns", utc=True),
        "open": v[:, 0], "high": v[:, 1], "low": v[:, 2], "close": v[:, 3], "volume": v[:, 4],
        "vwap": np.nan, "trade_count": v[:, 5],
    })

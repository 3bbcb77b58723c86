"""Flat-file aggregates (one gzip CSV per session, every US stock) into the store's bars (pure).

A file's rows are `ticker,volume,open,close,high,low,window_start,transactions`: `window_start` in
Unix nanoseconds (UTC, the window's start), prices raw. Columns are taken by name from the header
(unknown extra columns are ignored), tickers compared exactly — `TpC` is not `TPC`, and the ticker
`NA` is a ticker, never a missing value — and volume read as a number (fractional volume exists).

Reading streams: lines of other tickers are skipped on their first field without being parsed, so
the cost of a file is one pass over its text and the memory is the requested tickers' rows only.
`read_aggs_blocks` (what the provider uses) makes that pass over blocks of bytes with numpy, a few
MB at a time; `read_aggs` makes it line by line, the reference whose rows the blocks reproduce.

A file is trusted row by row, never as a whole: a row whose `window_start` is not on the file's
own date in New York (a known defective day file carried the next day's stamps), two rows of one
ticker with one `window_start` (the same file's duplicates), or a row that does not parse is
rejected with the reason, and the ticker's session with it (its bars are not half-written).

m15 bars come from the minutes present (no forward fill): a bucket is open + k x 15 min, which is
the clock's quarter hour, since 04:00, 09:30, 13:00, 16:00 and 20:00 are all quarter hours and New
York's offset from UTC is whole hours; the minutes kept are the request's window (regular hours,
or 04:00-20:00 with extended hours, an early close's 13:00 included: the calendar says). d1 bars
are the day file's rows as they are.

A minute file can lack a ticker's closing minute (the regular session's last, 15:59 New York;
about 40 names a day in January 2025's files): its last quarter hour then closes on an earlier
trade. A stock that traded in nearly every minute of its session (`CLOSING_MINUTE_SHARE`) always
trades in the closing minute, the busiest of the day, so for such a ticker the gap is the file's,
and `lacking_closing_minute` names it; a thinly traded one's quiet close cannot be told from the
defect and is taken as it is.
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
MINUTE_NS = 60 * 1_000_000_000
M15_NS = 15 * MINUTE_NS
CHUNK_ROWS = 50_000  # requested rows parsed together (a few MB of text held at a time)
# Text indexed at a time by read_aggs_blocks (its index arrays cost about as much again): 1, 4
# and 16 MB read a whole-market file in about the same time, so the memory decides.
BLOCK_BYTES = 4 << 20
# A row's numbers, in this order (transactions may be empty: NaN).
# A ticker with rows in at least this share of the regular session's minutes trades in its
# closing minute; without a row there, the file is missing it.
CLOSING_MINUTE_SHARE = 0.9
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
    """The rows of `tickers` (exact, case-sensitive) from an aggregates CSV's lines, header first.

    Line by line: the reference reading, whose result `read_aggs_blocks` reproduces much faster
    from the file's bytes."""
    it = iter(lines)
    try:
        header_line = next(it)
    except StopIteration:
        raise FileFormatError("the file is empty: no header") from None
    reader = _LineReader(header_line, tickers)
    for line in it:
        reader.line(line)
    return reader.finish()


def read_aggs_blocks(blocks: Iterable[bytes], tickers: Collection[str]) -> FileRows:
    """The same rows as `read_aggs` from the file's UTF-8 text as blocks of bytes of any size (a
    decompressed stream read in large pieces), without a Python step per line of the file.

    The text is cut at the last newline of each ~BLOCK_BYTES (a line split between two blocks is
    joined first), and each block's lines are found with numpy: their starts, their first comma,
    and a key of their ticker (its first 8 bytes masked to its length, as a uint64), looked up among
    the requested tickers' keys. Requested lines of a block go to the chunk parser as runs of
    bytes; other lines are never decoded. What this cannot decide alone goes line by line through
    `read_aggs`'s own logic: a ticker longer than 8 bytes or one that could share a key (checked
    exactly), a line with a quote or without a comma, a row with the wrong number of fields, a
    block with a lone carriage return (which ends a line for the text reader), a header that does
    not put the ticker first. The memory is a block and its index arrays, whatever the file's size,
    besides the requested rows."""
    reader: _BlockReader | None = None
    held: list[bytes] = []  # pieces not yet cut into a block
    size = 0
    for piece in blocks:
        held.append(piece)
        size += len(piece)
        if size < BLOCK_BYTES:
            continue
        data = b"".join(held)
        if reader is None:
            cut = _header_end(data)
            if cut is not None:
                reader = _BlockReader(_decode(data[:cut]), tickers)
                data = data[cut:]
        if reader is not None and (end := data.rfind(b"\n") + 1):
            reader.block(data[:end])
            data = data[end:]
        held, size = [data], len(data)  # a line longer than a block waits for its end
    data = b"".join(held)
    if reader is None:
        if not data:
            raise FileFormatError("the file is empty: no header")
        cut = _header_end(data, last=True)
        reader = _BlockReader(_decode(data[:cut]), tickers)
        data = data[cut:]
    if data:
        reader.block(data)
    return reader.finish()


def _decode(data: bytes) -> str:
    return data.decode("utf-8")


def _header_end(data: bytes, last: bool = False) -> int | None:
    """Where the first line ends as the text reader ends it (after \\n, \\r\\n or a lone \\r),
    None if it may not have ended yet; `last`: the data is the whole file."""
    n, r = data.find(b"\n"), data.find(b"\r")
    if r != -1 and (n == -1 or r < n):
        if r + 1 < len(data) or last:
            return r + 2 if data[r + 1 : r + 2] == b"\n" else r + 1
        return None  # a \r at the end: its \n may come in the next piece
    if n != -1:
        return n + 1
    return len(data) if last else None


class _LineReader:
    """The reading of one file after its header: lines of requested tickers collected for the
    chunk parser, the others skipped on their first field, odd ones parsed one by one."""

    def __init__(self, header_line: str, tickers: Collection[str]):
        self.wanted = set(tickers)
        header = [h.strip().lower() for h in next(csv.reader([header_line]), [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise FileFormatError(f"the header lacks {', '.join(missing)} (it has {', '.join(header)})")
        self.at = {c: header.index(c) for c in REQUIRED}
        self.header = header
        self.width = len(header)
        self.out = FileRows()
        self.chunk: list = []  # lines (str) or runs of lines (bytes) waiting for the chunk parser
        self.chunk_rows = 0

    def line(self, line: str) -> None:
        if self.at["ticker"] == 0:
            # Skip other tickers on the first field alone: most lines of a whole-market file.
            ticker = line[: line.find(",")]
            if ticker not in self.wanted and ticker[:1] != '"':
                return
            if '"' not in line and line.count(",") == self.width - 1:
                self.plain(line, 1)
                return
        if not line.strip():
            return
        fields = next(csv.reader([line]))  # quoted fields, a short or long row, ticker not first
        if fields and fields[self.at["ticker"]] in self.wanted:
            _take(fields, self.at, self.width, self.out)

    def plain(self, text, rows: int) -> None:
        """`rows` plain lines (no quote, as many fields as the header) for the chunk parser; a
        chunk is parsed at CHUNK_ROWS rows exactly, whoever collected them."""
        self.chunk.append(text)
        self.chunk_rows += rows
        if self.chunk_rows >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.chunk:
            _take_chunk(self.chunk, self.at, self.header, self.out)
        self.chunk, self.chunk_rows = [], 0

    def finish(self) -> FileRows:
        self.flush()
        return self.out


class _BlockReader(_LineReader):
    """`_LineReader`'s result from blocks of bytes, each ending at a line's end (or the file's)."""

    def __init__(self, header_line: str, tickers: Collection[str]):
        super().__init__(header_line, tickers)
        encoded = {t.encode("utf-8") for t in self.wanted}
        self.wanted_bytes = encoded
        # Tickers of 1-8 bytes without a NUL: their masked key is theirs alone, so a line whose key
        # and length match is theirs. The others (longer ones, odd ones) are checked exactly.
        short = sorted((_key(b), len(b)) for b in encoded if 1 <= len(b) <= 8 and b"\0" not in b)
        self.short_keys = np.array([k for k, _ in short], dtype=np.uint64)
        self.short_lens = np.array([n for _, n in short], dtype=np.int64)
        self.exact_keys = np.array(sorted({_key(b) for b in encoded if not (1 <= len(b) <= 8 and b"\0" not in b)}),
                                   dtype=np.uint64)

    def plain(self, text, rows: int) -> None:
        super().plain(text.encode("utf-8") if isinstance(text, str) else text, rows)

    def block(self, data: bytes) -> None:
        if not data.isascii():
            data.decode("utf-8")  # the text reader refuses a file that is not UTF-8: so does this one
        lone_cr = b"\r" in data and data.count(b"\r") != data.count(b"\r\n")
        if self.at["ticker"] != 0 or lone_cr:
            # A lone \r ends a line for the text reader; a ticker not first has no cheap key.
            for line in io.StringIO(data.decode("utf-8"), newline=""):
                self.line(line)
            return
        a = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(a == _NL) + 1
        if not len(ends) or ends[-1] != len(a):
            ends = np.append(ends, len(a))  # the file's last line, without a newline
        starts = np.empty_like(ends)
        starts[0] = 0
        starts[1:] = ends[:-1]
        # Each line's first WINDOW bytes (past the block's end: zeros), rows of a sliding view.
        padded = np.frombuffer(data + bytes(WINDOW), dtype=np.uint8)
        window = np.lib.stride_tricks.sliding_window_view(padded, WINDOW)[starts]
        is_comma = window == _COMMA
        length = is_comma.argmax(axis=1)  # the ticker's length, where a comma is in the window
        has_comma = is_comma[np.arange(len(starts)), length] & (length < ends - starts)
        for i in np.flatnonzero(~has_comma & (ends - starts > WINDOW)).tolist():
            comma = data.find(b",", starts[i], ends[i])  # a long first field: found the slow way
            if comma != -1:
                has_comma[i], length[i] = True, comma - starts[i]
        # The ticker's first 8 bytes as a little-endian uint64, masked to its length.
        keys = np.ascontiguousarray(window[:, :8]).view("<u8").reshape(-1) & _MASKS[np.minimum(length, 8)]
        selected = np.zeros(len(starts), dtype=bool)
        if len(self.short_keys):
            pos = np.minimum(np.searchsorted(self.short_keys, keys), len(self.short_keys) - 1)
            selected = (self.short_keys[pos] == keys) & (self.short_lens[pos] == length) & has_comma
        if len(self.exact_keys):
            for i in np.flatnonzero(np.isin(keys, self.exact_keys) & has_comma).tolist():
                if data[starts[i] : starts[i] + length[i]] in self.wanted_bytes:
                    selected[i] = True
        odd = ~has_comma
        if b'"' in data:
            quotes = np.flatnonzero(a == _QUOTE)
            odd |= window[:, 0] == _QUOTE  # a quoted first field: only the csv reader knows the ticker
            odd |= selected & (np.searchsorted(quotes, ends) > np.searchsorted(quotes, starts))
        # The requested lines' bytes, in file order, and each line's offset in them.
        sel = np.flatnonzero(selected)
        cut = np.flatnonzero(np.diff(sel) != 1) + 1
        run_starts = starts[sel[np.concatenate(([0], cut))]].tolist() if len(sel) else []
        run_ends = ends[sel[np.append(cut, len(sel)) - 1]].tolist() if len(sel) else []
        text = b"".join([data[s:e] for s, e in zip(run_starts, run_ends)])
        offsets = np.zeros(len(sel) + 1, dtype=np.int64)
        np.cumsum(ends[sel] - starts[sel], out=offsets[1:])
        # Their fields, counted on their bytes alone: a row of the wrong width is odd.
        commas = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == _COMMA)
        fields = np.diff(np.searchsorted(commas, offsets)) + 1
        odd[sel[fields != self.width]] = True
        done = 0  # requested lines handed on, as an index into sel
        for i in np.flatnonzero(odd).tolist():  # in file order: the plain lines before it, then it
            upto = int(np.searchsorted(sel, i))
            self._plain_text(text, offsets, done, upto)
            self.line(data[starts[i] : ends[i]].decode("utf-8"))
            done = upto + 1 if upto < len(sel) and sel[upto] == i else upto
        self._plain_text(text, offsets, done, len(sel))

    def _plain_text(self, text: bytes, offsets: np.ndarray, first: int, end: int) -> None:
        """Requested lines first..end-1 (plain ones: no quote, as many fields as the header) of a
        block's `text` for the chunk parser, a chunk cut at CHUNK_ROWS rows as the line reader
        cuts it."""
        while first < end:
            upto = min(end, first + CHUNK_ROWS - self.chunk_rows)
            self.plain(text[offsets[first] : offsets[upto]], upto - first)
            first = upto


_NL, _COMMA, _QUOTE = ord("\n"), ord(","), ord('"')
# Bytes of a line's start searched for its first comma at once; a longer first field is found
# line by line (a ticker is a few bytes: real files have none that long).
WINDOW = 16
_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=np.uint64)


def _key(ticker: bytes) -> int:
    """A ticker's first 8 bytes as a little-endian integer (its bytes past 8 not in it)."""
    return int.from_bytes(ticker[:8].ljust(8, b"\0"), "little")


def _take_chunk(lines: list, at: Mapping[str, int], header: list[str], out: FileRows) -> None:
    """Plain rows of requested tickers parsed together by pandas' C parser (a per-row Python parse
    would cost most of a file's time); a chunk with any value that does not parse goes row by row,
    so each bad row is rejected with its own reason. `lines`: lines (str) or runs of lines (bytes)."""
    columns = list(range(len(header)))
    dtypes = {at[name]: "float64" for name in _NUMBERS} | {at["ticker"]: str, at["window_start"]: "int64"}
    text = b"".join(lines) if isinstance(lines[0], bytes) else "".join(lines)
    try:
        frame = pd.read_csv(io.BytesIO(text) if isinstance(text, bytes) else io.StringIO(text), header=None,
                            names=columns, dtype=dtypes, engine="c", keep_default_na=False,
                            na_values={at["transactions"]: [""]})
    except (ValueError, TypeError, pd.errors.ParserError):
        if isinstance(text, bytes):  # the lines as the text reader cuts them
            lines = list(io.StringIO(text.decode("utf-8"), newline=""))
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


def lacking_closing_minute(rows: Checked, open_: pd.Timestamp, close: pd.Timestamp,
                           share: float = CLOSING_MINUTE_SHARE) -> dict[str, tuple[int, int]]:
    """Tickers of a minute file that traded in at least `share` of the regular minutes
    open_ <= t < close but have no row for the last of them: ticker -> (minutes with a row, the
    session's regular minutes)."""
    regular = (rows.window_start >= open_.value) & (rows.window_start < close.value)
    if not regular.any():
        return {}
    tickers, ts = rows.tickers[regular], rows.window_start[regular]
    names, code = np.unique(tickers.astype(str), return_inverse=True)
    code = code.reshape(-1)
    minutes = np.bincount(code, minlength=len(names))
    closing = np.zeros(len(names), dtype=bool)
    closing[code[ts == close.value - MINUTE_NS]] = True
    total = int((close.value - open_.value) // MINUTE_NS)
    lacking = (minutes >= share * total) & ~closing
    return {str(names[i]): (int(minutes[i]), total) for i in np.flatnonzero(lacking)}


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

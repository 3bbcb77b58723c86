"""Bars in and out of PostgreSQL by COPY: binary data encoded with numpy in, CSV parsed by pandas out.

Text COPY through DataFrame.to_csv spends most of its time formatting floats and timestamps in
Python; psycopg's write_row still loops per row. In the binary format every float8, int8 and
timestamptz field has a fixed width, and in one write the text fields (symbol, timeframe,
provider, adjustment) repeat, so rows that share them and the same NULL pattern have one fixed
layout: a numpy structured array whose bytes are the COPY data. bench/store_write.py measures it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pandas as pd

from backfill_dagster.domain.calendar import epoch_ns

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
TRAILER = (-1).to_bytes(2, "big", signed=True)
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 UTC in Unix microseconds

# column -> PostgreSQL binary type
TEXT, FLOAT8, INT8, TIMESTAMPTZ = "text", "float8", "int8", "timestamptz"


# Rows encoded at a time: COPY data is sent in parts of about this many rows (~9 MB at ~140 bytes a
# row), so the encoding's memory follows the part, not the write (a request's answer can be
# ~400,000 bars: its data whole, then copied into one bytes object and joined into another, was
# ~160 MB at once).
PART_ROWS = 65_536


def encode(frame: pd.DataFrame, types: dict[str, str]) -> bytes:
    """Binary COPY data (header, tuples, trailer) for `frame`'s columns in `types` order."""
    return b"".join(encode_parts(frame, types))


def encode_parts(frame: pd.DataFrame, types: dict[str, str], part_rows: int | None = None) -> Iterator[bytes | memoryview]:
    """`encode`'s data in consecutive parts (header, tuples of at most `part_rows` rows, default
    PART_ROWS, trailer): the same bytes, in the same order, never all in memory at once."""
    part_rows = part_rows or PART_ROWS
    columns = list(types)
    yield HEADER
    if len(frame):
        text_cols = [c for c in columns if types[c] == TEXT]
        nullable = [c for c in columns if types[c] != TEXT]
        # One integer key per row: the codes of its text values and one bit per NULL field.
        key = np.zeros(len(frame), dtype=np.int64)
        for c in text_cols:
            codes, values = pd.factorize(frame[c], use_na_sentinel=False)
            key = key * (len(values) + 1) + codes
        for c in nullable:
            key = key * 2 + frame[c].isna().to_numpy()
        groups, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        del key
        for g in range(len(groups)):
            positions = np.flatnonzero(inverse == g) if len(groups) > 1 else None
            head = frame.iloc[first[g]]
            texts = {c: head[c] for c in text_cols}
            nulls = {c: bool(pd.isna(head[c])) for c in nullable}
            count = len(frame) if positions is None else len(positions)
            for start in range(0, count, part_rows):
                if positions is None:
                    rows = frame.iloc[start : start + part_rows] if count > part_rows else frame
                else:
                    rows = frame.iloc[positions[start : start + part_rows]]
                yield memoryview(_encode_group(rows, columns, types, texts, nulls).view(np.uint8))
    yield TRAILER


def _encode_group(rows, columns, types, texts, nulls) -> np.ndarray:
    """The rows' tuples as a structured array whose bytes are their COPY data."""
    fields: list[tuple] = [("count", ">i2")]
    for c in columns:
        fields.append((f"{c}__len", ">i4"))
        if types[c] == TEXT:
            if texts[c] is None:
                raise ValueError(f"column {c} is NULL: text columns of bars are NOT NULL")
            fields.append((c, f"S{len(str(texts[c]).encode())}"))
        elif not nulls[c]:
            fields.append((c, {FLOAT8: ">f8", INT8: ">i8", TIMESTAMPTZ: ">i8"}[types[c]]))
    out = np.empty(len(rows), dtype=np.dtype(fields))
    out["count"] = len(columns)
    for c in columns:
        kind = types[c]
        if kind == TEXT:
            value = str(texts[c]).encode()
            out[f"{c}__len"] = len(value)
            out[c] = value
        elif nulls[c]:
            out[f"{c}__len"] = -1
        else:
            out[f"{c}__len"] = 8
            if kind == FLOAT8:
                out[c] = rows[c].to_numpy(dtype=np.float64)
            elif kind == INT8:
                out[c] = rows[c].to_numpy(dtype=np.int64)
            else:
                out[c] = epoch_ns(rows[c]) // 1000 - _PG_EPOCH_US
    return out


BAR_COPY_TYPES = {
    "symbol": TEXT,
    "timeframe": TEXT,
    "ts": TIMESTAMPTZ,
    "open": FLOAT8,
    "high": FLOAT8,
    "low": FLOAT8,
    "close": FLOAT8,
    "volume": FLOAT8,
    "vwap": FLOAT8,
    "trade_count": INT8,
    "provider": TEXT,
    "adjustment": TEXT,
}


def copy_frame(pg_connection, rows: pd.DataFrame, table: str = "ohlc_bars") -> None:
    """COPY bar rows into a table over a psycopg 3 connection, in the binary format, a part at a time."""
    with pg_connection.cursor() as cursor:
        with cursor.copy(f"COPY {table} ({', '.join(BAR_COPY_TYPES)}) FROM STDIN (FORMAT BINARY)") as copy:
            for part in encode_parts(rows, BAR_COPY_TYPES):
                copy.write(part)


# The stored bars of (symbol, [lo, hi)) ranges, in the ranges' order and by time within each.
# Timestamps leave as integer microseconds (no dependence on the session's TimeZone or DateStyle);
# floats as the shortest text that reads back to the same double (extra_float_digits >= 1).
_COPY_BARS_OUT = (
    "COPY (SELECT b.symbol, (extract(epoch FROM b.ts) * 1000000)::bigint, b.open, b.high, b.low, b.close, "
    "b.volume, b.vwap, b.trade_count, b.provider, b.adjustment "
    "FROM unnest(%(symbols)s::text[], %(los)s::timestamptz[], %(his)s::timestamptz[]) WITH ORDINALITY "
    "AS r(symbol, lo, hi, k) "
    "JOIN ohlc_bars b ON b.symbol = r.symbol AND b.timeframe = %(timeframe)s AND b.ts >= r.lo AND b.ts < r.hi "
    "ORDER BY r.k, b.ts) TO STDOUT (FORMAT csv)"
)
_OUT_COLUMNS = ["symbol", "ts", "open", "high", "low", "close", "volume", "vwap", "trade_count", "provider", "adjustment"]
_OUT_DTYPES = {"symbol": "category", "ts": "int64", "open": "float64", "high": "float64", "low": "float64",
               "close": "float64", "volume": "float64", "vwap": "float64", "trade_count": "Int64",
               "provider": "category", "adjustment": "category"}


def read_bar_ranges(pg_connection, timeframe: str, ranges) -> pd.DataFrame:
    """The bars of `ranges` ((symbol, lo, hi) UTC) as a raw frame (the store's columns but timeframe,
    ts as UTC timestamps), by one text COPY parsed in C by pandas.

    Fetched as rows, every value of a bar becomes a Python object on the way (psycopg's datetime,
    SQLAlchemy's result processing, then pandas' inference): for the ~1.7 million bars a box run's
    derivations and checks read back, that was a third of the run's CPU."""
    buffer = io.BytesIO()
    with pg_connection.cursor() as cursor:
        # Local to the transaction: the shortest exact float text whatever the server's default.
        cursor.execute("SELECT set_config('extra_float_digits', '1', true)")
        params = {"symbols": [s for s, _, _ in ranges], "los": [lo.to_pydatetime() for _, lo, _ in ranges],
                  "his": [hi.to_pydatetime() for _, _, hi in ranges], "timeframe": timeframe}
        with cursor.copy(_COPY_BARS_OUT, params) as copy:
            for block in copy:
                buffer.write(block)
    buffer.seek(0)
    # Text stays text ("NA", "NULL" and "nan" are tickers too); only vwap and trade_count may be NULL.
    raw = pd.read_csv(buffer, header=None, names=_OUT_COLUMNS, dtype=_OUT_DTYPES, keep_default_na=False,
                      na_values={"vwap": [""], "trade_count": [""]})
    raw["ts"] = pd.to_datetime(raw["ts"], unit="us", utc=True).dt.as_unit("ns")
    for column in ("symbol", "provider", "adjustment"):
        # Parsed as categories, so each distinct text is one object however many bars hold it.
        raw[column] = raw[column].astype(object)
    return raw

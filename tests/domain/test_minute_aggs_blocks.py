"""The block reader (`read_aggs_blocks`) against the line reader (`read_aggs`): the same FileRows,
in the same order, for any cut of the bytes into pieces and blocks — lines split between blocks,
tickers whose 8-byte keys collide, quotes, rows of the wrong width, line endings, odd bytes."""

from __future__ import annotations

import io
import random

import pytest

import backfill_dagster.domain.minute_aggs as aggs
from backfill_dagster.domain.minute_aggs import FileFormatError, FileRows, read_aggs, read_aggs_blocks

HEADER = "ticker,volume,open,close,high,low,window_start,transactions"
T0 = 1_710_509_400_000_000_000  # 2024-03-15 09:30 New York


def row(ticker: str, i: int = 0, transactions: str = "3") -> str:
    return f"{ticker},{100 + i},10.5,10.75,11,10.25,{T0 + i * 60_000_000_000},{transactions}"


def by_lines(data: bytes, tickers) -> FileRows:
    """The line reader over the lines the provider used to make (a text reader, newline='')."""
    return read_aggs(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=""), tickers)


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or []


def as_tuple(rows: FileRows):
    return (rows.names, rows.codes.tolist(), rows.window_start.tolist(), rows.flat_values.tobytes(), rows.rejected)


def assert_same(data: bytes, tickers, monkeypatch, block_bytes=(64, 1000, aggs.BLOCK_BYTES), piece_sizes=(1, 7, 4096)):
    """Every cut gives the line reader's rows exactly (NaN included: the values' bytes compared)."""
    expected = as_tuple(by_lines(data, tickers))
    for block in block_bytes:
        monkeypatch.setattr(aggs, "BLOCK_BYTES", block)
        for size in piece_sizes:
            assert as_tuple(read_aggs_blocks(pieces(data, size), tickers)) == expected, (block, size)
    return expected


def test_a_line_cut_between_blocks_is_read_whole(monkeypatch):
    data = "\n".join([HEADER, *(row(t, i) for i in range(30) for t in ("AAPL", "MSFT", "NA"))]).encode() + b"\n"
    monkeypatch.setattr(aggs, "BLOCK_BYTES", 50)  # about one line: most lines straddle two pieces
    rows = read_aggs_blocks(pieces(data, 13), {"AAPL", "NA"})
    assert rows.tickers == ["AAPL", "NA"] * 30
    assert rows.window_start.tolist() == [T0 + i * 60_000_000_000 for i in range(30) for _ in range(2)]
    assert rows.values[0] == (10.5, 11.0, 10.25, 10.75, 100.0, 3.0) and not rows.rejected
    assert_same(data, {"AAPL", "NA"}, monkeypatch)


def test_a_wanted_ticker_is_told_from_an_unwanted_one_with_the_same_key(monkeypatch):
    # The first 8 bytes of all four are ABCDEFGH: only the exact check tells them apart.
    lines = [row("ABCDEFGH", 1), row("ABCDEFGHI", 2), row("ABCDEFGHJ", 3), row("ABCDEFGHJK", 4), row("ABCDEFG", 5)]
    data = ("\n".join([HEADER, *lines]) + "\n").encode()
    rows = read_aggs_blocks([data], {"ABCDEFGHJ", "ABCDEFG"})
    assert rows.tickers == ["ABCDEFGHJ", "ABCDEFG"] and rows.values[0][4] == 103.0
    rows = read_aggs_blocks([data], {"ABCDEFGH"})
    assert rows.tickers == ["ABCDEFGH"] and rows.values[0][4] == 101.0
    long_first = "X" * 40  # a first field past the comma window
    data += (row(long_first, 6) + "\n" + row("ABCDEFGHI", 7) + "\n").encode()
    rows = read_aggs_blocks([data], {long_first, "ABCDEFGHI"})
    assert rows.tickers == ["ABCDEFGHI", long_first, "ABCDEFGHI"]
    assert_same(data, {long_first, "ABCDEFGHJ", "ABCDEFGH"}, monkeypatch)


def test_pitfall_tickers_are_exact(monkeypatch):
    lines = [row(t, i) for i, t in enumerate(["NA", "NAN", "N", "TpC", "TPC", "BRK.B", "BRK", "AAp", "AA"])]
    data = ("\n".join([HEADER, *lines]) + "\n").encode()
    rows = read_aggs_blocks([data], {"NA", "TPC", "BRK.B", "AAp"})
    assert rows.tickers == ["NA", "TPC", "BRK.B", "AAp"]
    assert_same(data, {"NA", "TPC", "BRK.B", "AAp"}, monkeypatch)


def test_quotes_in_a_block_go_through_the_csv_reader(monkeypatch):
    lines = [f'"NA",1,2,2,2,2,{T0},1', f'"AAPL",1,2,2,2,2,{T0},1', f'MSFT,1,2,2,2,2,{T0},"4"',
             f'IBM,1,2,2,2,2,{T0},"4"', row("NA", 1), f'"N,A",1,2,2,2,2,{T0},1']
    data = ("\n".join([HEADER, *lines]) + "\n").encode()
    rows = read_aggs_blocks([data], {"NA", "MSFT", "N,A"})
    # Quoted rows are taken as they come, plain ones when their chunk is parsed (as lines do).
    assert rows.tickers == ["NA", "MSFT", "N,A", "NA"] and rows.values[1][5] == 4.0
    assert_same(data, {"NA", "MSFT", "N,A"}, monkeypatch)


def test_bad_rows_are_rejected_row_by_row_in_the_line_readers_order(monkeypatch):
    lines = [row("AAPL", 0), row("AAPL", 1) + ",extra", row("AAPL", 2).rsplit(",", 1)[0], row("AAPL", 3),
             row("AAPL", 4).replace("10.5", "x"), row("MSFT", 5, transactions=""), "", "AAPL", row("AAPL", 6)]
    data = ("\n".join([HEADER, *lines])).encode()  # no newline at the end
    monkeypatch.setattr(aggs, "CHUNK_ROWS", 2)  # chunks cut between and around the odd rows
    expected = assert_same(data, {"AAPL", "MSFT"}, monkeypatch)
    reasons = [r[3] for r in expected[4]]
    assert "row has 9 fields, the header 8" in reasons and "row has 7 fields, the header 8" in reasons
    assert "open 'x' is not a number" in reasons and "row has 1 fields, the header 8" in reasons


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
def test_line_endings_are_the_text_readers(newline, monkeypatch):
    data = newline.join([HEADER, row("AAPL", 0), row("MSFT", 1), row("AAPL", 2), ""]).encode()
    rows = read_aggs_blocks(pieces(data, 5), {"AAPL"})
    assert rows.tickers == ["AAPL", "AAPL"] and rows.values[1][5] == 3.0
    assert_same(data, {"AAPL"}, monkeypatch)
    # A lone \r inside a line ends it for the text reader: so it does here.
    mixed = (HEADER + "\n" + row("AAPL", 0) + "\rMSFT,1\n" + row("AAPL", 1) + "\r\n").encode()
    assert_same(mixed, {"AAPL", "MSFT"}, monkeypatch)


def test_header_by_name_in_pieces(monkeypatch):
    header = "open,extra,ticker,close,high,low,volume,window_start,transactions"
    data = (header + "\r\n" + f"10,zzz,AAPL,11,12,9,250.5,{T0},7\r\n" + f"10,zzz,MSFT,11,12,9,1,{T0},7\r\n").encode()
    rows = read_aggs_blocks(pieces(data, 3), {"AAPL"})
    assert rows.tickers == ["AAPL"] and rows.values == [(10.0, 12.0, 9.0, 11.0, 250.5, 7.0)]
    assert_same(data, {"AAPL"}, monkeypatch)


def test_not_an_aggregates_file_is_refused():
    with pytest.raises(FileFormatError, match="empty"):
        read_aggs_blocks([], {"AAPL"})
    with pytest.raises(FileFormatError, match="empty"):
        read_aggs_blocks([b"", b""], {"AAPL"})
    with pytest.raises(FileFormatError, match="lacks window_start"):
        read_aggs_blocks([b"ticker,volume,open,close,high,low,transactions\n", row("AAPL").encode()], {"AAPL"})
    with pytest.raises(FileFormatError, match="lacks"):
        read_aggs_blocks([b"AAPL,1,2,2,2,2,1,1"], {"AAPL"})  # no header: a row taken for it
    assert len(read_aggs_blocks([HEADER.encode()], {"AAPL"})) == 0


def test_bytes_that_are_not_utf8_are_refused_even_in_unwanted_lines():
    data = (HEADER + "\n" + row("AAPL") + "\n").encode() + b"X\xff\xfe,1,1,1,1,1,1,1\n"
    with pytest.raises(UnicodeDecodeError):
        by_lines(data, {"AAPL"})
    with pytest.raises(UnicodeDecodeError):
        read_aggs_blocks([data], {"AAPL"})


def test_non_ascii_tickers_are_compared_as_utf8(monkeypatch):
    data = ("\n".join([HEADER, row("ÉCO"), row("ÉCOLE"), row("日本"), row("AAPL")]) + "\n").encode()
    assert read_aggs_blocks([data], {"ÉCO", "日本"}).tickers == ["ÉCO", "日本"]
    assert_same(data, {"ÉCO", "日本", "ÉCOLE"}, monkeypatch)


def test_random_files_read_as_the_line_reader_reads_them(monkeypatch):
    """Files of mixed good and odd lines, wanted sets and cuts drawn at random (seeded)."""
    rng = random.Random(20240315)
    pool = ["NA", "TpC", "TPC", "BRK.B", "A", "AB", "ABCDEFGH", "ABCDEFGHI", "ABCDEFGHJ", "É", "Z" * 17, ""]
    monkeypatch.setattr(aggs, "CHUNK_ROWS", 5)
    for case in range(60):
        lines = [HEADER]
        for i in range(rng.randrange(0, 60)):
            ticker = rng.choice(pool)
            line = row(ticker, i, transactions=rng.choice(["3", "", "7"]))
            odd = rng.random()
            if odd < 0.05:
                line = f'"{ticker}"' + line[len(ticker):]
            elif odd < 0.08:
                line += ",9"
            elif odd < 0.11:
                line = line.rsplit(",", 1)[0]
            elif odd < 0.13:
                line = line.replace("10.75", "1o.75")
            elif odd < 0.14:
                line = ""
            elif odd < 0.15:
                line = line.replace(",10.5,", ',"10.5",')
            lines.append(line)
        newline = rng.choice(["\n", "\n", "\r\n"])
        text = newline.join(lines) + rng.choice([newline, ""])
        wanted = set(rng.sample(pool, rng.randrange(0, len(pool))))
        data = text.encode()
        expected = as_tuple(by_lines(data, wanted))
        for block in (16, 200):
            monkeypatch.setattr(aggs, "BLOCK_BYTES", block)
            size = rng.choice([1, 3, 50, 10_000])
            assert as_tuple(read_aggs_blocks(pieces(data, size), wanted)) == expected, (case, block, size)

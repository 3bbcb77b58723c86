import pytest

from backfill_dagster.symbols import InvalidSymbolError, normalize_symbol, normalize_symbols
from backfill_dagster.timeframes import Timeframe, UnknownTimeframeError


@pytest.mark.parametrize("raw, expected", [("aapl", "AAPL"), (" BRK.B ", "BRK.B"), ("BF-B", "BF-B"), ("X", "X"), ("ABCDEFGHIJ", "ABCDEFGHIJ")])
def test_valid_symbols_are_normalised(raw, expected):
    assert normalize_symbol(raw) == expected


@pytest.mark.parametrize(
    "raw, why",
    [
        ("AAPL;", "';'"),
        ("A|B", "'|'"),
        ("", "empty"),
        ("ABCDEFGHIJK", "at most 10"),
        (".A", "start with a letter or digit"),
        ("ÄPPLE", "'Ä'"),
        (42, "not a string"),
        ("AA PL", "' '"),
    ],
)
def test_invalid_symbols_are_refused_with_the_reason(raw, why):
    with pytest.raises(InvalidSymbolError, match=why if why.startswith("'") is False else None) as info:
        normalize_symbol(raw)
    assert why in str(info.value)


def test_normalize_symbols_reports_every_bad_one_and_dedupes():
    assert normalize_symbols(["msft", "AAPL", "MSFT"]) == ["MSFT", "AAPL"]
    with pytest.raises(InvalidSymbolError) as info:
        normalize_symbols(["A;", "OK", "B|"])
    assert "'A;'" in str(info.value) and "'B|'" in str(info.value)


def test_timeframes():
    assert Timeframe.parse("H1") is Timeframe.H1
    assert Timeframe.H4.source is Timeframe.M15 and not Timeframe.H4.is_fetched
    assert Timeframe.D1.is_fetched and Timeframe.M15.is_fetched
    with pytest.raises(UnknownTimeframeError, match="use one of m15, h1, h4, d1"):
        Timeframe.parse("m5")

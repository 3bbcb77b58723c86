import pytest

from backfill_dagster.domain.calendar import xnys
from backfill_dagster.domain.symbols import (
    PROVIDER_CLASS_SEPARATORS,
    InvalidSymbolError,
    normalize_symbol,
    normalize_symbols,
    provider_symbol,
    respelled_symbols,
    respelling_notice,
    store_symbol,
)
from backfill_dagster.domain.timeframes import Timeframe, UnknownTimeframeError
from backfill_dagster.orchestration.partitions import PartitionKeyError, parse_partition_key


@pytest.mark.parametrize(
    "raw, expected",
    [("aapl", "AAPL"), (" BRK.B ", "BRK.B"), ("BF-B", "BF.B"), ("brk-b", "BRK.B"), ("X", "X"), ("ABCDEFGHIJ", "ABCDEFGHIJ")],
)
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
        ("ß", "'ß', not ASCII"),  # upper-cased it is 'SS': another ticker
        ("ﬁ", "'ﬁ', not ASCII"),  # the ligature upper-cases to 'FI'
        ("straße", "'ß', not ASCII"),
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


def test_a_share_class_has_one_spelling_the_dot():
    """BRK-B (Yahoo's, Nasdaq's) and BRK.B are one symbol, stored as BRK.B; the entry points can tell
    the user which symbols they respelled."""
    assert normalize_symbols(["BRK-B", "brk.b", "AAPL"]) == ["BRK.B", "AAPL"]
    given = [" brk-b", "AAPL", "msft", "BRK.A", "BF-B"]
    assert respelled_symbols(given) == [("brk-b", "BRK.B"), ("BF-B", "BF.B")]  # case alone is no news
    assert respelled_symbols(["A;", "BRK-B"]) == [("BRK-B", "BRK.B")]  # invalid ones are normalize_symbols' to report
    assert respelling_notice("BRK-B", "BRK.B") == "BRK-B is stored as BRK.B (share classes are written with '.')"


def test_a_partition_key_must_use_the_stored_spelling():
    assert parse_partition_key("2024-01-02|BRK.B", xnys())[0] == "BRK.B"
    with pytest.raises(PartitionKeyError, match=r"'BRK\.B'"):
        parse_partition_key("2024-01-02|BRK-B", xnys())


@pytest.mark.parametrize(
    "provider, spelled",
    [("alpaca", "BRK.B"), ("polygon", "BRK.B"), ("tradier", "BRK.B"), ("yahoo", "BRK-B"), ("flatfiles", "BRK.B")],
)
def test_each_provider_spells_a_share_class_its_own_way_and_back(provider, spelled):
    assert provider_symbol("BRK.B", provider) == spelled and store_symbol(spelled, provider) == "BRK.B"
    assert provider_symbol("AAPL", provider) == "AAPL" == store_symbol("AAPL", provider)
    assert set(PROVIDER_CLASS_SEPARATORS) == {"alpaca", "polygon", "tradier", "yahoo", "flatfiles"}


def test_an_unknown_provider_has_no_spelling():
    with pytest.raises(ValueError, match="no symbol spelling for provider 'bloomberg'"):
        provider_symbol("BRK.B", "bloomberg")


def test_timeframes():
    assert Timeframe.parse("H1") is Timeframe.H1
    assert Timeframe.H4.source is Timeframe.M15 and not Timeframe.H4.is_fetched
    assert Timeframe.D1.is_fetched and Timeframe.M15.is_fetched
    with pytest.raises(UnknownTimeframeError, match="use one of m15, h1, h4, d1"):
        Timeframe.parse("m5")

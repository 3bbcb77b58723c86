"""Ticker symbols: the one rule every entry point applies before a symbol reaches the store or a
Dagster partition key (a '|' would make an unmaterializable multi-partition key), and how each
provider spells the store's symbols.

A share class has one spelling in the store, with a dot: BRK.B (the CQS style Alpaca, Polygon and
Tradier use). Yahoo's and Nasdaq's BRK-B is accepted and respelled BRK.B, so one company is never
two symbols; each provider client translates to its own spelling and back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9.\-]{0,9}")

SHARE_CLASS_SEPARATOR = "."  # the store's: BRK.B
_OTHER_SEPARATOR = "-"  # accepted on input, respelled with the store's

# How each provider writes a share class (BRK.B): the only spelling difference between them.
PROVIDER_CLASS_SEPARATORS = {"alpaca": ".", "polygon": ".", "tradier": ".", "yahoo": "-", "flatfiles": "."}


class InvalidSymbolError(ValueError):
    """A string that is not an acceptable ticker symbol."""


def normalize_symbol(raw: object) -> str:
    """Upper-case and check a ticker: 1-10 characters from A-Z, digits, '.' and '-', starting with
    a letter or digit; a share class written with '-' is respelled with '.' (BRK-B is BRK.B).
    Anything else is refused with the reason, non-ASCII letters before they are upper-cased (so 'ß'
    is refused, not stored as 'SS')."""
    if not isinstance(raw, str):
        raise InvalidSymbolError(f"symbol {raw!r} is not a string")
    given = raw.strip()
    foreign = sorted({ch for ch in given if not ch.isascii()})
    if foreign:
        # Checked before upper-casing: 'ß'.upper() is 'SS', a different ticker, without a word.
        raise InvalidSymbolError(
            f"symbol {raw!r} is not a valid ticker (it contains {', '.join(repr(c) for c in foreign)}, "
            "not ASCII): use A-Z, digits, '.' or '-'"
        )
    symbol = given.upper()
    if not symbol:
        raise InvalidSymbolError("symbol is empty: give a ticker such as AAPL")
    if len(symbol) > 10:
        raise InvalidSymbolError(
            f"symbol {raw!r} is not a valid ticker: it has {len(symbol)} characters, at most 10"
        )
    if not _SYMBOL.fullmatch(symbol):
        bad = sorted({ch for ch in symbol if not (ch.isascii() and (ch.isalnum() or ch in ".-"))})
        why = (
            f"it contains {', '.join(repr(c) for c in bad)}"
            if bad
            else "it must start with a letter or digit"
        )
        raise InvalidSymbolError(
            f"symbol {raw!r} is not a valid ticker ({why}): use A-Z, digits, '.' or '-'"
        )
    return symbol.replace(_OTHER_SEPARATOR, SHARE_CLASS_SEPARATOR)


def normalize_symbols(raws: Iterable[object]) -> list[str]:
    """Normalise many symbols, keeping first-seen order and dropping repeats (BRK-B and BRK.B are
    one). Every invalid symbol is reported at once, so a long list does not fail one typo at a time."""
    seen: dict[str, None] = {}
    errors: list[str] = []
    for raw in raws:
        try:
            seen.setdefault(normalize_symbol(raw), None)
        except InvalidSymbolError as exc:
            errors.append(str(exc))
    if errors:
        raise InvalidSymbolError("; ".join(errors))
    return list(seen)


def respelled_symbols(raws: Iterable[object]) -> list[tuple[str, str]]:
    """(as given, as stored) for each valid symbol stored in another spelling than given, beyond
    case: what an entry point should tell the user (`respelling_notice`). Invalid symbols are left
    to `normalize_symbols` to report."""
    pairs: list[tuple[str, str]] = []
    for raw in raws:
        try:
            stored = normalize_symbol(raw)
        except InvalidSymbolError:
            continue
        given = str(raw).strip()
        if given.upper() != stored and (given, stored) not in pairs:
            pairs.append((given, stored))
    return pairs


def respelling_notice(given: str, stored: str) -> str:
    return f"{given} is stored as {stored} (share classes are written with {SHARE_CLASS_SEPARATOR!r})"


def provider_symbol(symbol: str, provider: str) -> str:
    """The store's symbol as `provider` spells it: BRK.B is BRK-B at Yahoo."""
    return symbol.replace(SHARE_CLASS_SEPARATOR, _separator(provider))


def store_symbol(symbol: str, provider: str) -> str:
    """A symbol as `provider` spelled it, in the store's spelling: Yahoo's BRK-B is BRK.B."""
    return symbol.replace(_separator(provider), SHARE_CLASS_SEPARATOR)


def _separator(provider: str) -> str:
    try:
        return PROVIDER_CLASS_SEPARATORS[provider]
    except KeyError:
        raise ValueError(
            f"no symbol spelling for provider {provider!r}: add it to PROVIDER_CLASS_SEPARATORS"
        ) from None

"""Ticker symbols: the one rule every entry point applies before a symbol reaches the store or a
Dagster partition key (a '|' would make an unmaterializable multi-partition key)."""

from __future__ import annotations

import re
from collections.abc import Iterable

_SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9.\-]{0,9}")


class InvalidSymbolError(ValueError):
    """A string that is not an acceptable ticker symbol."""


def normalize_symbol(raw: object) -> str:
    """Upper-case and check a ticker: 1-10 characters from A-Z, digits, '.' and '-', starting with
    a letter or digit. Anything else is refused with the reason."""
    if not isinstance(raw, str):
        raise InvalidSymbolError(f"symbol {raw!r} is not a string")
    symbol = raw.strip().upper()
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
    return symbol


def normalize_symbols(raws: Iterable[object]) -> list[str]:
    """Normalise many symbols, keeping first-seen order and dropping repeats. Every invalid
    symbol is reported at once, so a long list does not fail one typo at a time."""
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

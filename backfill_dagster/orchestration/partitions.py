"""Partitions: trading session x symbol.

- date: exactly the XNYS sessions from the history start, today included (`end_offset=1`).
  Weekends and holidays are excluded by cron and by date, so they produce no partition. On a
  non-session day Dagster's end_offset makes the *next* session the last key (Dagster issue
  #33551); the assets refuse a session that has not opened, and sensors/schedules never ask for it.
- symbol: dynamic, synced from the watchlist table. Keys keep insertion order, so a key range is
  a box over that order.
Keys look like ``2026-01-05|AAPL`` (dimensions sorted by name: date, then symbol).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import dagster as dg
from dagster._core.definitions.partitions.context import partition_loading_context

from backfill_dagster.domain.calendar import NEW_YORK, SessionCalendar, as_date, consecutive_runs
from backfill_dagster.domain.ledger import Partition
from backfill_dagster.domain.symbols import InvalidSymbolError, normalize_symbol
from backfill_dagster.orchestration.tags import RANGE_END_TAG, RANGE_START_TAG

SYMBOLS_PARTITIONS_NAME = "symbols"
SYMBOL_PARTITIONS = dg.DynamicPartitionsDefinition(name=SYMBOLS_PARTITIONS_NAME)
WEEKEND_EXCLUSIONS = ("0 0 * * 6", "0 0 * * 0")


class PartitionKeyError(ValueError):
    """A partition key that does not name a session and a symbol."""


def session_partitions(history_start: date, calendar: SessionCalendar) -> dg.DailyPartitionsDefinition:
    """One partition per XNYS session from history_start to today."""
    holidays = calendar.holidays(history_start, calendar.last_day)
    return dg.DailyPartitionsDefinition(
        start_date=history_start.isoformat(),
        timezone=str(NEW_YORK),
        end_offset=1,
        exclusions=[*WEEKEND_EXCLUSIONS, *(datetime(d.year, d.month, d.day) for d in holidays)],
    )


class UnknownPartitionKeyError(dg.DagsterInvalidSubsetError):
    """A partition key naming a day that is no session partition or a symbol not on the watchlist.

    Not a DagsterUnknownPartitionError on purpose: `dagster asset materialize --partition-range`
    turns that one into an error naming the range's *start* key whichever key is missing; this one
    reaches the user as it is, naming the key and what about it does not exist."""


class SessionSymbolPartitions(dg.MultiPartitionsDefinition):
    """Session x symbol partitions whose validation says which part of a key does not exist.

    Everything else is Dagster's MultiPartitionsDefinition (the UI and the instance see one: its
    snapshot is a plain multi-partitions snapshot, and it compares equal to one)."""

    def validate_partition_key(self, partition_key, context=None) -> None:
        try:
            super().validate_partition_key(partition_key, context)
        except dg.DagsterUnknownPartitionError as exc:
            raise UnknownPartitionKeyError(self.why_missing(partition_key, context)) from exc

    def why_missing(self, partition_key, context=None) -> str:
        """What about `partition_key` ('2026-11-20|MSFT') is not a partition now."""
        if isinstance(partition_key, dg.MultiPartitionKey):
            day, symbol = partition_key.keys_by_dimension["date"], partition_key.keys_by_dimension["symbol"]
        else:
            day, _, symbol = str(partition_key).partition("|")
        reasons = []
        with partition_loading_context(new_ctx=context):
            if not self.get_partitions_def_for_dimension("date").has_partition_key(day):
                reasons.append(f"{day!r} is not a session partition (a weekend, an NYSE holiday, before "
                               "BACKFILL_HISTORY_START or after the next session)")
            if not symbol or not self.get_partitions_def_for_dimension("symbol").has_partition_key(symbol):
                reasons.append(f"{symbol!r} is not a symbol partition: it is not an active watchlist symbol "
                               f"(backfill-dagster watchlist list; add it with backfill-dagster watchlist add {symbol})")
        return f"partition key {str(partition_key)!r} does not exist: " + ("; ".join(reasons) or "not a partition")


def bar_partitions(history_start: date, calendar: SessionCalendar) -> dg.MultiPartitionsDefinition:
    return SessionSymbolPartitions(
        {"date": session_partitions(history_start, calendar), "symbol": SYMBOL_PARTITIONS}
    )


def partition_key(symbol: str, session: date) -> str:
    return f"{session.isoformat()}|{symbol}"


def multi_partition_key(symbol: str, session: date) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"date": session.isoformat(), "symbol": symbol})


def parse_partition_key(key: str | dg.MultiPartitionKey, calendar: SessionCalendar) -> Partition:
    """(symbol, session) from a key such as '2026-01-05|AAPL', checked against the calendar."""
    if isinstance(key, dg.MultiPartitionKey):
        raw_date, raw_symbol = key.keys_by_dimension["date"], key.keys_by_dimension["symbol"]
    else:
        parts = str(key).split("|")
        if len(parts) != 2:
            raise PartitionKeyError(
                f"partition key {key!r} is not '<session date>|<SYMBOL>', e.g. '2026-01-05|AAPL'"
            )
        raw_date, raw_symbol = parts
    try:
        symbol = normalize_symbol(raw_symbol)
    except InvalidSymbolError as exc:
        raise PartitionKeyError(f"partition key {key!r}: {exc}") from None
    try:
        session = calendar.require_session(as_date(raw_date))
    except ValueError as exc:
        raise PartitionKeyError(f"partition key {key!r}: {exc}") from None
    if symbol != raw_symbol:
        raise PartitionKeyError(f"partition key {key!r}: symbols are upper-case, share classes with '.' ({symbol!r})")
    return symbol, session


def range_tags(first: Partition, last: Partition) -> dict[str, str]:
    """Run tags for a box of partitions: sessions first..last x symbols first..last in the
    dynamic partitions' insertion order (a 'reversed' symbol range selects nothing)."""
    return {
        RANGE_START_TAG: partition_key(*first),
        RANGE_END_TAG: partition_key(*last),
    }


@dataclass(frozen=True)
class PartitionSymbols:
    """The active symbols that are symbol partitions (watchlist order), and the partitions' order."""

    symbols: list[str]
    order: list[str]
    waiting: int  # active symbols whose partition watchlist_sync has not added yet


def active_partition_symbols(
    instance: dg.DagsterInstance, active: Sequence[str], nothing_to: str
) -> PartitionSymbols | dg.SkipReason:
    """The active symbols a schedule or sensor may request runs for: those that are symbol
    partitions already; a SkipReason saying why when there are none (`nothing_to`: "fetch")."""
    if not active:
        return dg.SkipReason(f"the watchlist has no active symbols: nothing to {nothing_to}")
    order = list(instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    registered = set(order)
    symbols = [s for s in active if s in registered]
    if not symbols:
        return dg.SkipReason(
            f"none of the {len(active)} active symbol(s) is a symbol partition yet: the watchlist_sync "
            "sensor adds them"
        )
    return PartitionSymbols(symbols, order, len(active) - len(symbols))


def symbol_partition_changes(
    current: Sequence[str], add: Sequence[str] = (), remove: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """The symbol partitions to add (of `add`, those not partitions yet) and to delete (of `remove`,
    those that are), in their given order."""
    existing = set(current)
    new = list(dict.fromkeys(s for s in add if s not in existing))
    gone = [s for s in dict.fromkeys(remove) if s in existing]
    return new, gone


@dataclass(frozen=True)
class WatchlistSync:
    """What one watchlist_sync tick does to make the symbol partitions and the watchlist agree."""

    adopt: list[str]  # partitions added outside the watchlist (the UI's "Add partition"): put on it
    refused: dict[str, str]  # such partitions that are no valid symbol: deleted, with why
    add: list[str]  # active symbols without a partition
    delete: list[str]  # partitions of symbols no longer active
    synced: list[str]  # the partitions after this tick: the next tick's `synced`


def plan_watchlist_sync(active: Sequence[str], current: Sequence[str], synced: Sequence[str] | None) -> WatchlistSync:
    """Partitions the last tick left (`synced`; None before the first tick) whose symbol is no longer
    active were removed from the watchlist: their partitions go. Partitions that appeared since and
    are not active symbols were added outside it — Dagster's "Add partition" in the UI — and are put
    on the watchlist, as `backfill-dagster watchlist add` would (a key that is no valid stored
    spelling of a symbol is deleted instead, saying why). Active symbols without one get one."""
    wanted = set(active)
    before = set(current) if synced is None else set(synced)
    adopt, refused = [], {}
    for key in current:
        if key in wanted or key in before:
            continue
        try:
            spelled = normalize_symbol(key)
        except InvalidSymbolError as exc:
            refused[key] = str(exc)
            continue
        if spelled != key:
            refused[key] = f"symbol partitions use the stored spelling {spelled!r}"
        else:
            adopt.append(key)
    kept = wanted | set(adopt)
    add, delete = symbol_partition_changes(current, add=active, remove=[s for s in current if s not in kept])
    gone = set(delete)
    return WatchlistSync(adopt, refused, add, delete, [*(s for s in current if s not in gone), *add])


def sync_symbol_partitions(instance: dg.DagsterInstance, add: Sequence[str] = (), remove: Sequence[str] = ()) -> None:
    """Add and delete symbol partitions now (the CLI; the sensor requests the same changes)."""
    new, gone = symbol_partition_changes(instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME), add, remove)
    if new:
        instance.add_dynamic_partitions(SYMBOLS_PARTITIONS_NAME, new)
    for symbol in gone:
        instance.delete_dynamic_partition(SYMBOLS_PARTITIONS_NAME, symbol)


def symbol_blocks(symbols: Sequence[str], partition_order: Sequence[str]) -> list[list[str]]:
    """Group symbols into blocks that are contiguous in the partition order, so each block is one
    range run. Symbols missing from the partitions are an error (register them first)."""
    position = {s: i for i, s in enumerate(partition_order)}
    missing = [s for s in symbols if s not in position]
    if missing:
        raise PartitionKeyError(
            f"symbol(s) {', '.join(missing)} are not symbol partitions yet: add them to the "
            "watchlist (backfill-dagster watchlist add ...)"
        )
    return consecutive_runs(set(symbols), position.__getitem__)


def symbol_key_error(key: str) -> str | None:
    """Why a symbol partition key is not a symbol in the store's spelling, or None if it is one."""
    try:
        symbol = normalize_symbol(key)
    except InvalidSymbolError as exc:
        return str(exc)
    if symbol != key:
        return f"symbol partition {key!r} is not in the store's spelling {symbol!r} (upper-case, share classes with '.')"
    return None


def require_symbols(keys: Sequence[str]) -> None:
    """Refuse a run whose symbol partitions include keys that are not symbols (added by hand in
    the UI's "Add a partition" or through the API: 'aapl', 'A B', 'BRK-B'), naming each one,
    before anything is fetched or written."""
    errors = [error for error in map(symbol_key_error, keys) if error]
    if errors:
        raise PartitionKeyError(
            f"{len(errors)} symbol partition(s) of this run are not symbols, so the run refuses them: "
            + "; ".join(errors)
            + f". Delete them from the {SYMBOLS_PARTITIONS_NAME!r} partitions (Dagster UI, or "
            "instance.delete_dynamic_partition) and add symbols with backfill-dagster watchlist add"
        )


def run_partitions(
    context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, calendar: SessionCalendar
) -> list[tuple[str, date]]:
    """The run's (symbol, session) partitions, as `context.partition_keys` names them, in its order.

    The same box (sessions start..end x symbols start..end in the dynamic partitions' order, dates
    outermost) without Dagster's one MultiPartitionKey object per partition and the parse back:
    ~45 us a partition, twice per run. Raises Dagster's error for a run without partitions, and
    PartitionKeyError naming every symbol partition of the box that is not a symbol.
    """
    key_range = context.op_execution_context.partition_key_range
    (first_symbol, first_session), (last_symbol, last_session) = (
        parse_partition_key(key, calendar) for key in (key_range.start, key_range.end)
    )
    if (first_symbol, first_session) == (last_symbol, last_session):
        return [(first_symbol, first_session)]
    order = list(context.instance.get_dynamic_partitions(SYMBOLS_PARTITIONS_NAME))
    if first_symbol not in order or last_symbol not in order:
        missing = first_symbol if first_symbol not in order else last_symbol
        raise dg.DagsterUnknownPartitionError(f"symbol {missing!r} is not a symbol partition")
    symbols = order[order.index(first_symbol) : order.index(last_symbol) + 1]
    require_symbols(symbols)
    return [(symbol, session) for session in calendar.sessions(first_session, last_session) for symbol in symbols]

"""The corporate-actions tables: providers' reports, the deduplicated actions, the repair states, and
which stored partitions a split leaves on the old share basis (a query on the coverage ledger).

Writing a provider's answer is one transaction: the provider's check of each symbol, its reports,
and the actions they name (created on first sight, their figures taken from the preferred
provider's report). The rules themselves are in backfill_dagster/domain/corporate_actions.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from backfill_dagster.domain.calendar import NEW_YORK
from backfill_dagster.domain.corporate_actions import (
    OPEN_REPAIRS,
    ActionKind,
    ActionRecord,
    Key,
    RepairState,
    basis_since,
    key_of,
    preferred,
)
from backfill_dagster.domain.split_repair import RecordedSplit
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.store.database import result_frame
from backfill_dagster.store.schema import (
    bar_coverage as cov,
    corporate_action_checks as checks,
    corporate_action_sources as sources,
    corporate_actions as actions,
)


@dataclass
class Recorded:
    """What writing one provider's answer changed."""

    reports: int = 0
    new: list[Key] = field(default_factory=list)  # actions seen for the first time
    first_checks: list[str] = field(default_factory=list)  # symbols this provider was never asked about


class ActionStore:
    """Corporate actions on PostgreSQL or SQLite."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def _insert(self, table: sa.Table):
        return (postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert)(table)

    # ------------------------------------------------------------------ writes
    def record(
        self,
        provider: str,
        symbols: Sequence[str],
        records: Sequence[ActionRecord],
        *,
        checked_from: date,
        checked_through: date,
        now: datetime,
        preference: Sequence[str],
    ) -> Recorded:
        """Keep `provider`'s answer for `symbols` over ex-dates checked_from..checked_through:
        its reports, its check of each symbol, and the actions (new ones get their first sight and,
        for splits, the instant from which stored bars are on the new basis). A split in the first
        answers about a symbol — no provider was asked about it before `now` — is history."""
        unasked = sorted({r.symbol for r in records} - set(symbols))
        if unasked:
            raise ValueError(f"{provider} reported actions of {', '.join(unasked)}, which it was not asked about")
        today = pd.Timestamp(now).tz_convert(NEW_YORK).date()
        out = Recorded(reports=len(records))
        with self.engine.begin() as conn:
            asked = conn.execute(sa.select(checks.c.symbol, checks.c.provider, checks.c.first_checked_at).where(
                checks.c.symbol.in_(list(symbols)))).all()
            # Asked before this refresh, by any provider: a split first reported now is news.
            known = {symbol for symbol, _, first in asked if first < now}
            out.first_checks = [s for s in symbols if (s, provider) not in {(a, p) for a, p, _ in asked}]
            if symbols:
                insert = self._insert(checks)
                conn.execute(
                    insert.on_conflict_do_update(
                        index_elements=[checks.c.symbol, checks.c.provider],
                        set_={c: insert.excluded[c] for c in ("last_checked_at", "checked_from", "checked_through")},
                    ),
                    [{"symbol": s, "provider": provider, "first_checked_at": now, "last_checked_at": now,
                      "checked_from": checked_from, "checked_through": checked_through} for s in dict.fromkeys(symbols)],
                )
            if not records:
                return out
            unique = {key_of(r): r for r in records}  # a provider listing one action twice: once
            insert = self._insert(sources)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[sources.c.symbol, sources.c.kind, sources.c.ex_date, sources.c.provider],
                    set_={c: insert.excluded[c] for c in ("provider_id", "split_from", "split_to", "cash_amount", "last_seen")},
                ),
                [_source_row(r, now) for r in unique.values()],
            )
            existing = self._existing(conn, list(unique))
            for key, record in unique.items():
                if key in existing:
                    continue
                historical = record.symbol not in known and record.ex_date <= today
                row = {
                    "symbol": record.symbol, "kind": record.kind.value, "ex_date": record.ex_date,
                    "split_from": record.split_from, "split_to": record.split_to, "cash_amount": record.cash_amount,
                    "source": record.provider, "first_seen": now, "updated_at": now, "repair_attempts": 0,
                    "basis_since": None, "repair_state": None,
                }
                if record.kind is ActionKind.SPLIT:
                    row["basis_since"] = basis_since(record.ex_date, now, historical=historical)
                    row["repair_state"] = RepairState.PENDING.value
                inserted = conn.execute(self._insert(actions).on_conflict_do_nothing(), row)
                if inserted.rowcount:
                    out.new.append(key)
            self._restate_figures(conn, list(unique), preference, now)
        return out

    def _existing(self, conn: Connection, keys: Sequence[Key]) -> set[Key]:
        found = set()
        for symbol, kind, ex_date in conn.execute(
            sa.select(actions.c.symbol, actions.c.kind, actions.c.ex_date).where(actions.c.symbol.in_({k[0] for k in keys}))
        ):
            found.add((symbol, ActionKind(kind), _day(ex_date)))
        return found & set(keys)

    def _restate_figures(self, conn: Connection, keys: Sequence[Key], preference: Sequence[str], now: datetime) -> None:
        """Each action's figures are its preferred provider's report."""
        reports = self._reports(conn, sorted({k[0] for k in keys}))
        for key in keys:
            best = preferred(reports[key], preference)
            conn.execute(
                sa.update(actions)
                .where(actions.c.symbol == key[0], actions.c.kind == key[1].value, actions.c.ex_date == key[2],
                       sa.or_(actions.c.source != best.provider,
                              sa.func.coalesce(actions.c.split_from, 0) != (best.split_from or 0),
                              sa.func.coalesce(actions.c.split_to, 0) != (best.split_to or 0),
                              sa.func.coalesce(actions.c.cash_amount, 0.0) != (best.cash_amount or 0.0)))
                .values(source=best.provider, split_from=best.split_from, split_to=best.split_to,
                        cash_amount=best.cash_amount, updated_at=now)
            )

    def set_repair(
        self,
        symbol: str,
        ex_date: date,
        state: RepairState,
        *,
        now: datetime,
        note: str | None = None,
        backfill_id: str | None = None,
        attempts: int | None = None,
    ) -> None:
        """Move a split's repair on (the backfill id and attempts are kept unless given)."""
        values: dict = {"repair_state": state.value, "repair_note": note, "updated_at": now}
        if backfill_id is not None:
            values["repair_backfill_id"] = backfill_id
        if attempts is not None:
            values["repair_attempts"] = attempts
        values["repaired_at"] = now if state is RepairState.REPAIRED else None
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(actions)
                .where(actions.c.symbol == symbol, actions.c.kind == ActionKind.SPLIT.value, actions.c.ex_date == ex_date)
                .values(**values)
            )

    # ------------------------------------------------------------------ reads
    def actions(self, symbols: Sequence[str] | None = None) -> pd.DataFrame:
        """The deduplicated actions, by symbol and ex-date."""
        query = sa.select(actions).order_by(actions.c.symbol, actions.c.ex_date, actions.c.kind)
        if symbols is not None:
            query = query.where(actions.c.symbol.in_(list(symbols)))
        return self._frame(query)

    def sources(self, symbols: Sequence[str] | None = None) -> pd.DataFrame:
        """Every provider's report, by symbol, ex-date and provider."""
        query = sa.select(sources).order_by(sources.c.symbol, sources.c.ex_date, sources.c.kind, sources.c.provider)
        if symbols is not None:
            query = query.where(sources.c.symbol.in_(list(symbols)))
        return self._frame(query)

    def checks(self, symbols: Sequence[str] | None = None) -> pd.DataFrame:
        query = sa.select(checks).order_by(checks.c.symbol, checks.c.provider)
        if symbols is not None:
            query = query.where(checks.c.symbol.in_(list(symbols)))
        return self._frame(query)

    def reports(self, symbols: Sequence[str] | None = None) -> list[ActionRecord]:
        with self.engine.connect() as conn:
            found = self._reports(conn, symbols)
        return [r for listed in found.values() for r in listed]

    def _reports(self, conn: Connection, symbols: Sequence[str] | None) -> dict[Key, list[ActionRecord]]:
        query = sa.select(sources)
        if symbols is not None:
            query = query.where(sources.c.symbol.in_(list(symbols)))
        out: dict[Key, list[ActionRecord]] = defaultdict(list)
        for r in conn.execute(query):
            record = ActionRecord(r.symbol, ActionKind(r.kind), _day(r.ex_date), r.provider, r.provider_id,
                                  r.split_from, r.split_to, r.cash_amount)
            out[key_of(record)].append(record)
        return out

    def splits(self, states: Sequence[RepairState] = OPEN_REPAIRS, symbols: Sequence[str] | None = None) -> list[RecordedSplit]:
        """Recorded splits whose repair is in one of `states` (open ones by default), oldest first."""
        query = (
            sa.select(actions)
            .where(actions.c.kind == ActionKind.SPLIT.value, actions.c.repair_state.in_([s.value for s in states]))
            .order_by(actions.c.first_seen, actions.c.symbol, actions.c.ex_date)
        )
        if symbols is not None:
            query = query.where(actions.c.symbol.in_(list(symbols)))
        with self.engine.connect() as conn:
            return [
                RecordedSplit(
                    symbol=r.symbol, ex_date=_day(r.ex_date), split_from=int(r.split_from), split_to=int(r.split_to),
                    source=r.source, first_seen=r.first_seen, basis_since=r.basis_since,
                    state=RepairState(r.repair_state), backfill_id=r.repair_backfill_id,
                    attempts=int(r.repair_attempts), note=r.repair_note,
                )
                for r in conn.execute(query)
            ]

    def recorded_splits(self, symbols: Sequence[str]) -> set[tuple[str, date]]:
        """(symbol, ex-date) of every split any provider reported for these symbols."""
        query = sa.select(sources.c.symbol, sources.c.ex_date).where(
            sources.c.kind == ActionKind.SPLIT.value, sources.c.symbol.in_(list(symbols)))
        with self.engine.connect() as conn:
            return {(s, _day(d)) for s, d in conn.execute(query)}

    def stale_partitions(self, split: RecordedSplit) -> dict[Timeframe, list[date]]:
        """Per timeframe, the sessions before the split's ex-date whose stored bars were fetched
        before providers re-based them (h1/h4: derived from such an m15 fetch)."""
        built_from = sa.func.coalesce(cov.c.source_fetched_at, cov.c.fetched_at)
        query = (
            sa.select(cov.c.timeframe, cov.c.session)
            .where(cov.c.symbol == split.symbol, cov.c.session < split.ex_date, cov.c.bars > 0,
                   built_from < split.basis_since)
            .order_by(cov.c.timeframe, cov.c.session)
        )
        out: dict[Timeframe, list[date]] = {}
        with self.engine.connect() as conn:
            for timeframe, session in conn.execute(query):
                out.setdefault(Timeframe(timeframe), []).append(_day(session))
        return out

    def history(self, split: RecordedSplit) -> dict[Timeframe, list[tuple[date, datetime]]]:
        """Per timeframe, the stored partitions of the split's symbol before its ex-date holding bars,
        with when those bars were fetched (h1/h4: the m15 fetch they were derived from)."""
        built_from = sa.func.coalesce(cov.c.source_fetched_at, cov.c.fetched_at)
        query = (
            sa.select(cov.c.timeframe, cov.c.session, built_from)
            .where(cov.c.symbol == split.symbol, cov.c.session < split.ex_date, cov.c.bars > 0)
            .order_by(cov.c.timeframe, cov.c.session)
        )
        out: dict[Timeframe, list[tuple[date, datetime]]] = {}
        with self.engine.connect() as conn:
            for timeframe, session, at in conn.execute(query):
                out.setdefault(Timeframe(timeframe), []).append((_day(session), _utc(at)))
        return out

    def set_basis_since(self, symbol: str, ex_date: date, basis_since: datetime, *, now: datetime) -> None:
        """Move the instant from which stored bars count as on the split's new basis (when the
        stored bars refute the one assumed: domain/split_basis.py)."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(actions)
                .where(actions.c.symbol == symbol, actions.c.kind == ActionKind.SPLIT.value, actions.c.ex_date == ex_date)
                .values(basis_since=basis_since, updated_at=now)
            )

    def history_before(self, symbol: str, ex_date: date) -> int:
        """Ledger rows of the symbol holding bars before the ex-date (any basis)."""
        query = sa.select(sa.func.count()).select_from(cov).where(
            cov.c.symbol == symbol, cov.c.session < ex_date, cov.c.bars > 0)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def _frame(self, query) -> pd.DataFrame:
        with self.engine.connect() as conn:
            result = conn.execute(query)
            frame = result_frame(result)
        if "ex_date" in frame.columns:
            frame["ex_date"] = [_day(d) for d in frame["ex_date"]]
        return frame


def _source_row(record: ActionRecord, now: datetime) -> dict:
    return {
        "symbol": record.symbol, "kind": record.kind.value, "ex_date": record.ex_date, "provider": record.provider,
        "provider_id": record.provider_id, "split_from": record.split_from, "split_to": record.split_to,
        "cash_amount": record.cash_amount, "first_seen": now, "last_seen": now,
    }


def _utc(value) -> datetime:
    """A timestamp column's value, tz-aware UTC on both backends (an expression over the columns
    may come back as SQLite's naive text)."""
    stamp = pd.Timestamp(value)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")).to_pydatetime()


def _day(value) -> date:
    """A date column's value (SQLite may hand back text)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])

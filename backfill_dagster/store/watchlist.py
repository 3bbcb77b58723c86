"""The watchlist table: which symbols to keep covered. It drives the symbol partitions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from backfill_dagster.domain.symbols import normalize_symbols
from backfill_dagster.store.schema import watchlist


@dataclass(frozen=True)
class WatchlistChange:
    changed: list[str]  # added or re-activated (add), deactivated (remove)
    unchanged: list[str]


class Watchlist:
    def __init__(self, engine: Engine):
        self.engine = engine

    def add(self, symbols: Iterable[object]) -> WatchlistChange:
        """Activate symbols (validated first: nothing is written if any is invalid)."""
        wanted = normalize_symbols(symbols)
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            current = dict(
                conn.execute(
                    sa.select(watchlist.c.symbol, watchlist.c.active).where(watchlist.c.symbol.in_(wanted))
                ).all()
            )
            added = [s for s in wanted if not current.get(s, False)]
            if added:
                insert = (postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert)(watchlist)
                conn.execute(
                    insert.on_conflict_do_update(
                        index_elements=[watchlist.c.symbol],
                        set_={"active": True, "updated_at": insert.excluded.updated_at},
                    ),
                    [{"symbol": s, "active": True, "added_at": now, "updated_at": now} for s in added],
                )
        return WatchlistChange(changed=added, unchanged=[s for s in wanted if s not in added])

    def remove(self, symbols: Iterable[object]) -> WatchlistChange:
        """Deactivate symbols. Their bars stay; they just stop being partitions."""
        wanted = normalize_symbols(symbols)
        with self.engine.begin() as conn:
            active = set(
                conn.execute(
                    sa.select(watchlist.c.symbol).where(watchlist.c.symbol.in_(wanted), watchlist.c.active)
                ).scalars()
            )
            removed = [s for s in wanted if s in active]
            if removed:
                conn.execute(
                    sa.update(watchlist)
                    .where(watchlist.c.symbol.in_(removed))
                    .values(active=False, updated_at=datetime.now(UTC))
                )
        return WatchlistChange(changed=removed, unchanged=[s for s in wanted if s not in removed])

    def active(self) -> list[str]:
        """Active symbols in the order they were added (the order of the symbol partitions)."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(watchlist.c.symbol)
                    .where(watchlist.c.active)
                    .order_by(watchlist.c.added_at, watchlist.c.symbol)
                ).scalars()
            )

    def entries(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(watchlist).order_by(watchlist.c.added_at, watchlist.c.symbol))
            return [dict(r._mapping) for r in rows]

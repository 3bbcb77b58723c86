"""The store: bars, the coverage ledger, rejected bars and the watchlist (SQLAlchemy Core).

It knows nothing of providers or Dagster.
"""

from backfill_dagster.store.bars import BarStore, CoverageEntry
from backfill_dagster.store.database import (
    StoreConfigError,
    StoreUnavailableError,
    create_engine,
    dispose_engine,
    parse_database_url,
    url_without_password,
    shared_engine,
)
from backfill_dagster.store.watchlist import Watchlist, WatchlistChange

__all__ = [
    "BarStore",
    "CoverageEntry",
    "StoreConfigError",
    "StoreUnavailableError",
    "Watchlist",
    "WatchlistChange",
    "create_engine",
    "dispose_engine",
    "parse_database_url",
    "url_without_password",
    "shared_engine",
]

"""SQLAlchemy Core definitions of the tables in sql/schema.sql.

sql/schema.sql is the source of truth on PostgreSQL; these definitions let Core build portable
queries and create the same tables on SQLite. tests/store/test_schema.py reflects both and fails if
they drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

from backfill_dagster.domain.ledger import LEDGER_STATUSES

metadata = sa.MetaData()

TIMEFRAMES_SQL = "timeframe IN ('m15', 'h1', 'h4', 'd1')"


class UtcDateTime(TypeDecorator):
    """timestamptz on PostgreSQL; on SQLite an ISO string in UTC. Always aware UTC in Python, and
    naive datetimes are refused rather than guessed."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _positive(column: str) -> sa.CheckConstraint:
    # x < 'Infinity' also refuses NaN on PostgreSQL; SQLite stores NaN as NULL, refused by NOT NULL.
    return sa.CheckConstraint(f"{column} > 0 AND {column} < 'Infinity'")


watchlist = sa.Table(
    "watchlist",
    metadata,
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("added_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

ohlc_bars = sa.Table(
    "ohlc_bars",
    metadata,
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("timeframe", sa.Text, sa.CheckConstraint(TIMEFRAMES_SQL), primary_key=True),
    sa.Column("ts", UtcDateTime, primary_key=True),
    sa.Column("open", sa.Float, _positive("open"), nullable=False),
    sa.Column("high", sa.Float, _positive("high"), nullable=False),
    sa.Column("low", sa.Float, _positive("low"), nullable=False),
    sa.Column("close", sa.Float, _positive("close"), nullable=False),
    sa.Column("volume", sa.Float, sa.CheckConstraint("volume >= 0"), nullable=False),
    sa.Column("vwap", sa.Float, _positive("vwap")),
    sa.Column("trade_count", sa.BigInteger, sa.CheckConstraint("trade_count >= 0")),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("adjustment", sa.Text, sa.CheckConstraint("adjustment IN ('split', 'raw')"), nullable=False),
    sa.CheckConstraint(
        "high >= low AND high >= open AND high >= close AND low <= open AND low <= close",
        name="ohlc_bars_high_low",
    ),
)

bar_coverage = sa.Table(
    "bar_coverage",
    metadata,
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("timeframe", sa.Text, sa.CheckConstraint(TIMEFRAMES_SQL), primary_key=True),
    sa.Column("session", sa.Date, primary_key=True),
    sa.Column(
        "status",
        sa.Text,
        sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in LEDGER_STATUSES)})", name="bar_coverage_status_check"),
        nullable=False,
    ),
    sa.Column("bars", sa.Integer, nullable=False, server_default="0"),
    sa.Column("expected", sa.Integer, nullable=False, server_default="0"),
    sa.Column("provider", sa.Text),
    sa.Column("fetched_at", UtcDateTime),
    sa.Column("session_closed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="1"),
    sa.Column("error", sa.Text),
    sa.Column("run_id", sa.Text),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.Column("source_fetched_at", UtcDateTime),
    # Why the bars were last rewritten on purpose (a run's backfill/rewrite_reason tag); sticky.
    sa.Column("rewrite_reason", sa.Text),
    sa.Index(
        "bar_coverage_open_idx",
        "timeframe",
        "session",
        postgresql_where=sa.text("status <> 'complete'"),
        sqlite_where=sa.text("status <> 'complete'"),
    ),
)

rejected_bars = sa.Table(
    "rejected_bars",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("symbol", sa.Text),
    sa.Column("timeframe", sa.Text, nullable=False),
    sa.Column("session", sa.Date),
    sa.Column("ts", UtcDateTime),
    sa.Column("open", sa.Float),
    sa.Column("high", sa.Float),
    sa.Column("low", sa.Float),
    sa.Column("close", sa.Float),
    sa.Column("volume", sa.Float),
    sa.Column("vwap", sa.Float),
    sa.Column("trade_count", sa.BigInteger),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text),
    sa.Column("rejected_at", UtcDateTime, nullable=False),
    sa.Index("rejected_bars_symbol_idx", "symbol", "timeframe", "session"),
)

# Providers' shared request budgets (backfill_dagster.store.budget): one row per provider,
# locked while a request is booked, and the booked requests of the current window. Times are the
# database clock in epoch seconds, so every process on every machine uses the same clock.
# paused_until: a 429's pause (requests wait); unavailable_until: a server wait too long to sit out
# (requests fail at once, runs fall back), with the server's reason.
provider_budget = sa.Table(
    "provider_budget",
    metadata,
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("paused_until", sa.Float),
    sa.Column("unavailable_until", sa.Float),
    sa.Column("unavailable_reason", sa.Text),
)

provider_requests = sa.Table(
    "provider_requests",
    metadata,
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("sent_at", sa.Float, nullable=False),
    sa.Index("provider_requests_idx", "provider", "sent_at"),
)

BAR_STORE_COLUMNS = [c.name for c in ohlc_bars.columns]

# Corporate actions (sql/schema.sql has the why): one row per action across providers, each
# provider's report of it, and when each provider was last asked about each symbol.
ACTION_KINDS_SQL = "kind IN ('split', 'cash_dividend')"
REPAIR_STATES_SQL = "repair_state IN ('pending', 'repairing', 'repaired', 'not_needed', 'failed')"

corporate_actions = sa.Table(
    "corporate_actions",
    metadata,
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, sa.CheckConstraint(ACTION_KINDS_SQL), primary_key=True),
    sa.Column("ex_date", sa.Date, primary_key=True),
    sa.Column("split_from", sa.BigInteger, sa.CheckConstraint("split_from > 0")),
    sa.Column("split_to", sa.BigInteger, sa.CheckConstraint("split_to > 0")),
    sa.Column("cash_amount", sa.Float, sa.CheckConstraint("cash_amount > 0")),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("first_seen", UtcDateTime, nullable=False),
    sa.Column("basis_since", UtcDateTime),
    sa.Column("repair_state", sa.Text, sa.CheckConstraint(REPAIR_STATES_SQL)),
    sa.Column("repair_backfill_id", sa.Text),
    sa.Column("repair_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("repair_note", sa.Text),
    sa.Column("repaired_at", UtcDateTime),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint(
        "(kind = 'split' AND split_from IS NOT NULL AND split_to IS NOT NULL AND repair_state IS NOT NULL) "
        "OR (kind = 'cash_dividend' AND cash_amount IS NOT NULL)",
        name="corporate_actions_figures",
    ),
)

corporate_action_sources = sa.Table(
    "corporate_action_sources",
    metadata,
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, sa.CheckConstraint(ACTION_KINDS_SQL), primary_key=True),
    sa.Column("ex_date", sa.Date, primary_key=True),
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("provider_id", sa.Text),
    sa.Column("split_from", sa.BigInteger, sa.CheckConstraint("split_from > 0")),
    sa.Column("split_to", sa.BigInteger, sa.CheckConstraint("split_to > 0")),
    sa.Column("cash_amount", sa.Float, sa.CheckConstraint("cash_amount > 0")),
    sa.Column("first_seen", UtcDateTime, nullable=False),
    sa.Column("last_seen", UtcDateTime, nullable=False),
)

corporate_action_checks = sa.Table(
    "corporate_action_checks",
    metadata,
    sa.Column("symbol", sa.Text, primary_key=True),
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("first_checked_at", UtcDateTime, nullable=False),
    sa.Column("last_checked_at", UtcDateTime, nullable=False),
    sa.Column("checked_from", sa.Date, nullable=False),
    sa.Column("checked_through", sa.Date, nullable=False),
)

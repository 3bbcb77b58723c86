"""Reading the coverage ledger: per symbol x timeframe summaries and per-session detail.

These read the small ledger table, never the bars, so they stay fast at any history length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from backfill_dagster.store.database import result_frame
from backfill_dagster.store.schema import bar_coverage as cov


def _count(status: str):
    return sa.func.sum(sa.case((cov.c.status == status, 1), else_=0))


def coverage_summary(
    engine: Engine,
    *,
    symbols: Sequence[str] | None = None,
    timeframe: str | None = None,
    horizon_starts: Mapping[str, date] | None = None,
) -> pd.DataFrame:
    """One row per symbol x timeframe: complete/partial/empty/failed sessions, bars vs expected, the
    first session in the ledger (`since`), the first and last session holding bars, and the last
    successful fetch; with `horizon_starts` (timeframe -> first day of the gap sensor's horizon),
    also the complete sessions inside the horizon (`complete_in_horizon`)."""
    with_bars = sa.case((cov.c.bars > 0, cov.c.session), else_=None)
    in_horizon = sa.or_(*(sa.and_(cov.c.timeframe == tf, cov.c.session >= start)
                          for tf, start in (horizon_starts or {}).items()), sa.false())
    query = (
        sa.select(
            cov.c.symbol,
            cov.c.timeframe,
            _count("complete").label("complete"),
            sa.func.sum(sa.case((sa.and_(cov.c.status == "complete", in_horizon), 1), else_=0))
            .label("complete_in_horizon"),
            _count("partial").label("partial"),
            _count("empty").label("empty"),
            _count("failed").label("failed"),
            sa.func.sum(cov.c.bars).label("bars"),
            sa.func.sum(cov.c.expected).label("expected"),
            sa.func.min(cov.c.session).label("since"),
            sa.func.min(with_bars).label("first_session"),
            sa.func.max(with_bars).label("last_session"),
            sa.func.max(cov.c.fetched_at).label("last_fetch"),
        )
        .group_by(cov.c.symbol, cov.c.timeframe)
        .order_by(cov.c.symbol, cov.c.timeframe)
    )
    if symbols is not None:
        query = query.where(cov.c.symbol.in_(list(symbols)))
    if timeframe is not None:
        query = query.where(cov.c.timeframe == timeframe)
    with engine.connect() as conn:
        result = conn.execute(query)
        frame = result_frame(result)
    for column in ("complete", "complete_in_horizon", "partial", "empty", "failed", "bars", "expected"):
        frame[column] = frame[column].fillna(0).astype(int)
    frame["last_fetch"] = pd.to_datetime(frame["last_fetch"], utc=True)
    # SQLite returns min/max of a date column as text; make both dialects agree.
    for column in ("since", "first_session", "last_session"):
        frame[column] = [pd.Timestamp(v).date() if v is not None and not pd.isna(v) else None for v in frame[column]]
    return frame


def coverage_detail(engine: Engine, symbol: str, timeframe: str | None = None) -> pd.DataFrame:
    """The ledger rows of one symbol, per session."""
    query = (
        sa.select(
            cov.c.session, cov.c.timeframe, cov.c.status, cov.c.bars, cov.c.expected,
            cov.c.provider, cov.c.fetched_at, cov.c.attempts, cov.c.error,
        )
        .where(cov.c.symbol == symbol)
        .order_by(cov.c.timeframe, cov.c.session)
    )
    if timeframe is not None:
        query = query.where(cov.c.timeframe == timeframe)
    with engine.connect() as conn:
        result = conn.execute(query)
        return result_frame(result)


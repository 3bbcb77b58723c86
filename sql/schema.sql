-- backfill_dagster: the PostgreSQL schema (source of truth).
--
-- Applied idempotently by the project (backfill_dagster.store.database.apply_schema) under an
-- advisory lock, so concurrent run workers starting at once do not race. Every statement here must
-- stay re-runnable. SQLite (the embedded default) gets the same tables from the SQLAlchemy
-- definitions in backfill_dagster/store/schema.py; a test compares the two.

-- Symbols to keep covered. Inactive symbols keep their bars but get no new partitions.
CREATE TABLE IF NOT EXISTS watchlist (
    symbol      text        PRIMARY KEY CHECK (symbol ~ '^[A-Z0-9][A-Z0-9.-]{0,9}$'),
    active      boolean     NOT NULL DEFAULT true,
    added_at    timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per bar. ts is the bar start in UTC; the bar covers [ts, ts + timeframe). A d1 bar is
-- labelled 00:00 America/New_York of its session. Constraints repeat the validation rules so that
-- not even a bug can store an invalid bar (x < 'Infinity' also refuses NaN, which PostgreSQL
-- sorts above every number).
-- provider (here and in bar_coverage): where the bars came from, as the provider client's
-- provenance: its name, with the feed where it has several (`alpaca:sip`, `polygon`, `demo:synthetic`), or `resample:` and the
-- m15 bars' provenance for h1/h4. The column keeps its name: operators' queries use it.
CREATE TABLE IF NOT EXISTS ohlc_bars (
    symbol       text             NOT NULL,
    timeframe    text             NOT NULL CHECK (timeframe IN ('m15', 'h1', 'h4', 'd1')),
    ts           timestamptz      NOT NULL,
    open         double precision NOT NULL CHECK (open > 0 AND open < 'Infinity'),
    high         double precision NOT NULL CHECK (high > 0 AND high < 'Infinity'),
    low          double precision NOT NULL CHECK (low > 0 AND low < 'Infinity'),
    close        double precision NOT NULL CHECK (close > 0 AND close < 'Infinity'),
    volume       double precision NOT NULL CHECK (volume >= 0 AND volume < 'Infinity'),
    vwap         double precision CHECK (vwap > 0 AND vwap < 'Infinity'),
    trade_count  bigint           CHECK (trade_count >= 0),
    provider     text             NOT NULL,
    adjustment   text             NOT NULL CHECK (adjustment IN ('split', 'raw')),
    PRIMARY KEY (symbol, timeframe, ts),
    CONSTRAINT ohlc_bars_high_low CHECK (high >= low AND high >= open AND high >= close
                                         AND low <= open AND low <= close)
);

-- The coverage ledger: one row per symbol x timeframe x session ever attempted, written in the same
-- transaction as the bars. The gap sensor and the coverage report read this small table, never the
-- bars. status (backfill_dagster/domain/ledger.py): complete = fetched after the session closed (as of the
-- provider's data cut-off), with bars; partial = fetched while it was still trading; empty = every
-- provider answered without bars for the closed session; failed = the last attempt failed. A worse
-- answer never replaces stored bars, so bars/expected always describe the bars stored.
-- attempts counts consecutive attempts that ended in this status. source_fetched_at (h1/h4): the
-- fetched_at of the m15 row they were derived from; m15 fetched later makes them stale.
-- rewrite_reason: why the partition's bars were last rewritten on purpose (a run's
-- backfill/rewrite_reason tag, e.g. a split repair); ordinary fetches leave it as it is.
CREATE TABLE IF NOT EXISTS bar_coverage (
    symbol          text        NOT NULL,
    timeframe       text        NOT NULL CHECK (timeframe IN ('m15', 'h1', 'h4', 'd1')),
    session         date        NOT NULL,
    status          text        NOT NULL
                                CONSTRAINT bar_coverage_status_check
                                CHECK (status IN ('complete', 'partial', 'empty', 'failed')),
    bars            integer     NOT NULL DEFAULT 0 CHECK (bars >= 0),
    expected        integer     NOT NULL DEFAULT 0 CHECK (expected >= 0),
    provider        text,
    fetched_at      timestamptz,
    session_closed  boolean     NOT NULL DEFAULT false,
    attempts        integer     NOT NULL DEFAULT 1,
    error           text,
    run_id          text,
    updated_at      timestamptz NOT NULL,
    source_fetched_at timestamptz,
    rewrite_reason  text,
    PRIMARY KEY (symbol, timeframe, session)
);
-- Databases made before the 'empty' status, source_fetched_at and rewrite_reason existed.
ALTER TABLE bar_coverage ADD COLUMN IF NOT EXISTS source_fetched_at timestamptz;
-- Checked first: ALTER TABLE locks the ledger exclusively even when the column is there already.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'bar_coverage'
                     AND column_name = 'rewrite_reason') THEN
        ALTER TABLE bar_coverage ADD COLUMN IF NOT EXISTS rewrite_reason text;
    END IF;
END $$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'bar_coverage_status_check'
                   AND conrelid = 'bar_coverage'::regclass
                   AND strpos(pg_get_constraintdef(oid), 'empty') > 0) THEN
        ALTER TABLE bar_coverage DROP CONSTRAINT IF EXISTS bar_coverage_status_check;
        ALTER TABLE bar_coverage ADD CONSTRAINT bar_coverage_status_check
            CHECK (status IN ('complete', 'partial', 'empty', 'failed'));
    END IF;
END $$;
-- Only the rows the gap sensor chases (partial, empty, failed): complete rows, the vast majority, cost
-- this index nothing.
CREATE INDEX IF NOT EXISTS bar_coverage_open_idx ON bar_coverage (timeframe, session)
    WHERE status <> 'complete';

-- Bars that failed validation, with every reason, so nothing a provider sent is lost and nothing
-- invalid reaches ohlc_bars. Values are nullable because a NaN or a missing field is a reason.
CREATE TABLE IF NOT EXISTS rejected_bars (
    id           bigserial        PRIMARY KEY,
    symbol       text,
    timeframe    text             NOT NULL,
    session      date,
    ts           timestamptz,
    open         double precision,
    high         double precision,
    low          double precision,
    close        double precision,
    volume       double precision,
    vwap         double precision,
    trade_count  bigint,
    provider     text             NOT NULL,
    reason       text             NOT NULL,
    run_id       text,
    rejected_at  timestamptz      NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_bars_symbol_idx ON rejected_bars (symbol, timeframe, session);

-- Providers' shared request budgets (backfill_dagster/store/budget.py): every process books
-- a request here before sending it, so all runs together stay under a provider's rate limit. The
-- budget row is locked while booking; a 429 sets paused_until for everyone (requests wait); a
-- server wait too long to sit out (Retry-After: 3600) sets unavailable_until and its reason
-- (requests fail at once and runs fall back to the next provider). Times are this server's clock in
-- epoch seconds (one clock for every machine); clients only ever hand over delays.
CREATE TABLE IF NOT EXISTS provider_budget (
    provider            text              PRIMARY KEY,
    paused_until        double precision,
    unavailable_until   double precision,
    unavailable_reason  text
);
-- Stores created before the unavailability columns gain them (CREATE TABLE IF NOT EXISTS leaves an
-- existing table as it is). Checked first, so the usual case takes no lock on the table.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_schema = current_schema() AND table_name = 'provider_budget'
                     AND column_name = 'unavailable_reason') THEN
        ALTER TABLE provider_budget ADD COLUMN IF NOT EXISTS unavailable_until double precision,
                                    ADD COLUMN IF NOT EXISTS unavailable_reason text;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS provider_requests (
    provider  text              NOT NULL,
    sent_at   double precision  NOT NULL
);
CREATE INDEX IF NOT EXISTS provider_requests_idx ON provider_requests (provider, sent_at);

-- Corporate actions (backfill_dagster/domain/corporate_actions.py). One row per action, deduplicated across
-- providers by (symbol, kind, ex_date); its figures are the preferred provider's (`source`). A split
-- keeps its ratio exactly: split_to new shares for split_from old ones, reduced (4-for-1: 1 and 4).
-- basis_since: bars of sessions before the ex-date fetched earlier are on the old share basis (the
-- split repair re-fetches them). repair_*: the repair's state, the Dagster backfill doing it, how
-- many were launched, and what it found. Cash dividends are recorded only (no repair): the store is
-- adjusted for splits, never for dividends.
CREATE TABLE IF NOT EXISTS corporate_actions (
    symbol              text             NOT NULL,
    kind                text             NOT NULL CHECK (kind IN ('split', 'cash_dividend')),
    ex_date             date             NOT NULL,
    split_from          bigint           CHECK (split_from > 0),
    split_to            bigint           CHECK (split_to > 0),
    cash_amount         double precision CHECK (cash_amount > 0 AND cash_amount < 'Infinity'),
    source              text             NOT NULL,
    first_seen          timestamptz      NOT NULL,
    basis_since         timestamptz,
    repair_state        text             CHECK (repair_state IN ('pending', 'repairing', 'repaired', 'not_needed', 'failed')),
    repair_backfill_id  text,
    repair_attempts     integer          NOT NULL DEFAULT 0,
    repair_note         text,
    repaired_at         timestamptz,
    updated_at          timestamptz      NOT NULL,
    PRIMARY KEY (symbol, kind, ex_date),
    CONSTRAINT corporate_actions_figures CHECK (
        (kind = 'split' AND split_from IS NOT NULL AND split_to IS NOT NULL AND repair_state IS NOT NULL)
        OR (kind = 'cash_dividend' AND cash_amount IS NOT NULL))
);
-- Each provider's own report of an action (provenance: two providers disagreeing stay visible).
CREATE TABLE IF NOT EXISTS corporate_action_sources (
    symbol       text             NOT NULL,
    kind         text             NOT NULL CHECK (kind IN ('split', 'cash_dividend')),
    ex_date      date             NOT NULL,
    provider     text             NOT NULL,
    provider_id  text,
    split_from   bigint           CHECK (split_from > 0),
    split_to     bigint           CHECK (split_to > 0),
    cash_amount  double precision CHECK (cash_amount > 0 AND cash_amount < 'Infinity'),
    first_seen   timestamptz      NOT NULL,
    last_seen    timestamptz      NOT NULL,
    PRIMARY KEY (symbol, kind, ex_date, provider)
);
-- When each provider was last asked about each symbol, and over which ex-dates: a split in the
-- first answers about a symbol is history, not news.
CREATE TABLE IF NOT EXISTS corporate_action_checks (
    symbol            text        NOT NULL,
    provider          text        NOT NULL,
    first_checked_at  timestamptz NOT NULL,
    last_checked_at   timestamptz NOT NULL,
    checked_from      date        NOT NULL,
    checked_through   date        NOT NULL,
    PRIMARY KEY (symbol, provider)
);

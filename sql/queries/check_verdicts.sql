-- The partitions the asset checks would fail, one row each, with why. Dagster shows one summary per
-- check and run (counts and the worst 20 by name); this is the per-partition detail behind it.
-- psql "$BACKFILL_DATABASE_URL" -v warn_below=0.9 -f sql/queries/check_verdicts.sql
-- m15_completeness is the check's own rule (ledger rows; partitions never fetched have no row).
-- matches_m15_resampled compares each stored h1/h4 bar with the m15 bars from its start to the next
-- one (a missing bar shows as a session volume that differs), and the ledger's derivation stamp.
-- bounds_m15 compares the d1 bar of each session d1 was fetched for with the session's stored m15
-- bars (regular hours unless BACKFILL_EXTENDED_HOURS keeps more).
\if :{?warn_below}
\else
\set warn_below 0.9
\endif
WITH m15 AS (
    SELECT symbol, (ts AT TIME ZONE 'America/New_York')::date AS session,
           max(high) AS high, min(low) AS low, sum(volume) AS volume, count(*) AS bars
    FROM ohlc_bars
    WHERE timeframe = 'm15'
    GROUP BY 1, 2
),
derived AS (  -- each h1/h4 bar with the m15 bars inside it, resampled
    SELECT d.symbol, d.timeframe, d.session, d.ts, d.open, d.high, d.low, d.close, d.volume,
           (array_agg(m.open ORDER BY m.ts))[1] AS m_open, max(m.high) AS m_high, min(m.low) AS m_low,
           (array_agg(m.close ORDER BY m.ts DESC))[1] AS m_close, sum(m.volume) AS m_volume
    FROM (
        SELECT b.*, (b.ts AT TIME ZONE 'America/New_York')::date AS session,
               lead(b.ts) OVER (PARTITION BY b.symbol, b.timeframe, (b.ts AT TIME ZONE 'America/New_York')::date
                                ORDER BY b.ts) AS next_ts
        FROM ohlc_bars b
        WHERE b.timeframe IN ('h1', 'h4')
    ) d
    LEFT JOIN ohlc_bars m ON m.timeframe = 'm15' AND m.symbol = d.symbol AND m.ts >= d.ts
         AND (m.ts < d.next_ts OR (d.next_ts IS NULL AND (m.ts AT TIME ZONE 'America/New_York')::date = d.session))
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
),
derived_sessions AS (
    SELECT symbol, timeframe, session, sum(volume) AS volume,
           count(*) FILTER (WHERE m_open IS NULL OR open <> m_open OR high <> m_high OR low <> m_low
                            OR close <> m_close OR abs(volume - m_volume) > 1e-9 * m_volume) AS wrong,
           min(ts) FILTER (WHERE m_open IS NULL OR open <> m_open OR high <> m_high OR low <> m_low
                           OR close <> m_close OR abs(volume - m_volume) > 1e-9 * m_volume) AS first_wrong
    FROM derived
    GROUP BY 1, 2, 3
)
SELECT 'bars_m15' AS asset, 'm15_completeness' AS "check", c.symbol, c.session,
       CASE c.status
           WHEN 'failed' THEN 'last fetch failed: ' || coalesce(c.error, '')
           WHEN 'empty' THEN 'no provider had bars after ' || c.attempts || ' attempt(s)'
           ELSE c.bars || ' of ' || c.expected || ' bars ('
                || round(100.0 * c.bars / c.expected) || '%, below '
                || round(100 * :warn_below) || '%)'
       END AS why
FROM bar_coverage c
WHERE c.timeframe = 'm15'
  AND (c.status IN ('failed', 'empty')
       OR (c.session_closed AND c.expected > 0 AND c.bars < :warn_below * c.expected))
UNION ALL
SELECT 'bars_' || d.timeframe, 'matches_m15_resampled', d.symbol, d.session,
       CASE WHEN d.wrong > 0 THEN d.wrong || ' ' || d.timeframe || ' bar(s) differ from the m15 bars inside them; first at '
                                  || d.first_wrong
            ELSE 'session volume ' || d.volume || ' vs m15 ' || coalesce(m.volume::text, 'none')
                 || ' (a derived bar is missing)'
       END
FROM derived_sessions d
LEFT JOIN m15 m ON m.symbol = d.symbol AND m.session = d.session
WHERE d.wrong > 0 OR m.symbol IS NULL OR abs(d.volume - m.volume) > 1e-9 * m.volume
UNION ALL
SELECT 'bars_' || c.timeframe, 'matches_m15_resampled', c.symbol, c.session,
       'derived from an m15 fetch older than the stored one (stale; the gap sensor derives it again)'
FROM bar_coverage c
JOIN bar_coverage m ON m.symbol = c.symbol AND m.timeframe = 'm15' AND m.session = c.session
WHERE c.timeframe IN ('h1', 'h4') AND c.source_fetched_at < m.fetched_at
UNION ALL
SELECT 'bars_d1', 'bounds_m15', m.symbol, m.session,
       CASE WHEN d.symbol IS NULL THEN 'm15 bars exist but no d1 bar is stored'
            ELSE concat_ws('; ',
                CASE WHEN d.high + 1e-6 < m.high THEN 'd1 high ' || d.high || ' < m15 max ' || m.high END,
                CASE WHEN d.low - 1e-6 > m.low THEN 'd1 low ' || d.low || ' > m15 min ' || m.low END,
                CASE WHEN d.volume * (1 + 1e-9) < m.volume THEN 'd1 volume ' || d.volume || ' < m15 sum ' || m.volume END)
       END
FROM m15 m
JOIN bar_coverage a ON a.symbol = m.symbol AND a.timeframe = 'd1' AND a.session = m.session  -- d1 attempted
LEFT JOIN ohlc_bars d ON d.timeframe = 'd1' AND d.symbol = m.symbol
                     AND d.ts = (m.session::timestamp AT TIME ZONE 'America/New_York')
WHERE d.symbol IS NULL OR d.high + 1e-6 < m.high OR d.low - 1e-6 > m.low OR d.volume * (1 + 1e-9) < m.volume
ORDER BY session, symbol, asset;

-- Coverage per symbol and timeframe: sessions complete / partial / failed, bars vs expected,
-- first and last session with bars, last successful fetch.
-- psql "$BACKFILL_DATABASE_URL" -f sql/queries/coverage.sql
SELECT symbol,
       timeframe,
       count(*) FILTER (WHERE status = 'complete')                     AS complete,
       count(*) FILTER (WHERE status = 'partial')                      AS partial,
       count(*) FILTER (WHERE status = 'failed')                       AS failed,
       sum(bars)                                                        AS bars,
       sum(expected)                                                    AS expected,
       round(sum(bars)::numeric / nullif(sum(expected), 0), 4)         AS completeness,
       min(session) FILTER (WHERE bars > 0)                             AS first_session,
       max(session) FILTER (WHERE bars > 0)                             AS last_session,
       max(fetched_at)                                                  AS last_fetch
FROM bar_coverage
GROUP BY symbol, timeframe
ORDER BY symbol, timeframe;

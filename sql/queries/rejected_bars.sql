-- Bars refused by validation, grouped by provider and reason, with an example each. Nothing here
-- ever reached ohlc_bars.
SELECT provider,
       timeframe,
       reason,
       count(*)                    AS bars,
       count(DISTINCT symbol)      AS symbols,
       min(session)                AS first_session,
       max(session)                AS last_session,
       max(rejected_at)            AS last_seen,
       (array_agg(symbol || ' ' || coalesce(ts::text, 'no ts') ORDER BY id DESC))[1] AS example
FROM rejected_bars
GROUP BY provider, timeframe, reason
ORDER BY last_seen DESC;

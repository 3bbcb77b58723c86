-- Partitions whose last attempt failed, oldest session first, with the reason. The gap sensor
-- retries them; this shows what it is chasing.
SELECT symbol, timeframe, session, attempts, updated_at, error
FROM bar_coverage
WHERE status = 'failed'
ORDER BY session, symbol, timeframe;

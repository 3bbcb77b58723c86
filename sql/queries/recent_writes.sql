-- The last 50 partition writes (successful or failed), newest first, with the Dagster run that
-- made them: the place to start when a chart looks wrong.
SELECT updated_at, symbol, timeframe, session, status, bars, expected, provider, attempts, run_id,
       left(error, 200) AS error
FROM bar_coverage
ORDER BY updated_at DESC
LIMIT 50;

-- Bars actually stored per session for one symbol and timeframe, next to what the ledger says
-- (they differ only if someone changed ohlc_bars behind the project's back; the gap sensor
-- re-fetches such sessions).  psql -v symbol=AAPL -v timeframe=m15 -f sql/queries/bars_per_session.sql
SELECT c.session, c.status, c.bars AS ledger_bars, count(b.ts) AS stored_bars, c.expected
FROM bar_coverage c
LEFT JOIN ohlc_bars b
       ON b.symbol = c.symbol AND b.timeframe = c.timeframe
      AND b.ts >= (c.session::timestamp AT TIME ZONE 'America/New_York')
      AND b.ts <  ((c.session + 1)::timestamp AT TIME ZONE 'America/New_York')
WHERE c.symbol = :'symbol' AND c.timeframe = :'timeframe'
GROUP BY c.session, c.status, c.bars, c.expected
ORDER BY c.session;

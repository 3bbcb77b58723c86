-- Every provider's report of every action of one symbol (psql -v symbol=AAPL), the report whose
-- figures the action stands on marked, and the actions providers disagree on.
SELECT s.ex_date, s.kind, s.provider, s.split_to || ':' || s.split_from AS ratio, s.cash_amount,
       s.provider_id, s.first_seen, s.last_seen, s.provider = a.source AS stands_for_the_action,
       (SELECT count(DISTINCT (o.split_from, o.split_to, o.cash_amount)) > 1 FROM corporate_action_sources o
        WHERE o.symbol = s.symbol AND o.kind = s.kind AND o.ex_date = s.ex_date) AS disagree
FROM corporate_action_sources s
JOIN corporate_actions a USING (symbol, kind, ex_date)
WHERE s.symbol = :'symbol'
ORDER BY s.ex_date, s.kind, s.provider;

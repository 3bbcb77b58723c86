-- Splits and what their repair did: the ratio (new:old shares), when it was first seen, from when
-- stored bars count as on the new share basis, the repair's state, its backfill and note, and how
-- many ledger rows each split's reason was written on. Newest ex-date first.
SELECT a.symbol, a.ex_date, a.split_to || ':' || a.split_from AS ratio, a.source, a.first_seen, a.basis_since,
       a.repair_state, a.repair_backfill_id, a.repair_attempts, a.repaired_at, a.repair_note,
       (SELECT count(*) FROM bar_coverage c
        WHERE c.symbol = a.symbol AND c.session < a.ex_date
          AND c.rewrite_reason LIKE 'split % of ' || a.symbol || ' ex ' || a.ex_date || ':%') AS rows_rewritten
FROM corporate_actions a
WHERE a.kind = 'split'
ORDER BY a.ex_date DESC, a.symbol;

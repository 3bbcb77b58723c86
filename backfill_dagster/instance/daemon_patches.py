"""The backfill daemon's changes to Dagster, installed by importing this module.

Each module below replaces one function of Dagster's asset backfill in the importing process when
it is imported, pinned by tests/orchestration/test_dagster_internals.py: the daemon's log lines
bounded (backfill_log), its runs formed as boxes (backfill_runs) and submitted with plain partition
keys (backfill_submit), a backfill's target checked without listing every key (backfill_validity),
a code location that is down waited for (backfill_waits), large subsets packed, printed and unpacked once and briefly
(subset_pack, subset_repr, subset_unpack).

A daemon loads them from the instance it opens, never from the code location: the production
instance's event log storage (event_log.py) and the embedded instance's scheduler (scheduler.py)
both import this module.
"""

from backfill_dagster.instance import (  # noqa: F401  (imported for their effect)
    backfill_log,
    backfill_runs,
    backfill_submit,
    backfill_validity,
    backfill_waits,
    subset_pack,
    subset_repr,
    subset_unpack,
)

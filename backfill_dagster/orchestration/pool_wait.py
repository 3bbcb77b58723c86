"""A run waiting for a provider pool slot sleeps until its next claim check instead of spinning.

Dagster 1.13's `InstanceConcurrencyContext.interval_to_next_pending_claim_check` returns
`min([0, *(ready_at - now for each pending claim)])`, which is never above zero, so
`ActiveExecution.sleep_til_ready` never sleeps: a run whose step waits for a pool slot plans, asks
for its next step and checks the clock in a tight loop for as long as it waits (a fix was proposed
upstream, dagster-io/dagster#20367, and closed unmerged). The project runs three box runs of a
backfill at once for the provider pool's two slots, so one run is nearly always waiting: on a
2-core machine that loop took one core away from the two runs fetching.

The replacement returns what the name says: the time until the earliest pending claim is due to be
checked again (Dagster's own schedule: 1 s, then backing off to 15 s), never below zero, and zero
when nothing is pending. Claims, priorities and the schedule of checks are Dagster's, unchanged;
only the wait between them is no longer spent spinning.

Installed when the project's definitions load (every run worker, code server and in-process run
does); pinned in tests/orchestration/test_dagster_internals.py.
"""

from __future__ import annotations

import time

from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

_dagster_interval = InstanceConcurrencyContext.interval_to_next_pending_claim_check


def interval_to_next_pending_claim_check(self: InstanceConcurrencyContext) -> float:
    """Seconds until the earliest pending claim's next check (0.0 if one is due or none is pending)."""
    due = [self._pending_timeouts[key] for key in self._pending_claims if key in self._pending_timeouts]
    if not due:
        return 0.0
    return max(0.0, min(due) - time.time())


def install() -> None:
    """Sleep between pool claim checks in this process (idempotent)."""
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = interval_to_next_pending_claim_check


def uninstall() -> None:
    """Dagster's own interval again (tests compare the two)."""
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = _dagster_interval


install()

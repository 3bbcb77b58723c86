"""A retried or re-executed run's earlier attempts, whose committed partitions it does not redo.

Dagster retries a run whose worker died (run_retries in dagster.yaml) and re-executes one on a
user's request as a new run of the same partitions, tagged with the first run of the group
(`dagster/root_run_id`) and the one it follows (`dagster/parent_run_id`). Every partition an
attempt wrote is committed with its ledger row, naming that attempt's run; a partition committed
`complete` is final, so the new attempt skips it (BarStore.committed_by) and reports it
materialized all the same: the earlier attempt's own events may have died with its worker.
"""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.tags import ROOT_RUN_ID_TAG


def earlier_attempts(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """The ids of the other runs of this run's group (its root and every retry or re-execution of
    it), or [] for a first attempt."""
    root = run.tags.get(ROOT_RUN_ID_TAG)
    if not root:
        return []
    group = {root, *instance.get_run_ids(filters=dg.RunsFilter(tags={ROOT_RUN_ID_TAG: root}))}
    group.discard(run.run_id)
    return sorted(group)

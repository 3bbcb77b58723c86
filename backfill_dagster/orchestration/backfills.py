"""Launching and following Dagster asset backfills from code, exactly as the UI launches them.

`backfill-dagster ensure-coverage` and the split repair use this: the backfill goes into the
instance, shows on the UI's backfills page, and the daemon runs it as boxes of many symbols
(instance/backfill_runs.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import dagster as dg
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.utils import make_new_backfill_id

# A running daemon writes a heartbeat as it starts and every 30 s after (Dagster's
# DEFAULT_HEARTBEAT_INTERVAL_SECONDS); four missed ones mean it is gone. Dagster's own status page
# tolerates 30 minutes, far too long to tell a user waiting at a terminal.
DAEMON_HEARTBEAT_STALE_S = 120.0

FINISHED = {
    BulkActionStatus.COMPLETED,
    BulkActionStatus.COMPLETED_SUCCESS,
    BulkActionStatus.COMPLETED_FAILED,
    BulkActionStatus.FAILED,
    BulkActionStatus.CANCELED,
}
SUCCEEDED = {BulkActionStatus.COMPLETED, BulkActionStatus.COMPLETED_SUCCESS}

class BackfillNotFoundError(LookupError):
    pass


def launch_backfill(
    instance: dg.DagsterInstance,
    asset_graph,
    partition_keys: Sequence[str],
    assets: Sequence[dg.AssetKey],
    *,
    title: str,
    description: str = "",
    tags: Mapping[str, str] | None = None,
) -> str:
    """Add an asset backfill of these partitions of these assets; the daemon runs it."""
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=asset_graph,
        partition_names=list(partition_keys),
        asset_selection=list(assets),
        backfill_timestamp=time.time(),
        tags=dict(tags or {}),
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=title,
        description=description,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill.backfill_id


@dataclass(frozen=True)
class Progress:
    status: BulkActionStatus
    done: int  # asset partitions materialized
    failed: int  # asset partitions failed (or downstream of a failure)
    total: int  # asset partitions targeted

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def succeeded(self) -> bool:
        return self.status in SUCCEEDED and self.failed == 0


def backfill_progress(instance: dg.DagsterInstance, backfill_ids: str | Sequence[str]) -> Progress:
    """Progress of a backfill, or of several launched as parts of one request, summed: finished
    when every part is, its status the first unfinished part's (or the worst finished one's)."""
    ids = [backfill_ids] if isinstance(backfill_ids, str) else list(backfill_ids)
    parts = []
    for backfill_id in ids:
        backfill = instance.get_backfill(backfill_id)
        if backfill is None:
            raise BackfillNotFoundError(f"no backfill {backfill_id!r} in this Dagster instance")
        data = backfill.asset_backfill_data
        if data is None:
            parts.append(Progress(backfill.status, 0, 0, 0))
            continue
        parts.append(Progress(
            status=backfill.status,
            done=data.materialized_subset.num_partitions_and_non_partitioned_assets,
            failed=data.failed_and_downstream_subset.num_partitions_and_non_partitioned_assets,
            total=data.target_subset.num_partitions_and_non_partitioned_assets,
        ))
    unfinished = [p.status for p in parts if not p.finished]
    unsuccessful = [p.status for p in parts if p.status not in SUCCEEDED]
    status = (unfinished or unsuccessful or [parts[0].status])[0]
    return Progress(status, sum(p.done for p in parts), sum(p.failed for p in parts), sum(p.total for p in parts))


def wait_for_backfill(
    instance: dg.DagsterInstance,
    backfill_ids: str | Sequence[str],
    *,
    on_progress: Callable[[Progress], None] = lambda _p: None,
    on_poll: Callable[[Progress], None] = lambda _p: None,
    timeout_s: float | None = None,
    interval_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Progress:
    """Poll until the backfill (every part of it) finishes or the timeout passes, reporting each
    change to `on_progress` and every poll to `on_poll`."""
    started = time.monotonic()
    last = None
    while True:
        progress = backfill_progress(instance, backfill_ids)
        if progress != last:
            on_progress(progress)
            last = progress
        on_poll(progress)
        if progress.finished:
            return progress
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            return progress
        sleep(interval_s)


def backfill_daemon_heartbeat(instance: dg.DagsterInstance) -> float | None:
    """When a backfill daemon last wrote a heartbeat to this instance (epoch seconds), if ever."""
    from dagster._daemon.daemon import BackfillDaemon

    beat = instance.get_daemon_heartbeats().get(BackfillDaemon.daemon_type())
    return None if beat is None else beat.timestamp


def backfill_daemon_alive(
    instance: dg.DagsterInstance, *, now: float | None = None, stale_after_s: float = DAEMON_HEARTBEAT_STALE_S
) -> bool:
    """Whether a backfill daemon is running against this instance: its last heartbeat is recent."""
    beat = backfill_daemon_heartbeat(instance)
    now = time.time() if now is None else now
    return beat is not None and now - beat <= stale_after_s

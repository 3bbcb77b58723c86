"""What a backfill targets, without its partitions: for the gap sensor, which asks every tick which
assets each unfinished backfill covers.

An asset backfill's `bulk_actions` row holds its whole target and progress: 18-54 MB of JSON at 500
symbols x 504 sessions x 4 assets, hundreds of MB deserialized. The project's run storage
(run_storage.PooledPostgresRunStorage.backfill_selections) has PostgreSQL read the selection out of
the row instead; any other run storage gives whole rows (Dagster's get_backfills), reduced to the same.
A module of its own, importing nothing of the instance plug-ins: the definitions import it, and a
process on another instance (deploy/dagster-stock.yaml) must not install the plug-ins' patches.
"""

from __future__ import annotations

from typing import NamedTuple

from dagster._core.definitions.events import AssetKey
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus, PartitionBackfill


class BackfillSelection(NamedTuple):
    """A backfill's id, whether it is an asset backfill (PartitionBackfill.is_asset_backfill), and
    its asset selection (None when it has none)."""

    backfill_id: str
    is_asset_backfill: bool
    asset_selection: tuple[AssetKey, ...] | None

    @classmethod
    def of(cls, backfill: PartitionBackfill) -> BackfillSelection:
        selection = backfill.asset_selection
        return cls(backfill.backfill_id, backfill.is_asset_backfill, None if selection is None else tuple(selection))


def backfill_selections(instance, statuses: list[BulkActionStatus], limit: int) -> list[BackfillSelection]:
    """BackfillSelection.of each of `instance.get_backfills(filters=BulkActionsFilter(statuses=statuses),
    limit=limit)`, newest first; without deserializing the rows when the run storage can."""
    read = getattr(instance.run_storage, "backfill_selections", None)
    if read is not None:
        return read(statuses, limit)
    return backfill_selections_read_whole(instance, statuses, limit)


def backfill_selections_read_whole(instance, statuses: list[BulkActionStatus], limit: int) -> list[BackfillSelection]:
    """The same from whole rows, as Dagster reads them."""
    return [BackfillSelection.of(b) for b in instance.get_backfills(filters=BulkActionsFilter(statuses=statuses),
                                                                    limit=limit)]

"""A backfill waits for a code location that is down instead of failing.

When the daemon's backfill loop cannot load a code location (its server stopped, restarting, or
being redeployed), the backfill's assets are missing from the daemon's asset graph and Dagster
fails the whole backfill ("Asset ... existed at storage-time, but no longer does"), unless
DAGSTER_BACKFILL_RETRY_DEFINITION_CHANGED_ERROR is set: then it skips that tick and resumes once
the location loads (dagster/_core/execution/asset_backfill.py). A code location server restarted
mid-backfill (a deploy, a crash) must not fail the backfill, so the daemon's process sets it
unless the operator did. Imported where the instance plug-ins load in the daemon (event_log.py,
scheduler.py), as the boxes are (backfill_runs.py).
"""

from __future__ import annotations

import os

RETRY_DEFINITION_CHANGED_VARIABLE = "DAGSTER_BACKFILL_RETRY_DEFINITION_CHANGED_ERROR"


def wait_for_unloadable_locations(environ=os.environ) -> None:
    """Let this process's backfill loop wait for a code location that does not load."""
    environ.setdefault(RETRY_DEFINITION_CHANGED_VARIABLE, "1")


wait_for_unloadable_locations()

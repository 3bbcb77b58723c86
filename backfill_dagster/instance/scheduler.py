"""Dagster's daemon scheduler, unchanged, as the plug-in that carries the project's backfill run
formation into an instance that keeps no other plug-in of the project.

A daemon forms a backfill's runs in its own process, from the instance it loads, never from the
code location, so boxes (backfill_runs.py) must arrive through the instance's dagster.yaml. The
production instance's event log storage brings them; the embedded SQLite instance keeps Dagster's
own storages, and its scheduler is the one plug-in Dagster builds as the instance loads (compute
logs, the run launcher and the coordinator load only when first used).
"""

from dagster._core.scheduler import DagsterDaemonScheduler

# installs the boxes (and the daemon's other backfill patches) in this process
from backfill_dagster.instance import daemon_patches  # noqa: F401


class BoxingDaemonScheduler(DagsterDaemonScheduler):
    """DagsterDaemonScheduler; selecting it loads instance/backfill_runs.py into the daemon."""

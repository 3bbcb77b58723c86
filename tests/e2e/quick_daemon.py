"""`dagster-daemon` as the end-to-end deployment runs it: Dagster's own daemon, with its backfill
loop every 2 s instead of its fixed 30 s and the run queue read every second instead of every 5 s,
so that a test waits for the work rather than for the daemon's next look.

`--workspace-reload-s N` (taken off the command line before Dagster's CLI reads it) sets how often
the daemon reloads its workspace: every 60 s as shipped, and each reload of a workspace whose code
location the daemon serves itself starts a new code server process (~4 CPU seconds, and another
until the old one stops). A test that neither changes code nor restarts a code server can reload
rarely; one that restarts its code server keeps the shipped interval.

A test that waits on a
chain of sensor ticks (watchlist_sync, then split_repair, ...) may also set
BACKFILL_TEST_SENSOR_INTERVAL_S in the daemon's environment: each sensor is then evaluated at least
that often, whatever its own minimum interval (30-60 s as shipped). Nothing else differs."""

from __future__ import annotations

import os
import sys

from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._daemon import controller
from dagster._daemon import sensor as sensor_daemon
from dagster._daemon.cli import main

# Read by the backfill loop at its start (dagster/_daemon/backfill.py), so setting it here counts.
controller.DEFAULT_DAEMON_INTERVAL_SECONDS = 2
QueuedRunCoordinator.dequeue_interval_seconds = property(lambda self: 1)

_SENSOR_INTERVAL = os.environ.get("BACKFILL_TEST_SENSOR_INTERVAL_S")
if _SENSOR_INTERVAL:
    _cap = float(_SENSOR_INTERVAL)

    def _is_under_min_interval(state, remote_sensor, minimum_allowed_min_interval=None) -> bool:
        """Dagster's check (dagster/_daemon/sensor.py), the sensor's interval capped at _cap."""
        elapsed = sensor_daemon.get_elapsed(state)
        if elapsed is None:
            return False
        interval = min(remote_sensor.min_interval_seconds or 0, _cap)
        if minimum_allowed_min_interval is not None:
            interval = max(interval, minimum_allowed_min_interval)
        return bool(interval) and elapsed < interval

    sensor_daemon.is_under_min_interval = _is_under_min_interval

if "--workspace-reload-s" in sys.argv:
    at = sys.argv.index("--workspace-reload-s")
    controller.RELOAD_WORKSPACE_INTERVAL = float(sys.argv[at + 1])
    del sys.argv[at : at + 2]

if __name__ == "__main__":
    sys.argv[0] = "dagster-daemon"
    sys.exit(main())

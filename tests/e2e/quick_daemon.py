"""`dagster-daemon` as the end-to-end deployment runs it: Dagster's own daemon, with its backfill
loop every 2 s instead of its fixed 30 s and the run queue read every second instead of every 5 s,
so that a test waits for the work rather than for the daemon's next look. Nothing else differs."""

from __future__ import annotations

import sys

from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._daemon import controller
from dagster._daemon.cli import main

# Read by the backfill loop at its start (dagster/_daemon/backfill.py), so setting it here counts.
controller.DEFAULT_DAEMON_INTERVAL_SECONDS = 2
QueuedRunCoordinator.dequeue_interval_seconds = property(lambda self: 1)

if __name__ == "__main__":
    sys.argv[0] = "dagster-daemon"
    sys.exit(main())

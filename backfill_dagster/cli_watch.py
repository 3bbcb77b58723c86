"""Following a backfill at the terminal (`backfill-dagster ensure-coverage --wait`): the progress
bar, and a warning when no daemon is there to run the backfill."""

from __future__ import annotations

import os
import sys
import time

from backfill_dagster.orchestration.backfills import backfill_daemon_alive, backfill_daemon_heartbeat

# How long `ensure-coverage --wait` lets a backfill sit before saying that no daemon is running. A
# running backfill daemon has a heartbeat under 30 s old, so this only spares a user who starts one
# alongside the command (`dagster dev` loads the code location first, 10-20 s here).
DAEMON_GRACE_S = 45.0


class ProgressBar:
    """`[#####.....] 12/60 partitions, 3,120 bars, REQUESTED`: redrawn in place on a terminal,
    one line per change otherwise (logs, CI)."""

    WIDTH = 30

    def __init__(self, stream):
        self.stream = stream
        self.tty = stream.isatty()

    def show(self, progress, bars: int, covered: tuple[int, int] | None = None) -> None:
        """Filled by what the ledger says is covered when given (it moves as each run commits),
        else by Dagster's counts (they move only between the backfill daemon's iterations)."""
        if covered is not None:
            done, total = covered
            head = f"{done}/{total} covered in the ledger; Dagster: "
        else:
            done, total = progress.done + progress.failed, progress.total
            head = ""
        filled = int(self.WIDTH * done / max(total, 1))
        text = (f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {head}{progress.done}/{progress.total} partitions"
                f"{f', {progress.failed} failed' if progress.failed else ''}, {bars:,} bars, {progress.status.value}")
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        self.stream.flush()

    def break_line(self) -> None:
        """End the line being redrawn, so a message printed now does not land inside it."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def close(self) -> None:
        self.break_line()


class LedgerProgress:
    """How many of the wanted partitions the ledger says are covered, read at most every
    `interval_s` while waiting (each read is one query over the wanted symbols and sessions)."""

    def __init__(self, count, total: int, *, interval_s: float = 5.0, clock=time.monotonic):
        self.count = count
        self.total = total
        self.interval_s = interval_s
        self.clock = clock
        self.last_read = None
        self.last = None

    def poll(self) -> tuple[int, int] | None:
        """A new reading if one is due and it differs from the last, else None."""
        if self.last_read is not None and self.clock() - self.last_read < self.interval_s:
            return None
        before = self.last
        reading = self.read()
        return reading if reading != before else None

    def read(self) -> tuple[int, int]:
        self.last_read = self.clock()
        self.last = (self.count(), self.total)
        return self.last


class DaemonWatch:
    """Says once, DAEMON_GRACE_S after the launch, that no backfill daemon is running against the
    instance (none ever, or its heartbeats stopped), and how to start one. Waiting goes on: a daemon
    started now picks the backfill up, and --timeout still bounds the wait."""

    def __init__(self, instance, backfill_id: str, bar: ProgressBar, clock=time.monotonic):
        self.instance = instance
        self.backfill_id = backfill_id
        self.bar = bar
        self.clock = clock
        self.started = clock()
        self.warned = False

    def __call__(self, progress) -> None:
        if self.warned or progress.finished or self.clock() - self.started < DAEMON_GRACE_S:
            return
        if backfill_daemon_alive(self.instance):
            return
        self.warned = True
        beat = backfill_daemon_heartbeat(self.instance)
        seen = ("no backfill daemon has ever sent a heartbeat to this instance" if beat is None else
                f"no backfill daemon is running: the last heartbeat was {_age(time.time() - beat)} ago")
        home = os.environ.get("DAGSTER_HOME", "")
        self.bar.break_line()
        print(f"warning: {seen}, so nothing picks up backfill {self.backfill_id}. Start a daemon on the "
              f"same instance, from the project root: DAGSTER_HOME={home} dagster-daemon run "
              f"(or DAGSTER_HOME={home} dagster dev, the UI and the daemon). Still waiting; Ctrl-C stops "
              f"waiting and the backfill stays queued.", file=sys.stderr)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.0f} hours"

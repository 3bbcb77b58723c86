"""Which process works on a run, and whether it is still there.

A run worker records itself on its run as it starts (PooledPostgresRunStorage, on the run's start
event, in the worker's own process): its host, its pid and when that process started. That covers
every way a run is started — the daemon's launcher, `dagster asset materialize`, a test calling
`materialize` — where Dagster's DefaultRunLauncher knows nothing of the processes it starts and
nothing at all of a CLI run's. On the same host the run's worker is then checked for what it is:
alive, or gone (killed, the machine's OOM killer, a crash past every handler). A pid alone is not
enough, as the kernel reuses them: the process start time tells a reused pid from the worker.

Pure functions over a run's tags and the process table, so they are testable without Dagster.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

WORKER_HOST_TAG = "backfill/worker_host"
WORKER_PID_TAG = "backfill/worker_pid"
# The process's start, in clock ticks since boot (field 22 of /proc/<pid>/stat); empty where the
# platform has no /proc, and then only the pid is checked.
WORKER_STARTED_TAG = "backfill/worker_started"

# What `process_start` answers for a pid: None when no such process is running (or it is a zombie,
# killed and not yet reaped), else its start ("" when the platform cannot say).
ProcessStart = Callable[[int], "str | None"]


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), "" if unknown here, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return _exists_without_proc(pid)
    # "pid (comm) state ppid ... starttime ...": comm may hold spaces and parentheses, so fields are
    # counted after the last ")": state is field 3 overall, starttime field 22.
    fields = stat.rsplit(")", 1)[-1].split()
    if not fields or fields[0] in ("Z", "X"):  # a zombie or a dead task: the worker has ended
        return None
    return fields[19] if len(fields) > 19 else ""


def _exists_without_proc(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return ""  # someone else's process: it exists
    return ""


def this_worker() -> dict[str, str]:
    """The tags that name the calling process as a run's worker."""
    pid = os.getpid()
    return {
        WORKER_HOST_TAG: socket.gethostname(),
        WORKER_PID_TAG: str(pid),
        WORKER_STARTED_TAG: process_start(pid) or "",
    }


def describe_worker(tags: Mapping[str, str]) -> str | None:
    """'pid 123 on host h', or None when the run records no worker."""
    host, pid = tags.get(WORKER_HOST_TAG), tags.get(WORKER_PID_TAG)
    if not host or not pid:
        return None
    return f"pid {pid} on host {host}"


def worker_gone(
    tags: Mapping[str, str], *, host: str | None = None, start_of: ProcessStart = process_start
) -> str | None:
    """Why the run's recorded worker is known to be gone, or None: alive, or nothing can be told
    from here (no worker recorded yet, a worker on another host, a pid that is not a number)."""
    described = describe_worker(tags)
    if described is None or tags[WORKER_HOST_TAG] != (host or socket.gethostname()):
        return None
    try:
        pid = int(tags[WORKER_PID_TAG])
    except ValueError:
        return None
    started = start_of(pid)
    if started is None:
        return f"the run worker ({described}) is gone: no process with that pid runs any more (killed or crashed)"
    recorded = tags.get(WORKER_STARTED_TAG, "")
    if recorded and started and started != recorded:
        return (
            f"the run worker ({described}) is gone: pid {pid} now belongs to another process "
            f"(started at tick {started}, the worker at tick {recorded})"
        )
    return None

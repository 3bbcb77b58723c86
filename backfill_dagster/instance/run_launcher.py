"""Dagster's default run launcher, able to tell run monitoring that a run's worker is gone.

Selected in `dagster.yaml` (`run_launcher`). Dagster's DefaultRunLauncher starts run workers
through the code server and cannot check them (`supports_check_run_worker_health` is False), so
the daemon's run monitoring never fails a STARTED run whose worker died: a `dagster asset
materialize` killed with SIGKILL (which no launcher started) stays STARTED for ever, and every
partition it selected stays "being filled" for the gap sensor. This subclass launches exactly as
Dagster does and answers the health check from the worker each run recorded as it started
(instance/run_worker.py): on this host, a worker that no longer runs is FAILED, and run monitoring
fails the run with the reason (`Detected run worker status FAILED: 'the run worker (pid 4242 on
host h) is gone: ...'`). A worker it cannot check — on another host, or a run that recorded none —
is reported RUNNING, as Dagster's launcher assumes of every run.
"""

from __future__ import annotations

from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun

from backfill_dagster.instance.run_worker import describe_worker, worker_gone


class WorkerCheckingRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose health check sees a dead run worker on this host."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        gone = worker_gone(run.tags)
        if gone is not None:
            return CheckRunHealthResult(WorkerStatus.FAILED, gone)
        described = describe_worker(run.tags)
        return CheckRunHealthResult(
            WorkerStatus.RUNNING,
            f"run worker {described}" if described else "no run worker recorded: assumed running",
        )


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

A dead worker whose code location server does not answer (a `grpc_server` location of the
workspace, stopped or restarting) is reported RUNNING until the server answers again: the run is
failed then. Failing it at once would lose its retry: Dagster's retry needs the code location and,
when it cannot load it, marks the run as never to be retried (auto_run_reexecution.py). Killing the
code server's process group (its workers with it) while run monitoring polls sees exactly that.
"""

from __future__ import annotations

from collections.abc import Callable

from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
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
            silent = unanswering_code_server(run)
            if silent is not None:
                return CheckRunHealthResult(
                    WorkerStatus.RUNNING, f"{gone}; failed once {silent} answers again, so that it can be retried"
                )
            return CheckRunHealthResult(WorkerStatus.FAILED, gone)
        described = describe_worker(run.tags)
        return CheckRunHealthResult(
            WorkerStatus.RUNNING,
            f"run worker {described}" if described else "no run worker recorded: assumed running",
        )



def _answers(origin: GrpcServerCodeLocationOrigin) -> bool:
    try:
        origin.create_client().ping("run monitoring")
    except Exception:  # noqa: BLE001 - any failure to answer is "not answering"
        return False
    return True


def unanswering_code_server(
    run: DagsterRun, answers: Callable[[GrpcServerCodeLocationOrigin], bool] = _answers
) -> str | None:
    """'the code server host:port' when the run's code location is a server the workspace reaches
    by address and it does not answer now; None when it answers, or the location is one the daemon
    starts itself (a module or file in workspace.yaml), or the run records no location."""
    job_origin = run.remote_job_origin
    origin = job_origin.repository_origin.code_location_origin if job_origin else None
    if not isinstance(origin, GrpcServerCodeLocationOrigin) or answers(origin):
        return None
    where = origin.socket or f"{origin.host}:{origin.port}"
    return f"the code server {where}"

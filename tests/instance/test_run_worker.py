"""Telling a run's worker alive from gone, with real processes: a live one, one killed with
SIGKILL (reaped, and not yet reaped: a zombie), a pid now held by another process, a worker on
another host, a run that recorded none."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from backfill_dagster.instance.run_launcher import WorkerCheckingRunLauncher
from backfill_dagster.instance.run_worker import (
    WORKER_HOST_TAG,
    WORKER_PID_TAG,
    WORKER_STARTED_TAG,
    describe_worker,
    process_start,
    this_worker,
    worker_gone,
)


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def tags_of(pid: int, started: str | None = None) -> dict[str, str]:
    return {WORKER_HOST_TAG: socket.gethostname(), WORKER_PID_TAG: str(pid),
            WORKER_STARTED_TAG: process_start(pid) if started is None else started}


def test_this_process_is_a_live_worker():
    tags = this_worker()
    assert tags[WORKER_PID_TAG] == str(os.getpid()) and tags[WORKER_HOST_TAG] == socket.gethostname()
    assert tags[WORKER_STARTED_TAG]  # Linux: the process start from /proc
    assert worker_gone(tags) is None
    assert describe_worker(tags) == f"pid {os.getpid()} on host {socket.gethostname()}"


def test_a_killed_worker_is_gone_reaped_or_not(child):
    tags = tags_of(child.pid)
    assert worker_gone(tags) is None
    os.kill(child.pid, signal.SIGKILL)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: a zombie
    assert "is gone" in worker_gone(tags)
    child.wait(timeout=30)
    why = worker_gone(tags)
    assert f"pid {child.pid} on host {socket.gethostname()}" in why and "no process with that pid" in why


def test_a_reused_pid_is_not_the_worker(child):
    why = worker_gone(tags_of(child.pid, started="1"))
    assert "now belongs to another process" in why


def test_what_cannot_be_told_from_here_counts_as_alive(child):
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    dead = tags_of(child.pid, started="1")
    assert worker_gone({**dead, WORKER_HOST_TAG: "another-host"}) is None
    assert worker_gone({}) is None  # a run that recorded no worker (not started yet, or older)
    assert worker_gone({**dead, WORKER_PID_TAG: "not-a-pid"}) is None
    assert worker_gone(dead, start_of=lambda _pid: "") is None  # a platform without process starts


def test_the_launcher_reports_a_dead_worker_failed_and_the_rest_running(child):
    import dagster as dg
    from dagster._core.launcher import WorkerStatus

    launcher = WorkerCheckingRunLauncher()
    assert launcher.supports_check_run_worker_health
    alive = dg.DagsterRun(job_name="all_bars", run_id="alive", tags=tags_of(child.pid))
    unknown = dg.DagsterRun(job_name="all_bars", run_id="unknown")
    assert launcher.check_run_worker_health(alive).status == WorkerStatus.RUNNING
    assert launcher.check_run_worker_health(unknown).status == WorkerStatus.RUNNING
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    result = launcher.check_run_worker_health(alive)
    assert result.status == WorkerStatus.FAILED and f"pid {child.pid}" in result.msg


def grpc_run(run_id: str, port: int, tags: dict[str, str]):
    """A run launched from a code location server the workspace reaches at 127.0.0.1:`port`."""
    import dagster as dg
    from dagster._core.remote_origin import GrpcServerCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

    origin = GrpcServerCodeLocationOrigin(host="127.0.0.1", port=port, location_name="backfill_dagster")
    return dg.DagsterRun(job_name="all_bars", run_id=run_id, tags=tags, remote_job_origin=RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(code_location_origin=origin, repository_name="__repository__"),
        job_name="all_bars",
    ))


def test_a_dead_worker_whose_code_server_does_not_answer_is_failed_only_once_it_answers(child):
    from dagster._core.launcher import WorkerStatus

    from backfill_dagster.instance.run_launcher import unanswering_code_server

    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    run = grpc_run("dead", port, tags_of(child.pid, started="1"))
    assert unanswering_code_server(run) == f"the code server 127.0.0.1:{port}"
    # Failing it now would cost its retry (Dagster cannot load the location to retry it): wait.
    result = WorkerCheckingRunLauncher().check_run_worker_health(run)
    assert result.status == WorkerStatus.RUNNING, result
    assert "is gone" in result.msg and f"failed once the code server 127.0.0.1:{port} answers again" in result.msg
    # The server answers again: failed, as any dead worker's run.
    assert unanswering_code_server(run, answers=lambda origin: origin.port == port) is None
    # A run that names no code location server (a `dagster asset materialize`) is never waited for.
    import dagster as dg

    cli_run = dg.DagsterRun(job_name="all_bars", run_id="cli", tags=tags_of(child.pid, started="1"))
    assert unanswering_code_server(cli_run) is None
    assert WorkerCheckingRunLauncher().check_run_worker_health(cli_run).status == WorkerStatus.FAILED

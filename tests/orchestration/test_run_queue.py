"""The run queue as dagster.yaml configures it: a run that cannot be handed to its code server
(the daemon replaces its code server every minute; the old one stops soon after) goes back to the
queue instead of failing. Real parts: a `dagster api grpc` server process, stopped before the
queue's iteration, and Dagster's own queue daemon."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEventType
from dagster._core.test_utils import create_run_for_test, create_test_daemon_workspace_context, instance_for_test
from dagster._core.workspace.load_target import GrpcServerTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from tests.deploy import ROOT, free_port

LOCATION = "tiny"


@pytest.fixture
def code_server(tmp_path):
    """A code server with one job, as the daemon starts one; stopped by the test."""
    code = tmp_path / "tiny.py"
    code.write_text(textwrap.dedent("""
        import dagster as dg

        @dg.op
        def hello():
            return 1

        @dg.job
        def tiny():
            hello()

        defs = dg.Definitions(jobs=[tiny])
    """))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster", "api", "grpc", "--host", "127.0.0.1", "--port", str(port), "-f", str(code),
         "--location-name", LOCATION],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the code server did not start")
    yield port, proc
    proc.kill()
    proc.wait()


def project_run_coordinator() -> dict:
    return yaml.safe_load((ROOT / "dagster.yaml").read_text())["run_coordinator"]


def queue_a_run_then_stop_its_server(run_coordinator: dict, code_server) -> tuple[str, list[str]]:
    port, proc = code_server
    with instance_for_test(overrides={"run_coordinator": run_coordinator}) as instance:
        target = GrpcServerTarget(host="127.0.0.1", port=port, socket=None, location_name=LOCATION)
        with create_test_daemon_workspace_context(target, instance) as context:
            location = context.create_request_context().get_code_location(LOCATION)
            remote_job = next(iter(location.get_repositories().values())).get_full_job("tiny")
            run = create_run_for_test(
                instance, job_name="tiny", status=dg.DagsterRunStatus.NOT_STARTED,
                remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
            )
            instance.submit_run(run.run_id, context.create_request_context())
            proc.kill()  # the server the workspace knows is gone, as a replaced one is
            proc.wait()
            list(QueuedRunCoordinatorDaemon(interval_seconds=1).run_iteration(context))
            status = instance.get_run_by_id(run.run_id).status.value
            said = [
                r.event_log_entry.dagster_event.message or ""
                for r in instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ENGINE_EVENT).records
            ]
            return status, said


def test_a_run_its_code_server_cannot_take_goes_back_to_the_queue(code_server):
    config = project_run_coordinator()
    assert config["config"]["max_user_code_failure_retries"] > 0
    status, said = queue_a_run_then_stop_its_server(config, code_server)
    assert status == "QUEUED"
    assert any("re-submitting the run into the queue (5 retries remaining)" in m for m in said), said


def test_dagsters_default_would_fail_it(code_server):
    """The same with the run coordinator as Dagster ships it: why dagster.yaml sets the retries."""
    config = {key: value for key, value in project_run_coordinator().items() if key != "config"}
    status, _ = queue_a_run_then_stop_its_server(config, code_server)
    assert status == "FAILURE"

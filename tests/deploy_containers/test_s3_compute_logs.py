"""Runs' stdout and stderr across hosts: the container profiles' compute-log manager
(instance/s3_compute_logs.py) against a real S3-compatible server on loopback (moto).

A real run (`dagster asset materialize` of one partition, the demo provider) writes its output to
the bucket and leaves nothing on the worker's disk; a webserver on another host (another staging
directory, nothing local) reads it back through the calls the UI's GraphQL makes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from botocore.exceptions import ClientError
from dagster._core.storage.compute_log_manager import ComputeIOType

from backfill_dagster.instance.s3_compute_logs import TeeS3ComputeLogManager
from tests.deploy_containers.conftest import BUCKET, CREDENTIALS, s3_client

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
PARTITION = "2024-11-29|AAPL"
DEMO_LINE = "demo: 1 partition(s) of m15 generated locally, no API call"

# The instance of the container profiles, as far as compute logs go: the same manager and keys as
# deploy/docker/dagster.yaml, its staging directory per host (here: per process) from the env.
INSTANCE_YAML = """
compute_logs:
  module: backfill_dagster.instance.s3_compute_logs
  class: TeeS3ComputeLogManager
  config:
    bucket: {env: DAGSTER_COMPUTE_LOG_BUCKET}
    prefix: {env: DAGSTER_COMPUTE_LOG_PREFIX}
    endpoint_url: {env: DAGSTER_COMPUTE_LOG_ENDPOINT_URL}
    local_dir: {env: TEST_COMPUTE_LOG_STAGING}
telemetry:
  enabled: false
"""


def materialize(tmp_path: Path, s3_endpoint: str, bucket: str = BUCKET, check: bool = True):
    """One partition materialized by Dagster's CLI in a process of its own, on an instance whose
    compute logs go to `bucket`; (home, env, finished process)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    env = {
        **os.environ, **CREDENTIALS,
        "DAGSTER_HOME": str(home),
        "BACKFILL_DATA_DIR": str(tmp_path / "data"),
        "BACKFILL_DATABASE_URL": f"sqlite:///{tmp_path / 'bars.sqlite'}",
        "DAGSTER_COMPUTE_LOG_BUCKET": bucket,
        "DAGSTER_COMPUTE_LOG_PREFIX": "backfill/compute-logs",
        "DAGSTER_COMPUTE_LOG_ENDPOINT_URL": s3_endpoint,
        "TEST_COMPUTE_LOG_STAGING": str(tmp_path / "worker"),
    }
    run([BIN / "backfill-dagster", "watchlist", "add", "AAPL"], env)
    proc = run([BIN / "dagster", "asset", "materialize", "-m", "backfill_dagster", "--select", "bars_m15",
                "--partition", PARTITION], env, check=check)
    return home, env, proc


def test_a_runs_output_is_in_the_bucket_and_read_back_on_another_host(tmp_path, s3_endpoint, monkeypatch):
    home, env, proc = materialize(tmp_path, s3_endpoint)
    worker_disk, webserver_disk = tmp_path / "worker", tmp_path / "webserver"
    # mirrored to the worker's own stream as well (what `docker logs` / `kubectl logs` show)
    assert DEMO_LINE in proc.stderr

    # the bucket holds the run's captures, under the configured prefix
    keys = [o["Key"] for o in s3_client(s3_endpoint).list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys and all(k.startswith("backfill/compute-logs/storage/") for k in keys), keys
    assert any(k.endswith(".err") for k in keys) and not any(k.endswith(".partial") for k in keys), keys
    # and nothing stays on the worker's disk once uploaded (a run container is thrown away)
    assert not [p for p in worker_disk.rglob("*") if p.is_file() and p.suffix in (".out", ".err")]

    # The webserver, on another host: same instance file, its own empty staging directory.
    for name in ("DAGSTER_HOME", "DAGSTER_COMPUTE_LOG_BUCKET", "DAGSTER_COMPUTE_LOG_PREFIX",
                 "DAGSTER_COMPUTE_LOG_ENDPOINT_URL", *CREDENTIALS):
        monkeypatch.setenv(name, env[name])
    monkeypatch.setenv("TEST_COMPUTE_LOG_STAGING", str(webserver_disk))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        manager = instance.compute_log_manager
        assert type(manager) is TeeS3ComputeLogManager
        [record] = instance.get_run_records()
        run_id = record.dagster_run.run_id
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        captured = instance.all_logs(run_id, of_type=dg.DagsterEventType.LOGS_CAPTURED)
        file_keys = {e.dagster_event.logs_captured_data.file_key for e in captured}
        assert file_keys, "the run reported no captured logs"
        stderr = b""
        for file_key in file_keys:
            # what the run page's stdout/stderr tabs ask for (dagster_graphql: Run.capturedLogs,
            # capturedLogsMetadata)
            log_key = manager.build_log_key_for_run(run_id, file_key)
            assert manager.is_capture_complete(log_key)
            data = manager.get_log_data(log_key)
            stderr += data.stderr or b""
            metadata = manager.get_log_metadata(log_key)
            assert metadata.stderr_location == f"s3://{BUCKET}/backfill/compute-logs/storage/{'/'.join(log_key)}.err"
            assert metadata.stderr_download_url.startswith(s3_endpoint)
        assert DEMO_LINE.encode() in stderr
        # the same bytes as the bucket's objects
        objects = b"".join(
            s3_client(s3_endpoint).get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in sorted(keys) if k.endswith(".err")
        )
        assert sorted(stderr.splitlines()) == sorted(objects.splitlines())

    # An unknown key reads as nothing, not an error (a run page asked for a step that never ran).
    monkeypatch.setenv("TEST_COMPUTE_LOG_STAGING", str(tmp_path / "third"))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        missing = instance.compute_log_manager.get_log_data([run_id, "compute_logs", "no-such-step"])
        assert not missing.stdout and not missing.stderr


def test_a_worker_process_tees_its_streams_and_uploads_them(tmp_path, s3_endpoint, monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    # in a process of its own, as a run worker: its descriptors 1 and 2 are real pipes
    script = (
        "import os, sys\n"
        "from backfill_dagster.instance.compute_logs import TeeComputeLogManager\n"
        "from backfill_dagster.instance.s3_compute_logs import TeeS3ComputeLogManager\n"
        f"m = TeeS3ComputeLogManager({BUCKET!r}, local_dir=sys.argv[1], prefix='p', endpoint_url={s3_endpoint!r})\n"
        "assert isinstance(m.local_manager, TeeComputeLogManager), type(m.local_manager)\n"
        "with m.capture_logs(['run-1', 'compute_logs', 'step']):\n"
        "    print('to stdout', flush=True)\n"
        "    os.write(2, b'to stderr from a descriptor\\n')\n"
        "    os.system('echo from a child process')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "staging")], env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # mirrored to the worker's own streams
    assert proc.stdout.splitlines() == ["to stdout", "from a child process"]
    assert "to stderr from a descriptor" in proc.stderr
    s3 = s3_client(s3_endpoint)
    assert s3.get_object(Bucket=BUCKET, Key="p/storage/run-1/compute_logs/step.out")["Body"].read() == \
        b"to stdout\nfrom a child process\n"
    # another host reads it from the bucket
    reader = TeeS3ComputeLogManager(BUCKET, local_dir=str(tmp_path / "elsewhere"), prefix="p", endpoint_url=s3_endpoint)
    data, _ = reader.get_log_data_for_type(["run-1", "compute_logs", "step"], ComputeIOType.STDERR, 0, None)
    assert data == b"to stderr from a descriptor\n"


def test_an_unreachable_bucket_fails_the_capture_and_keeps_the_output_on_the_worker(tmp_path, s3_endpoint, monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    staging = tmp_path / "staging"
    manager = TeeS3ComputeLogManager("no-such-bucket", local_dir=str(staging), endpoint_url=s3_endpoint)
    key = ["run-2", "compute_logs", "step"]
    with pytest.raises(ClientError, match="NoSuchBucket"):
        with manager.capture_logs(key):
            print("kept", flush=True)
    # nothing lost: the staged file is deleted only after its upload succeeded
    assert (staging / "run-2" / "compute_logs" / "step.out").read_bytes() == b"kept\n"


def run(args, env, check=True):
    proc = subprocess.run([str(a) for a in args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert not check or proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_a_run_whose_log_store_is_missing_succeeds_says_so_and_keeps_its_output(tmp_path, s3_endpoint, monkeypatch):
    """The store's error does not fail the data: the run succeeds, its event log (the UI's run page)
    carries the error, and the output stays in the worker's staging directory."""
    home, env, proc = materialize(tmp_path, s3_endpoint, bucket="no-such-bucket", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name in ("DAGSTER_COMPUTE_LOG_BUCKET", "DAGSTER_COMPUTE_LOG_PREFIX", "DAGSTER_COMPUTE_LOG_ENDPOINT_URL",
                 "TEST_COMPUTE_LOG_STAGING", *CREDENTIALS):
        monkeypatch.setenv(name, env[name])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [record] = instance.get_run_records()
        assert record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        engine = [e for e in instance.all_logs(record.dagster_run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
                  if "compute log" in (e.message or "")]
        assert engine, "the run's log does not mention the failed upload"
        error = engine[0].dagster_event.engine_event_data.error
        assert "NoSuchBucket" in error.message, error.message
    kept = b"".join(p.read_bytes() for p in (tmp_path / "worker").rglob("*.err"))
    assert DEMO_LINE.encode() in kept

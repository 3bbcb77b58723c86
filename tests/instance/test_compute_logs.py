"""The threaded compute-log manager (instance/compute_logs.py): a run's output reaches its files and
the worker's own streams, from Python and from the processes it starts, with no `tail` process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEventType
from dagster._core.storage.compute_log_manager import ComputeIOType

from backfill_dagster.instance import compute_logs
from backfill_dagster.instance.compute_logs import TeeComputeLogManager, tee_stream

CONFIG = {"module": "backfill_dagster.instance.compute_logs", "class": "TeeComputeLogManager"}


def test_tee_sends_python_and_child_process_output_to_the_file_and_the_stream(tmp_path):
    original = open(tmp_path / "console", "w")  # stands for the worker's stdout
    log = tmp_path / "run" / "out.log"
    with tee_stream(original, str(log)):
        print("from python", file=original, flush=True)
        os.write(original.fileno(), b"raw \\ bytes\t\n")
        subprocess.run([sys.executable, "-c", "print('from a child')"], stdout=original.fileno(), check=True)
        original.write("unflushed at the end\n")  # flushed by the tee before it stops
    after = "after the capture\n"
    original.write(after)
    original.close()
    captured = "from python\nraw \\ bytes\t\nfrom a child\nunflushed at the end\n"
    assert log.read_text() == captured
    assert (tmp_path / "console").read_text() == captured + after


def test_a_stream_without_a_descriptor_is_left_alone(tmp_path):
    import io

    stream = io.StringIO()
    with tee_stream(stream, str(tmp_path / "out.log")):
        stream.write("kept in memory")
    assert stream.getvalue() == "kept in memory"
    assert (tmp_path / "out.log").read_text() == ""  # created, so the UI shows an empty log


def test_a_closed_console_does_not_lose_the_file(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads the worker's stdout any more
    console = os.fdopen(write_end, "w")
    log = tmp_path / "out.log"
    with tee_stream(console, str(log)):
        print("still kept", file=console, flush=True)
    console.close()
    assert log.read_text() == "still kept\n"


@dg.op
def noisy(context):
    print("op says hello")
    # a worker's children inherit descriptors 1 and 2, which are sys.stdout's and sys.stderr's there
    subprocess.run(["sh", "-c", "echo child on stderr >&2"], stderr=sys.stderr.fileno(), check=True)


@dg.job
def noisy_job():
    noisy()


def test_a_run_is_captured_without_tail_processes(tmp_path, monkeypatch):
    started = []
    popen = subprocess.Popen

    def record(args, *a, **k):
        started.append(args)
        return popen(args, *a, **k)

    monkeypatch.setattr(subprocess, "Popen", record)
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides={"compute_logs": {
        **CONFIG, "config": {"base_dir": str(tmp_path / "logs")},
    }}) as instance:
        assert isinstance(instance.compute_log_manager, TeeComputeLogManager)
        # pytest captures sys.stdout without a descriptor: give the run real ones, as a worker has
        monkeypatch.setattr(sys, "stdout", open(tmp_path / "console_out", "w"))
        monkeypatch.setattr(sys, "stderr", open(tmp_path / "console_err", "w"))
        result = noisy_job.execute_in_process(instance=instance)
        sys.stdout.flush(), sys.stderr.flush()
        assert result.success
        manager = instance.compute_log_manager
        (captured,) = [e for e in instance.all_logs(result.run_id) if e.dagster_event_type == DagsterEventType.LOGS_CAPTURED]
        log_key = manager.build_log_key_for_run(result.run_id, captured.dagster_event.logs_captured_data.file_key)
        assert manager.is_capture_complete(log_key)
        out = manager.get_log_data_for_type(log_key, ComputeIOType.STDOUT, 0, None)[0].decode()
        err = manager.get_log_data_for_type(log_key, ComputeIOType.STDERR, 0, None)[0].decode()
    assert "op says hello" in out and "op says hello" in (tmp_path / "console_out").read_text()
    assert "child on stderr" in err and "child on stderr" in (tmp_path / "console_err").read_text()
    assert not [args for args in started if "tail" in str(args) or "watch_orphans" in str(args)]
    assert [args for args in started if "echo child" in str(args)]  # the recorder saw the op's own process


def test_base_dir_defaults_to_dagster_home_storage_or_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert TeeComputeLogManager.from_config_value(None, {})._base_dir == str(tmp_path / "storage")
    assert TeeComputeLogManager.from_config_value(None, {"base_dir": "/x"})._base_dir == "/x"
    monkeypatch.delenv("DAGSTER_HOME")
    with pytest.raises(ValueError, match="DAGSTER_HOME"):
        TeeComputeLogManager.from_config_value(None, {})


def test_output_held_by_a_lingering_child_does_not_block_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(compute_logs, "DRAIN_TIMEOUT_S", 0.2)
    console = open(tmp_path / "console", "w")
    with tee_stream(console, str(tmp_path / "out.log")):
        child = subprocess.Popen(["sleep", "30"], stdout=console.fileno())  # keeps the pipe open (killed below)
    try:
        assert child.poll() is None  # the capture ended while the child still holds the pipe
    finally:
        child.kill()
        child.wait()
    console.close()
    assert Path(tmp_path / "out.log").exists()

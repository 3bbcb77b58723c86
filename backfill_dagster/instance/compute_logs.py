"""Dagster's local compute logs, captured through a pipe and a thread instead of four processes.

Selected in `dagster.yaml` (`compute_logs`). Dagster's `LocalComputeLogManager` captures a run's
stdout and stderr into files (the UI's stdout/stderr tabs) and mirrors them to the worker's own
streams by starting, per stream, a `tail -F` process and a Python process that kills it if the
worker dies: four processes a run, ~30 ms of the run's wall time and a Python start-up's CPU each,
which the 20-run backfill of bench/provider_backfill.py paid 20 times. This manager writes the
same files: each stream's descriptor points at a pipe, and one thread copies what arrives into the
file and on to the original stream. Nothing is lost at the end (tail polls once a second;
dagster-io/dagster#23336) and nothing is left behind if the worker is killed. Reads, paths and the UI's
subscriptions are Dagster's own.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from dagster import Field, StringSource
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from dagster._serdes import ConfigurableClassData
from dagster._utils import ensure_file, touch_file

# How long the end of a capture waits for output still in the pipe; a process the step started
# that still holds the pipe open keeps its thread, which ends when that process closes it.
DRAIN_TIMEOUT_S = 5.0
CHUNK = 64 * 1024


class TeeComputeLogManager(LocalComputeLogManager):
    """Stores each run's stdout and stderr on disk like Dagster's local manager, mirrored to the
    worker's own streams by a thread, not by `tail` processes."""

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            # Dagster's default for an instance directory: $DAGSTER_HOME/storage.
            "base_dir": Field(StringSource, is_required=False),
            "polling_timeout": Field(float, is_required=False),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value) -> TeeComputeLogManager:
        config = dict(config_value)
        if "base_dir" not in config:
            config["base_dir"] = default_base_dir()
        return cls(inst_data=inst_data, **config)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        out = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        err = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        with tee_stream(sys.stdout, out), tee_stream(sys.stderr, err):
            yield CapturedLogContext(log_key)
        # As Dagster's manager: the artifact tells readers the capture is complete.
        touch_file(self.complete_artifact_path(log_key))


def default_base_dir() -> str:
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise ValueError("compute_logs: set base_dir, or DAGSTER_HOME for its default ($DAGSTER_HOME/storage)")
    return os.path.join(home, "storage")


@contextmanager
def tee_stream(stream: IO[str], path: str) -> Iterator[None]:
    """Send everything written to `stream`'s file descriptor, by this process or the processes it
    starts, to the end of the file at `path` and to where the descriptor pointed before.

    A stream without a descriptor (a test runner's capture) is left alone, as Dagster does; the
    file is still created, so the UI shows an empty log rather than a missing one."""
    ensure_file(path)
    fd = _fileno(stream)
    if fd is None:
        yield
        return
    stream.flush()
    original = os.dup(fd)  # where output went before: the copier mirrors to it
    read_end, write_end = os.pipe()
    copier = threading.Thread(
        target=_copy, args=(read_end, path, os.dup(original)), name=f"compute-log-tee-{fd}", daemon=True
    )
    copier.start()
    os.dup2(write_end, fd)
    os.close(write_end)
    try:
        yield
    finally:
        try:
            stream.flush()
        finally:
            os.dup2(original, fd)  # closes the pipe's last write end (but children's): the copier sees EOF
            os.close(original)
            copier.join(DRAIN_TIMEOUT_S)


def _copy(read_end: int, path: str, mirror: int) -> None:
    try:
        with open(path, "ab", buffering=0) as file:
            while chunk := os.read(read_end, CHUNK):
                file.write(chunk)
                try:
                    os.write(mirror, chunk)
                except OSError:  # the worker's own stream is gone (a closed pipe): the file still gets it
                    pass
    finally:
        os.close(read_end)
        os.close(mirror)


def _fileno(stream: IO[str]) -> int | None:
    try:
        fd = stream.fileno()
    except (AttributeError, io.UnsupportedOperation, ValueError):
        return None
    return fd if isinstance(fd, int) else None

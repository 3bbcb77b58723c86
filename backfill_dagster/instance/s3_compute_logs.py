"""Runs' stdout and stderr kept in an S3-compatible store, for deployments on more than one host.

Selected by the container profiles (deploy/docker/dagster.yaml; deploy/helm/values.yaml names
Dagster's own class). A run worker in its own container or pod writes its output to a local file
that no other host can read; Dagster's `S3ComputeLogManager` uploads each capture when it ends
(and, with `upload_interval`, partial copies while it runs) and serves the UI from the bucket, so
the webserver shows the logs of a run wherever it ran. Any S3-compatible endpoint works
(`endpoint_url`); credentials come from boto3's usual environment variables.

Dagster's manager captures through its local manager, which mirrors each stream to the worker's own
with a `tail -F` and a watcher process per stream. This subclass captures through
`TeeComputeLogManager` (instance/compute_logs.py) instead, as the single-host profile does: the same
files, mirrored by a thread, the end of the output not lost to tail's polling. Uploads, reads and
the UI's subscriptions are Dagster's own.
"""

from __future__ import annotations

import dagster_shared.seven as seven
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

from backfill_dagster.instance.compute_logs import TeeComputeLogManager


class TeeS3ComputeLogManager(S3ComputeLogManager):
    """Stores each run's stdout and stderr in an S3-compatible bucket every host can read, captured
    (and mirrored to the worker's own streams) by a thread rather than `tail` processes."""

    def __init__(self, bucket, local_dir=None, **kwargs):
        super().__init__(bucket, local_dir=local_dir, **kwargs)
        # Staging files as Dagster's manager keeps them (a temporary directory by default); the
        # parent uploads and reads through this attribute (CloudStorageComputeLogManager.capture_logs).
        self._local_manager = TeeComputeLogManager(local_dir or seven.get_system_temp_directory())

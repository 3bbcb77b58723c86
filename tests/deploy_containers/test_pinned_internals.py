"""The Dagster internals the container profiles' compute-log manager (instance/s3_compute_logs.py)
relies on, pinned by the hash of their source as tests/orchestration/test_dagster_internals.py pins
the instance's: a changed one fails here, naming what to re-check. Record new hashes with
`python -m tests.deploy_containers.test_pinned_internals`."""

from __future__ import annotations

import sys
from importlib.metadata import version

import pytest

from tests.orchestration.test_dagster_internals import source_hash

PINNED_VERSIONS = {"dagster": "1.13.27", "dagster-aws": "0.29.27", "dagster-docker": "0.29.27", "dagster-k8s": "0.29.27"}

INTERNALS: dict[str, tuple[str, str]] = {
    "dagster_aws.s3.compute_log_manager.S3ComputeLogManager.__init__":
        ("f6c2ce9812b23d52", "it keeps its local manager in self._local_manager, which TeeS3ComputeLogManager replaces after it"),
    "dagster_aws.s3.compute_log_manager.S3ComputeLogManager.local_manager":
        ("2c03bd074a2714cb", "every capture, read and delete goes through this property's self._local_manager"),
    "dagster_aws.s3.compute_log_manager.S3ComputeLogManager.capture_logs":
        ("d9645cf2a19881b2", "it captures through CloudStorageComputeLogManager.capture_logs"),
    "dagster._core.storage.cloud_storage_compute_log_manager.CloudStorageComputeLogManager.capture_logs":
        ("e5a4927b31857587", "the capture itself is the local manager's (the tee); the upload follows it"),
    "dagster._core.storage.cloud_storage_compute_log_manager.CloudStorageComputeLogManager._on_capture_complete":
        ("4a3a40a97e4bd30d", "the staged files are deleted only after both uploads succeeded (README: nothing lost)"),
}


def test_the_libraries_are_the_versions_the_internals_were_read_in():
    installed = {name: version(name) for name in PINNED_VERSIONS}
    assert installed == PINNED_VERSIONS, f"installed {installed}: re-read every entry of INTERNALS in this file"


def test_pyproject_pins_the_container_extras_exactly_with_dagster():
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["docker"] == [f"dagster-docker=={PINNED_VERSIONS['dagster-docker']}"]
    assert extras["k8s"] == [f"dagster-k8s=={PINNED_VERSIONS['dagster-k8s']}"]
    assert extras["aws"] == [f"dagster-aws=={PINNED_VERSIONS['dagster-aws']}"]
    assert {*extras["docker"], *extras["k8s"], *extras["aws"]} <= set(extras["test"])


@pytest.mark.parametrize("qualified", sorted(INTERNALS))
def test_an_internal_the_s3_compute_logs_rely_on_is_unchanged(qualified):
    recorded, what = INTERNALS[qualified]
    current = source_hash(qualified)
    assert current == recorded, f"{qualified} changed: re-check {what}; then record its new hash ({current})"


if __name__ == "__main__":
    for name in sorted(INTERNALS):
        sys.stdout.write(f"{name}  {source_hash(name)}\n")

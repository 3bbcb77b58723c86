"""A local S3-compatible server for the compute-log tests: moto in server mode on loopback, reached
over HTTP through its endpoint URL exactly as a deployment reaches its store."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config

BUCKET = "dagster-compute-logs"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": REGION}


@pytest.fixture
def s3_endpoint():
    """The URL of a fresh S3 server holding one empty bucket, BUCKET."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        s3_client(url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        server.stop()


def s3_client(endpoint_url: str):
    return boto3.client(
        "s3", endpoint_url=endpoint_url, region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )

"""Shared fixtures: the sample data beside the checkout, a moto S3 server on 127.0.0.1, a local Ray."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py
TESTDATA = REPO.parent / "shared" / "testdata"
SA1B_TAR = TESTDATA / "sa1b" / "sa_000000.tar"
PANOPTIC_ROOT = TESTDATA / "coconut" / "panoptic"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@pytest.fixture(scope="session")
def testdata() -> Path:
    assert TESTDATA.is_dir(), f"sample data not found at {TESTDATA}: clone the repo beside ../shared"
    return TESTDATA


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 protocol server (moto) on 127.0.0.1; AWS_* variables point every client at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")}
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1"
    )
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh, empty bucket per test."""
    import boto3

    name = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-")
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """One embedded Ray for the in-process pipeline tests (2 CPUs, like CI); its workers inherit
    the S3 settings, so it starts after the S3 server."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()

"""Local paths and s3:// URIs through the same calls (S3 via a moto server on 127.0.0.1)."""

from __future__ import annotations

import os

import boto3
import pytest

from pairmine import storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/root"


def test_write_read_list_upload_delete(root, tmp_path):
    storage.check_writable(root)
    storage.write_bytes(storage.join(root, "a", "x.bin"), b"hello")
    staged = storage.staging_file(storage.join(root, "a", "y.bin"))
    with open(staged, "wb") as f:
        f.write(b"world" * 1000)
    storage.upload_file(staged, storage.join(root, "a", "y.bin"))
    assert not os.path.exists(staged)
    names = [storage.basename(e.path) for e in storage.list_dir(storage.join(root, "a"))]
    assert names == ["x.bin", "y.bin"], "no temp file is ever visible"
    assert storage.read_bytes(storage.join(root, "a", "y.bin")) == b"world" * 1000
    with storage.open_input_file(storage.join(root, "a", "y.bin")) as f:  # random access, as video readers need
        f.seek(4995)
        assert f.read(5) == b"world" and f.tell() == 5000
    assert storage.check_readable(storage.join(root, "a", "x.bin")).size == 5
    storage.delete(storage.join(root, "a", "x.bin"))
    storage.delete(storage.join(root, "a", "x.bin"))  # deleting twice is fine
    with pytest.raises(storage.StorageError, match="input not found"):
        storage.check_readable(storage.join(root, "a", "x.bin"))


def test_missing_buckets_are_one_line_errors(s3_endpoint):
    with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket' is not reachable at http://127.0.0.1"):
        storage.check_readable("s3://no-such-bucket/x")
    with pytest.raises(storage.StorageError, match="output bucket 'no-such-bucket'"):
        storage.check_writable("s3://no-such-bucket/out")


def test_an_endpoint_that_refuses_connections_fails_at_once(monkeypatch):
    """The SDKs retry a refused connection with backoff for over a minute before the one-line error."""
    import socket
    import time

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    for check in (storage.check_readable, storage.check_writable):
        with pytest.raises(storage.StorageError, match=f"the S3 endpoint http://127.0.0.1:{port} .AWS_ENDPOINT_URL. does not answer"):
            check("s3://bucket/x")
    assert time.monotonic() - started < 5


def test_s3_settings_come_from_the_aws_environment(s3_bucket):
    fs, path = storage.resolve(f"s3://{s3_bucket}/k")
    assert path == f"{s3_bucket}/k"
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert storage.read_bytes(f"s3://{s3_bucket}/k") == b"v"


def test_the_s3_clients_follow_the_aws_environment(s3_endpoint, s3_bucket, monkeypatch):
    """The clients were built once per process: after AWS_ENDPOINT_URL changed (a notebook switching stores, a
    test's proxy) they kept the old endpoint, and a pyarrow filesystem left pointing at a closed one sent later
    Ray reads into endless retries."""
    from faulty_s3 import FaultyS3

    uri = f"s3://{s3_bucket}/k"
    storage.write_bytes(uri, b"v")  # the clients of the real endpoint exist
    with FaultyS3(s3_endpoint, share=0.0) as proxy, monkeypatch.context() as patched:
        patched.setenv("AWS_ENDPOINT_URL", proxy.url)
        assert storage.read_bytes(uri) == b"v" and storage.exists(uri) and storage.list_dir(f"s3://{s3_bucket}")
        storage.write_bytes(f"{uri}2", b"w")
        through = sum(proxy.requests.values())
        assert through >= 4 and {"get", "head", "list"} <= set(proxy.requests), proxy.requests
    assert storage.read_bytes(f"{uri}2") == b"w" and sum(proxy.requests.values()) == through, "back on the real endpoint"
    assert storage.s3_filesystem() is storage.s3_filesystem(), "one client per environment"

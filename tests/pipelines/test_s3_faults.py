"""S3 faults (throttling, 500s, resets, answers cut off) on reads, puts, part uploads and completes are
retried: the run completes and its output verifies, nothing lost or written twice."""

from __future__ import annotations

import boto3
import pytest
from faulty_s3 import FAULTS, FaultyS3
from helpers import cli
from sample_inputs import write_sa1b_tars

from pairmine import storage
from pairmine.pipelines.lease import Lease
from pairmine.pipelines.verify import verify

pytestmark = pytest.mark.slow
MUST_RETRY = ("get", "head", "list", "put", "create_multipart", "upload_part", "complete_multipart")


def test_a_run_through_a_faulty_s3_completes_and_verifies(s3_endpoint, s3_bucket, tmp_path):
    s3 = boto3.client("s3")
    for tar in write_sa1b_tars(tmp_path / "in", tars=3, per_tar=6):
        s3.upload_file(str(tar), s3_bucket, f"in/{tar.name}")
    source, output = f"s3://{s3_bucket}/in/", f"s3://{s3_bucket}/out"
    args = ["syn4removal", "--input", source, "--output", output, "--no-progress", "--set", "group_size=3"]
    first = {op: FAULTS[i % len(FAULTS)] for i, op in enumerate(MUST_RETRY)}  # each operation's first request, each fault
    with FaultyS3(s3_endpoint, share=0.1, first=first) as proxy:
        # shards of ~1 MB upload in 256 kB parts: part uploads and completes go through the faults
        done = cli(*args, env={"AWS_ENDPOINT_URL": proxy.url, "PAIRMINE_S3_PART_MB": "0.25"})
        again = cli(*args, env={"AWS_ENDPOINT_URL": proxy.url})  # a rerun over the faults: nothing left to do
    faulted = {op for op, _ in proxy.faults}
    assert set(MUST_RETRY) <= faulted, f"operations never faulted: {set(MUST_RETRY) - faulted}"
    assert {fault for _, fault in proxy.faults} == {"slowdown", "internal", "reset", "cut"}
    assert "done" in done.stdout and "nothing to do" in again.stdout
    report = verify(output, [source])  # straight to the server: every shard listed and whole, no key twice, every id accounted for
    assert not report.problems, report.problems[:5]
    assert report.inputs["ids"] == 18 and report.samples > 0


def test_a_lease_whose_create_answer_was_lost_is_still_ours(s3_endpoint, s3_bucket, monkeypatch):
    """The conditional put succeeded but its answer was cut: the retry gets 412, the lease is still this run's; the
    same for a renewal's compare-and-swap put."""
    with FaultyS3(s3_endpoint, share=0.0, first={"put": "cut"}) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # this process's S3 clients follow it; restored after the test
        with Lease(f"s3://{s3_bucket}/out", "mine") as lease:
            lease.acquire()
            assert lease._holder()["token"] == lease.owner["token"]
        assert proxy.faults == {("put", "cut"): 1}
        with Lease(f"s3://{s3_bucket}/out", "renewing") as lease:  # a renewal whose answer was cut: retried, 412
            lease.acquire()
            proxy.first["put"] = "cut"
            assert lease._swap(lease._body()), "a conditional put that landed is this run's own heartbeat"
            assert proxy.faults[("put", "cut")] == 2
        assert not storage.exists(f"s3://{s3_bucket}/out/_LEASE"), "and the lease is given back on its new version"


@pytest.mark.parametrize("ignored", [("If-Match", "If-None-Match"), ("If-None-Match",), ("If-Match",)])
def test_a_store_that_ignores_conditional_writes_is_warned_of(s3_endpoint, s3_bucket, monkeypatch, caplog, ignored):
    """S3-compatible stores that predate conditional writes ignore If-Match / If-None-Match: two runs can then both
    take an output's lease, with no word. A run on such a store says which it ignores; on one that honours both,
    nothing. The test writes a probe object of its own, never the live lease, and leaves nothing behind."""
    output = f"s3://{s3_bucket}/out"
    with caplog.at_level("WARNING", "pairmine"), Lease(output, "honoured") as lease:
        lease.acquire()
    assert not [r for r in caplog.records if "conditional writes" in r.getMessage()]
    with FaultyS3(s3_endpoint, share=0.0, unconditional=ignored) as proxy, monkeypatch.context() as patched:
        patched.setenv("AWS_ENDPOINT_URL", proxy.url)  # this process's S3 clients follow it, and back after the block
        with caplog.at_level("WARNING", "pairmine"), Lease(output, "ignored") as lease:
            lease.acquire()
            assert lease._holder()["token"] == lease.owner["token"], "the lease still works"
    warned = [r.getMessage() for r in caplog.records if "ignores conditional writes" in r.getMessage()]
    assert len(warned) == 1 and f"({' and '.join(sorted(ignored, reverse=True))})" in warned[0], warned
    assert [storage.basename(e.path) for e in storage.list_dir(output)] == [], "no lease, no probe left"

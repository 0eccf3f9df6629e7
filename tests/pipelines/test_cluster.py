"""Runs on a real two-node Ray cluster on this machine, inputs and output on S3 (moto): a worker node is
killed mid-job, the job still completes (Ray retries the lost tasks), and the output is whole."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import boto3
import pytest
from ray.util.state import list_jobs, list_nodes, list_tasks
from helpers import PAIRMINE
from sample_inputs import TESTDATA, write_sa1b_tars

from pairmine import dataset
from pairmine.pipelines.local_cluster import LocalCluster, printed_resources
from pairmine.pipelines.verify import verify

pytestmark = pytest.mark.slow
VENV_BIN = str(Path(PAIRMINE).parent)


def test_the_resources_line_is_found_among_rays_own():
    """Ray's lines after the driver's own (a busy machine's heartbeat warning) once failed a cluster test."""
    printed = 'cluster resources: {"CPU": 1.0, "localcluster_node_1": 1.0}\n\t(2) raylet has lagging heartbeats due to slow network or busy workload.\n'
    assert printed_resources(printed) == {"CPU": 1.0, "localcluster_node_1": 1.0}
    assert printed_resources("\t(2) raylet has lagging heartbeats\n") == {}


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """A head that runs drivers only (0 CPUs, as on KubeRay) with its dashboard (for `ray job submit`);
    tests add and kill the worker nodes that do the work."""
    with LocalCluster(head_cpus=0, dashboard=True, env={"PATH": f"{VENV_BIN}:{os.environ['PATH']}"}) as c:
        yield c


def _upload(bucket: str, files: list[Path], prefix: str) -> str:
    s3 = boto3.client("s3")
    for path in files:
        s3.upload_file(str(path), bucket, f"{prefix}/{path.name}")
    return f"s3://{bucket}/{prefix}/"


def _manifest_rows(bucket: str, prefix: str) -> int:
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/manifest/")
    return sum(1 for o in listing.get("Contents", []) if o["Key"].endswith(".parquet") and ".tmp-" not in o["Key"])


def _job_of(cluster: LocalCluster, pid: int) -> str | None:
    """The Ray job id of the driver process `pid`, once it has connected."""
    return next((j.job_id for j in list_jobs(address=cluster.dashboard_url) if j.driver_info and j.driver_info.pid == str(pid)), None)


def _running_on_workers(cluster: LocalCluster, job: str | None) -> set[str]:
    """The ids of `job`'s CPU tasks running on a worker node now (the state API's view, up to ~1 s behind):
    killing the node then may lose them. (The 0-CPU writes may run on the head, so a committed shard alone
    does not say the worker is busy.)"""
    if job is None:
        return set()
    head = {n.node_id for n in list_nodes(address=cluster.dashboard_url) if n.is_head_node}
    running = list_tasks(address=cluster.dashboard_url, filters=[("job_id", "=", job), ("state", "=", "RUNNING")], limit=10000, detail=True)
    return {t.task_id for t in running if t.node_id not in head and (t.required_resources or {}).get("CPU", 0) > 0}


def _node_id(cluster: LocalCluster, node) -> str:
    tag = cluster.tags[node.pid]
    return next(n.node_id for n in list_nodes(address=cluster.dashboard_url, detail=True) if tag in (n.resources_total or {}))


def _run_losing_a_node(cluster: LocalCluster, bucket: str, args: list[str], out_prefix: str, wait_for_busy: bool) -> tuple[str, int]:
    """Start the CLI against the cluster; once the first shard is committed (and, with `wait_for_busy`, a CPU
    task runs on the only worker node), kill that node and join a replacement, as an autoscaler would. Every
    task attempt that died with the node must have been retried to the end. Returns the CLI's output and the
    manifest rows committed when the node died."""
    worker = cluster.add_node(cpus=1)
    worker_id = _node_id(cluster, worker)
    run = subprocess.Popen([PAIRMINE, *args, "--no-progress"], env={**cluster.env, "RAY_ADDRESS": cluster.address},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, job, running = time.monotonic() + 300, None, set()
    while run.poll() is None and time.monotonic() < deadline:
        job = job or _job_of(cluster, run.pid)
        if _manifest_rows(bucket, out_prefix) > 0:
            running = _running_on_workers(cluster, job)
            if running or not wait_for_busy:
                break
        time.sleep(0.3)
    assert run.poll() is None, "the job ended before the node could be killed:\n" + run.stdout.read()[-3000:]
    at_kill = _manifest_rows(bucket, out_prefix)
    cluster.kill(worker)
    replacement = cluster.add_node(cpus=1, wait=False)
    try:
        out, _ = run.communicate(timeout=600)
    finally:
        cluster.kill(replacement)
    assert run.returncode == 0, out[-5000:]
    attempts = list_tasks(address=cluster.dashboard_url, filters=[("job_id", "=", _job_of(cluster, run.pid))], limit=10000, detail=True)
    finished = {t.task_id for t in attempts if t.state == "FINISHED"}
    lost = {t.task_id for t in attempts if t.node_id == worker_id and t.state == "FAILED"}
    retried = {t.task_id for t in attempts if t.task_id in lost and t.attempt_number > 0 and t.state == "FINISHED"}
    assert lost == retried, f"{len(lost - retried)} task(s) lost with the node were not retried to the end"
    assert running <= finished, "a task running on the node when it died never finished"  # done there before the kill, or retried
    return out, at_kill


def _check_whole(output: str, inputs: list[str], at_kill: int, units: int) -> None:
    report = verify(output, inputs)
    assert not report.problems, report.problems[:5]  # every shard listed, verified, no key twice, every input id accounted for
    assert report.inputs["units"] == units and report.samples > 0
    assert dataset.read_manifest(output).num_rows > at_kill, "no shard was committed after the node was lost"


def test_syn4removal_survives_a_lost_node(cluster, s3_bucket, tmp_path):
    tars = write_sa1b_tars(tmp_path / "in", tars=12, per_tar=4)  # many small units: tasks remain when the first shard commits
    source = _upload(s3_bucket, tars, "in/sa1b")
    output = f"s3://{s3_bucket}/out/syn"
    args = ["syn4removal", "--input", source, "--output", output, "--set", "group_size=2", "--set", "shards.max_samples=4"]
    out, at_kill = _run_losing_a_node(cluster, s3_bucket, args, "out/syn", wait_for_busy=False)  # its tasks last ~0.1 s
    assert "syn4removal run" in out and "done" in out
    _check_whole(output, [source], at_kill, units=12)


def test_video4removal_survives_a_lost_node(cluster, s3_bucket, tmp_path):
    videos = []
    for i in range(6):  # enough work that the node still runs a task when the first shard commits
        for name in ("synth_static_dev", "synth_crowd_dev"):
            videos.append(tmp_path / f"cam{i}-{name}.mp4")
            shutil.copy(TESTDATA / "video" / f"{name}.mp4", videos[-1])
    source = _upload(s3_bucket, videos, "in/videos")
    output = f"s3://{s3_bucket}/out/video"
    out, at_kill = _run_losing_a_node(cluster, s3_bucket, ["video4removal", "--input", source, "--output", output, "--set", "shards.max_samples=2"],
                                      "out/video", wait_for_busy=True)  # seconds per segment: a task surely runs there
    assert "video4removal run" in out
    _check_whole(output, [source], at_kill, units=12)


def test_a_ray_job_submit_entrypoint_runs_the_cli(cluster, s3_bucket, tmp_path):
    tars = write_sa1b_tars(tmp_path / "in", tars=1, per_tar=4)
    source = _upload(s3_bucket, tars, "in")
    output = f"s3://{s3_bucket}/out"
    worker = cluster.add_node(cpus=1)
    try:
        done = subprocess.run(
            [str(Path(VENV_BIN) / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--",
             "pairmine", "syn4removal", "--input", source, "--output", output, "--no-progress"],
            env=cluster.env, capture_output=True, text=True, timeout=600,
        )
    finally:
        cluster.kill(worker)
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert "syn4removal run" in done.stdout  # the job's own output, streamed back by the job server
    assert not verify(output, [source]).problems

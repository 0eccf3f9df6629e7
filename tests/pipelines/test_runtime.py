"""runtime: the embedded Ray a CLI run starts (in a fresh process: the suite's own Ray is already up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pairmine.pipelines.runtime import cluster_runtime_env, embedded_cpus

PROBE = """
import json, os
import ray
from ray.data._internal.execution import metadata_fetcher
from pairmine.pipelines.config import RayParams
from pairmine.pipelines.runtime import io_concurrency, start_ray

start_ray(RayParams(num_cpus=1), progress=False)

def refaults():  # page faults of filling 64 MB of 1 MB arrays again after the same were filled and freed
    import resource
    import numpy as np

    def fill():
        arrays = [np.ones(1 << 20, np.uint8) for _ in range(64)]
        del arrays

    fill()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fill()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

@ray.remote
def worker():
    import cv2
    from tqdm import tqdm
    return {"env": os.environ.get("PAIRMINE_PROBE"), "cv2_threads": cv2.getNumThreads(),
            "runtime_env": ray.get_runtime_context().runtime_env, "bars": not tqdm(range(3)).disable, "refaults": refaults(),
            "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}

print(json.dumps({"worker": ray.get(worker.remote()), "io": io_concurrency(), "driver_refaults": refaults(),
                  "driver_opencv_env": os.environ.get("OPENCV_FOR_THREADS_NUM"),
                  "metadata_fetcher": type(metadata_fetcher.make_metadata_fetcher()).__name__}))
"""


def test_embedded_workers_inherit_the_environment_with_one_opencv_thread():
    """No runtime env (each worker start would pass through an extra setup process), yet the workers get
    pairmine's settings, one OpenCV thread, no progress bars and malloc settings that keep freed memory between
    tasks; the driver's environment is left as it was; I/O tasks are capped at the embedded Ray's CPUs, and
    Ray Data reads block metadata inline."""
    env = {**os.environ, "PAIRMINE_PROBE": "reached"}
    env.pop("OPENCV_FOR_THREADS_NUM", None)
    env.pop("RAY_DATA_METADATA_PREFETCH_ON_THREAD", None)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["worker"]["env"] == "reached" and found["worker"]["cv2_threads"] == 1
    assert not found["worker"]["bars"]  # SAM2's per-call tqdm bar and the like stay out of the logs
    assert found["worker"]["cuda_visible"] == "", "a worker that reserved no GPU sees none"
    assert not found["worker"]["runtime_env"]
    assert found["driver_opencv_env"] is None
    assert found["io"] == 1
    assert found["metadata_fetcher"] == "InlineMetadataFetcher"  # Ray's default is a thread polling every 0.1 s
    # glibc keeps the freed heap in workers (a 64 MB working set is 16,384 pages); the driver keeps its defaults
    assert found["worker"]["refaults"] < 1000 < found["driver_refaults"], found


REUSE = """
import json, os, time
import ray
from pairmine.pipelines.config import RayParams
from pairmine.pipelines.runtime import start_ray

start_ray(RayParams(num_cpus=1), progress=False)

@ray.remote(num_cpus=0)
def io_task():
    time.sleep(0.5)
    return os.getpid()

@ray.remote(num_cpus=1)
def cpu_task():
    time.sleep(8)

busy = cpu_task.remote()
first = set()
for _ in range(5):  # until both I/O workers ran a task (a slow second start leaves both tasks to the first worker)
    first |= set(ray.get([io_task.remote() for _ in range(2)]))
    if len(first) >= 2:
        break
time.sleep(3)  # idle for longer than Ray's default 1 s
again = set(ray.get([io_task.remote() for _ in range(2)]))
ray.get(busy)
print(json.dumps({"first": sorted(first), "again": sorted(again)}))
"""


def test_embedded_ray_keeps_the_io_tasks_workers_between_tasks():
    """Zero-CPU reads and writes beside a busy core reuse their worker processes: by default Ray kills idle
    workers beyond one per CPU after 1 s, and each new one costs ~1-2 s of CPU to start."""
    done = subprocess.run([sys.executable, "-c", REUSE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["again"] and set(found["again"]) <= set(found["first"]), "an I/O worker was restarted after idling"


def test_a_cluster_runs_workers_get_the_s3_endpoint_pairmines_settings_and_the_worker_settings(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("PAIRMINE_CACHE", "/cache")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    runtime_env = cluster_runtime_env()
    env = runtime_env["env_vars"]
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and env["PAIRMINE_CACHE"] == "/cache"
    assert "AWS_SECRET_ACCESS_KEY" not in env, "credentials stay with each node's chain"
    assert env["MALLOC_TRIM_THRESHOLD_"] == str(256 << 20) and env["MALLOC_MMAP_THRESHOLD_"] == str(32 << 20) and env["TQDM_DISABLE"] == "1"
    assert env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1"
    assert runtime_env["worker_process_setup_hook"] == "pairmine.pipelines.runtime.setup_worker"


def test_an_embedded_ray_counts_the_cpus_of_its_container_not_of_the_host(monkeypatch):
    """In a container limited to 2 of a 64-core host's CPUs, os.cpu_count() says 64: the worker pool sized by it
    kept up to 196 idle workers alive. The pool and the model stage's CPU check now count as Ray does."""
    import ray._private.utils

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(ray._private.utils, "get_num_cpus", lambda *a, **k: 2)
    assert embedded_cpus(None) == 2 and embedded_cpus(5) == 5

"""Start or join Ray for a pipeline run: an embedded local Ray by default, a cluster by address."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import warnings
from contextlib import contextmanager

from .. import storage
from ..errors import UserError, exit_on_sigterm
from .config import RayParams

_SHARED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE")
_SHARED_PREFIX = "PAIRMINE_"  # pairmine's own settings (cache folder, test fault injection) reach every worker
_WORKER_ENV = {
    "TQDM_DISABLE": "1",  # no library's progress bar in workers (SAM2's per-call one): their output is logs
    # a worker that reserved no GPU sees none (CUDA_VISIBLE_DEVICES=""), as before Ray 2.48: libraries that touch
    # CUDA whenever they see it (SAM2 builds CUDA tensors) would open a context on GPU 0 that Ray gave to another
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
    # glibc malloc: keep up to 256 MB of freed heap instead of trimming it at the end of every task. A worker
    # frees a group's whole working set between tasks, so by default it hands the heap back and faults it in
    # again (~2,200 page faults per 512-px triplet); setting these turns off glibc's self-tuning mmap threshold,
    # so it is fixed at that tuning's own ceiling. Same-run A/B of two actors: 512 px 75.4 -> 67.8 ms per
    # triplet, full resolution unchanged, the same peak RSS.
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
}


def start_ray(params: RayParams, progress: bool) -> dict:
    """Initialise Ray once per process (shared by pipeline runs and training); returns the cluster's resources.

    Ray's own progress bars and execution-plan lines are off (``progress.Display`` shows the user's
    units instead); workers' output reaches the terminal only with ``-v`` (it stays in Ray's session logs).
    """
    global _EMBEDDED
    import ray
    from ray.data import DataContext

    from .. import logs

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # I/O operators get a concurrency cap sized for the cluster; Ray warns when a run has fewer inputs.
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks for", category=UserWarning)
    if not ray.is_initialized():
        common = {"logging_level": logging.WARNING, "log_to_driver": logs.verbose()}
        address = params.address or os.environ.get("RAY_ADDRESS")  # `ray job submit` sets RAY_ADDRESS
        if address:
            _answers(address)
            try:
                ray.init(address=address, runtime_env=cluster_runtime_env(), **common)
            except (ValueError, ConnectionError) as exc:  # a malformed address, or no cluster there
                raise UserError(f"cannot join the Ray cluster at {address!r}: {storage.first_line(exc)}") from None
        else:
            # Local workers inherit this process's environment, so no runtime env: with one, every worker
            # start runs through an extra setup process (~1 s of CPU each, a tenth of a 2-core run).
            _EMBEDDED = True
            with _environ(OPENCV_FOR_THREADS_NUM="1", **_WORKER_ENV):  # for Ray's processes, not this driver (setup_worker's cv2 threads)
                ray.init(
                    num_cpus=params.num_cpus,
                    object_store_memory=params.object_store_memory,
                    include_dashboard=False,
                    _system_config={"enable_metrics_collection": params.metrics, **worker_pool_config(embedded_cpus(params.num_cpus))},
                    **common,
                )
        if threading.current_thread() is threading.main_thread():  # ray.init set its own, which leaves abseil's abort alarm armed
            signal.signal(signal.SIGTERM, exit_on_sigterm)
    context = DataContext.get_current()
    context.enable_progress_bars = context.enable_operator_progress_bars = context.print_on_execution_start = progress and logs.verbose()
    _inline_block_metadata()
    return ray.cluster_resources()


def _answers(address: str, timeout: float = 10.0) -> None:
    """Refuse in one line a HOST:PORT (or ray://HOST:PORT) where nothing answers: Ray itself retries for minutes.

    'auto', 'local' and malformed addresses are left to Ray, which answers those at once.
    """
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not (sep and host and port.isdigit()):
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"cannot join the Ray cluster at {address!r}: nothing answers on {host}:{port} ({reason})") from None


def cluster_runtime_env() -> dict:
    """The runtime env of a run on a cluster: the driver's S3 endpoint and pairmine settings, the workers'
    settings (set before a worker's process starts, so glibc reads the malloc ones), and the setup hook.
    Credentials stay with each node's chain."""
    env = {k: v for k, v in os.environ.items() if k in _SHARED_ENV or k.startswith(_SHARED_PREFIX)} | _WORKER_ENV
    return {"env_vars": env, "worker_process_setup_hook": "pairmine.pipelines.runtime.setup_worker"}


def embedded_cpus(num_cpus: int | None) -> int:
    """The CPUs an embedded Ray gets: `ray.num_cpus`, else Ray's own count, which honours a container's CPU limit
    (os.cpu_count() gives the host's)."""
    from ray._private.utils import get_num_cpus

    return num_cpus or get_num_cpus()


def worker_pool_config(cpus: int) -> dict[str, int]:
    """Ray system settings that keep a node's worker processes alive between tasks. By default a raylet keeps
    as many idle workers as it has CPUs and kills the others after 1 s idle, so the zero-CPU read and write
    tasks running beside the map tasks churn through new workers, each ~1-2 s of CPU to start (imports);
    alternating runs on 1 core at 512 px: 6.9-7.5 -> 9.6-10.2 triplets/s. Room for a map, a read and a
    write task per CPU and a few more; infra/k8s sets the same through RAY_* variables."""
    return {"num_workers_soft_limit": 3 * cpus + 4, "idle_worker_killing_time_threshold_ms": 60_000}


def _inline_block_metadata() -> None:
    """Ray Data's executor reads each finished block's metadata inline (``RAY_DATA_METADATA_PREFETCH_ON_THREAD=0``
    unless the environment says otherwise). By default a background thread fetches it in passes that each wait
    up to 0.1 s, and a task counts as done only after that, so the CPU it held stayed idle for another pass:
    per-task timelines of a 512-px run on 2 cores, a task's end on its worker to the executor seeing it,
    median 122-145 -> 53-67 ms over three pairs of runs (the metadata is small and already local). Ray reads
    the variable at import, before this runs, hence its module setting (a private name, left alone where a
    Ray lacks it)."""
    if "RAY_DATA_METADATA_PREFETCH_ON_THREAD" in os.environ:
        return
    try:
        from ray.data._internal.execution import metadata_fetcher
    except ImportError:
        return
    if hasattr(metadata_fetcher, "_PREFETCH_ON_THREAD"):
        metadata_fetcher._PREFETCH_ON_THREAD = False


@contextmanager
def _environ(**values: str):
    """Environment variables set while the embedded Ray starts (its processes inherit them), then restored."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def setup_worker() -> None:
    """Ray worker setup hook: the torchvision CPU shim armed (inert where torchvision's own ops load),
    and one OpenCV thread per task, since Ray already runs one task per CPU."""
    import cv2

    from .. import tv_cpu_shim

    tv_cpu_shim.install_lazy()
    cv2.setNumThreads(1)


MIN_IO_CONCURRENCY = 4  # a head with num-cpus 0, or an autoscaling cluster still at its minimum, must not read one file at a time
_EMBEDDED = False  # this process started its own Ray: a fixed set of CPUs


def io_concurrency() -> int:
    """Cap for I/O tasks that reserve no CPU (reads, writes): one per CPU the cluster has now; on a cluster at
    least MIN_IO_CONCURRENCY. Each concurrent task is a worker process to start (~2 s of CPU, most of it
    imports): an embedded Ray on a small machine starts no more than it has cores."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 0))
    return max(1, cpus) if _EMBEDDED else max(MIN_IO_CONCURRENCY, cpus)


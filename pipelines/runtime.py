"""Start or join Ray for a pipeline run: an embedded local Ray by default, a cluster by address."""

from __future__ import annotations

import logging
import os
import warnings

from .config import RayParams

_SHARED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE")
_SHARED_PREFIX = "PAIRMINE_"  # pairmine's own settings (cache folder, test fault injection) reach every worker


def start_ray(params: RayParams, progress: bool) -> dict:
    """Initialise Ray once per process (shared by pipeline runs and training); returns the cluster's resources.

    Ray's own progress bars and execution-plan lines are off (``progress.Display`` shows the user's
    units instead); workers' output reaches the terminal only with ``-v`` (it stays in Ray's session logs).
    """
    import ray
    from ray.data import DataContext

    from .. import logs

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # I/O operators get a concurrency cap sized for the cluster; Ray warns when a run has fewer inputs.
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks for", category=UserWarning)
    if not ray.is_initialized():
        # Workers must reach the same S3 endpoint as the driver; credentials stay with each node's chain.
        env = {k: v for k, v in os.environ.items() if k in _SHARED_ENV or k.startswith(_SHARED_PREFIX)}
        runtime_env = {"env_vars": env, "worker_process_setup_hook": "pairmine.pipelines.runtime.setup_worker"}
        common = {"logging_level": logging.WARNING, "log_to_driver": logs.verbose(), "runtime_env": runtime_env}
        address = params.address or os.environ.get("RAY_ADDRESS")  # `ray job submit` sets RAY_ADDRESS
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(
                num_cpus=params.num_cpus,
                object_store_memory=params.object_store_memory,
                include_dashboard=False,
                **common,
            )
    context = DataContext.get_current()
    context.enable_progress_bars = context.enable_operator_progress_bars = context.print_on_execution_start = progress and logs.verbose()
    return ray.cluster_resources()


def setup_worker() -> None:
    """Ray worker setup hook: the torchvision CPU shim armed (inert where torchvision's own ops load),
    and one OpenCV thread per task, since Ray already runs one task per CPU."""
    import cv2

    from .. import tv_cpu_shim

    tv_cpu_shim.install_lazy()
    cv2.setNumThreads(1)


MIN_IO_CONCURRENCY = 4  # a head with num-cpus 0, or an autoscaling cluster still at its minimum, must not read one file at a time


def io_concurrency() -> int:
    """Cap for I/O tasks that reserve no CPU (reads, writes): one per CPU the cluster has now, at least MIN_IO_CONCURRENCY."""
    import ray

    return max(MIN_IO_CONCURRENCY, int(ray.cluster_resources().get("CPU", 0)))


"""What the pipeline benchmarks share: a timed run on a fresh embedded Ray, with peak worker memory."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import psutil

from pairmine.pipelines.run import Pipeline, run


def _watch_rss(stop: threading.Event, peak: dict) -> None:
    """Poll the RSS of Ray worker processes (their command lines start with 'ray::')."""
    while not stop.is_set():
        for proc in psutil.process_iter(["cmdline", "memory_info"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if cmd.startswith("ray::") and proc.info["memory_info"]:
                peak[proc.pid] = max(peak.get(proc.pid, 0), proc.info["memory_info"].rss)
        stop.wait(0.2)


def timed_run(
    pipeline: Pipeline, inputs: list[str], warmup: list[str], output: Path, cpus: int, overrides: list[str] = (), warmup_overrides: list[str] = ()
) -> dict:
    """Run `pipeline` on an embedded Ray with `cpus` CPUs after a warm-up run on `warmup` (inputs giving at
    least one task per CPU, so every worker is started and has imported everything); returns the run
    summary and the peak RSS of any Ray worker in MB.

    The whole process tree (driver, Ray's services, workers) is pinned to `cpus` cores: otherwise a
    1-CPU run would get the I/O tasks, the driver and Ray's services on the other cores for free.
    """
    import ray

    all_cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(all_cores)[:cpus])
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
    try:
        for path in (output, output.parent / f"{output.name}-warmup"):
            shutil.rmtree(path, ignore_errors=True)
        run(pipeline, warmup, str(output.parent / f"{output.name}-warmup"), overrides=list(warmup_overrides), progress_bars=False)
        stop, peak = threading.Event(), {}
        watcher = threading.Thread(target=_watch_rss, args=(stop, peak), daemon=True)
        watcher.start()
        summary = run(pipeline, inputs, str(output), overrides=list(overrides), progress_bars=False)
        stop.set()
        watcher.join()
    finally:
        ray.shutdown()
        os.sched_setaffinity(0, all_cores)
    return {"summary": summary, "peak_worker_rss_mb": round(max(peak.values(), default=0) / 2**20, 1)}

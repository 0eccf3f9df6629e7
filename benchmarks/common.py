"""What the pipeline benchmarks share: a timed run on a fresh embedded Ray, with peak worker memory and
the CPU each kind of process spent (driver, Ray's services, workers) as a share of the cores."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil

from pairmine.pipelines.config import RayParams
from pairmine.pipelines.run import Pipeline, run
from pairmine.pipelines.runtime import start_ray


def _kind(proc: dict, driver: int) -> str | None:
    """What a process is doing for the run: the driver, a Ray worker's current task (its 'ray::<task>'
    command line: read, map, write, or IDLE), raylet, gcs_server, another Ray service, or None (not Ray's)."""
    cmd = " ".join(proc["cmdline"] or [])
    if proc["pid"] == driver:
        return "driver"
    if cmd.startswith("ray::"):
        return "task " + re.sub(r"\(.*?\)", "", cmd[5:].split(" ")[0])[:60]
    if proc["name"] in ("raylet", "gcs_server"):
        return proc["name"]
    return "ray " + os.path.basename(cmd.split(" ")[1]) if "site-packages/ray" in cmd and " " in cmd else None


_IDLE = "task IDLE"


class _Watch:
    """Polls every Ray process: workers' peak RSS, and CPU seconds by what each process was doing: a
    sampling profile, where a worker's CPU between two polls goes to the task it ran at the first, or at
    the second when it was idle at the first (an idle worker spends next to nothing)."""

    def __init__(self):
        self.peak_rss: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.kind: dict[int, str] = {}
        self.spent: dict[str, float] = {}
        self.own_cpu = 0.0  # the poller's own CPU, taken back out of the driver's

    def poll(self, baseline: bool = False) -> None:
        for proc in psutil.process_iter(["pid", "name", "cmdline", "memory_info", "cpu_times"]):
            kind = _kind(proc.info, os.getpid())
            if kind is None or proc.info["cpu_times"] is None:
                continue
            cpu = proc.info["cpu_times"].user + proc.info["cpu_times"].system
            if not baseline:
                before = self.kind.get(proc.pid, kind)
                doing = kind if before == _IDLE else before
                self.spent[doing] = self.spent.get(doing, 0.0) + cpu - self.cpu.get(proc.pid, 0.0)
            self.cpu[proc.pid], self.kind[proc.pid] = cpu, kind
            if kind.startswith("task") and proc.info["memory_info"]:
                self.peak_rss[proc.pid] = max(self.peak_rss.get(proc.pid, 0), proc.info["memory_info"].rss)

    def run(self, stop: threading.Event) -> None:
        start = time.thread_time()
        while not stop.wait(0.25):
            self.poll()
        self.own_cpu = time.thread_time() - start

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds by kind over the run (processes that ended between polls lose their last fraction of a second)."""
        return self.spent | {"driver": self.spent.get("driver", 0.0) - self.own_cpu}


def cpu_profile(spent: dict[str, float], wall_s: float, cpus: int) -> dict:
    """Where the cores went: each kind's CPU seconds and share of cpus x wall, largest first, and the idle rest."""
    capacity = wall_s * cpus
    rows = dict(sorted(spent.items(), key=lambda kv: -kv[1])) | {"idle": capacity - sum(spent.values())}
    return {kind: {"cpu_s": round(v, 2), "share_of_cores": round(v / capacity, 3)} for kind, v in rows.items()}


@contextmanager
def pinned(cpus: int):
    """This process, and every process it starts meanwhile, on its first `cpus` cores; restored after."""
    all_cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(all_cores)[:cpus])
    try:
        yield
    finally:
        os.sched_setaffinity(0, all_cores)


@contextmanager
def _embedded_ray(cpus: int):
    """A fresh embedded Ray with `cpus` CPUs, started as the CLI starts it, the whole process tree (driver,
    Ray's services, workers) pinned to that many cores: otherwise a 1-CPU run would get the I/O tasks, the
    driver and Ray's services on the other cores for free."""
    import ray

    with pinned(cpus):
        try:
            start_ray(RayParams(num_cpus=cpus), progress=False)
            yield
        finally:
            ray.shutdown()


def _fill_worker_pool(workers: int) -> None:
    """Start `workers` Ray worker processes at once, each importing the pipelines: a run keeps a worker per CPU
    for its map, read and write tasks each, and a warm-up run on a few records starts only some of them, so
    the measured run would start the rest (~1-2 s of CPU each). Worker starts are part of the fixed cost,
    measured on its own."""
    import ray

    @ray.remote(num_cpus=0)
    def started(barrier) -> int:
        import pairmine.pipelines.syn4removal  # noqa: F401  (what a run's tasks import)
        import pairmine.pipelines.video4removal  # noqa: F401

        ray.get(barrier.wait.remote())  # every task waits until all are running: one process each
        return os.getpid()

    @ray.remote(num_cpus=0)
    class Barrier:
        def __init__(self, parties: int):
            self.parties, self.arrived = parties, 0

        async def wait(self) -> None:
            import asyncio

            self.arrived += 1
            while self.arrived < self.parties:
                await asyncio.sleep(0.01)

        def pid(self) -> int:
            return os.getpid()

    barrier = Barrier.remote(workers)
    assert len(set(ray.get([started.remote(barrier) for _ in range(workers)]))) == workers
    process = psutil.Process(ray.get(barrier.pid.remote()))
    ray.kill(barrier)
    psutil.wait_procs([process], timeout=30)  # gone before the measured run: its exit is not the run's CPU


def timed_run(
    pipeline: Pipeline, inputs: list[str], warmup: list[str], output: Path, cpus: int, overrides: list[str] = (), warmup_overrides: list[str] = ()
) -> dict:
    """Run `pipeline` on an embedded Ray with `cpus` CPUs after a warm-up run on `warmup` (inputs giving at
    least one task per CPU, so the workers have imported everything) and with every worker the run keeps
    already started; returns the run summary, the peak RSS of any Ray worker in MB and the CPU profile of
    the measured run."""
    with _embedded_ray(cpus):
        for path in (output, output.parent / f"{output.name}-warmup"):
            shutil.rmtree(path, ignore_errors=True)
        run(pipeline, warmup, str(output.parent / f"{output.name}-warmup"), overrides=list(warmup_overrides), progress_bars=False)
        _fill_worker_pool(3 * cpus)
        stop, watch = threading.Event(), _Watch()
        watch.poll(baseline=True)
        watcher = threading.Thread(target=watch.run, args=(stop,), daemon=True)
        watcher.start()
        summary = run(pipeline, inputs, str(output), overrides=list(overrides), progress_bars=False)
        stop.set()
        watcher.join()
        watch.poll()
    return {"summary": summary, "peak_worker_rss_mb": round(max(watch.peak_rss.values(), default=0) / 2**20, 1),
            "cpu_profile": cpu_profile(watch.cpu_seconds(), summary["wall_seconds"], cpus)}


def fixed_cost(pipeline: Pipeline, inputs: list[str], output: Path, cpus: int, overrides: list[str] = ()) -> dict:
    """What a run costs before and beyond its data: a cold embedded Ray started and a run on a tiny input
    (what a scheduled run with little new data pays every time), in seconds."""
    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    with _embedded_ray(cpus):
        started = time.perf_counter()
        summary = run(pipeline, inputs, str(output), overrides=list(overrides), progress_bars=False)
        ran = time.perf_counter()
    return {"ray_start_s": round(started - start, 2), "run_s": round(ran - started, 2),
            "ray_shutdown_s": round(time.perf_counter() - ran, 2), "samples": summary["written"]["samples"]}


def print_fixed_cost(fixed: dict, what: str) -> None:
    print(f"fixed cost of a run (cold Ray start {fixed['ray_start_s']} s + a run on {what} ({fixed['samples']} samples) "
          f"{fixed['run_s']} s + shutdown {fixed['ray_shutdown_s']} s)")


def print_profile(cpus: int, profile: dict) -> None:
    print(f"  where the {cpus} core(s) went: " + ", ".join(f"{k} {v['share_of_cores']:.1%}" for k, v in profile.items() if v["share_of_cores"] >= 0.001))
